"""Virtual IPs: address add/remove, gratuitous ARP, farm traffic sharing."""

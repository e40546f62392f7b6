"""The lab (network-namespace hosts on bridges), fault injection, workloads, reports."""

# hacluster: every target does its own set-up on a fresh Debian machine (as root).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := iproute2 nftables fuse3 iputils-ping arping procps python3-venv rsync curl keepalived postgresql postgresql-contrib chromium qemu-system-x86 busybox-static linux-image-amd64 gcc pkg-config libfuse3-dev python3-dev
STAMP := $(VENV)/.installed

# A server install (as root): the product in a virtualenv, its command linked into
# SBINDIR, the systemd units and the member's directories (hacluster setup).
PREFIX := /opt/hacluster
SBINDIR := /usr/local/sbin
# What the product itself needs on a server (the lab and benchmarks need APT_PACKAGES):
# FUSE for the replicated directories, libnftables for farm traffic sharing; a compiler
# and the headers for replication._dataplane (the FUSE layer's hot requests in C, setup.py).
RUNTIME_APT_PACKAGES := python3 python3-venv fuse3 nftables iproute2 gcc pkg-config libfuse3-dev python3-dev

.PHONY: test test-unit lint demo demo-coordinator bench chaos chaos-cleanup apt venv clean install uninstall

test: apt venv lint
	$(PY) -m pytest -q -p no:cacheprovider tests

# ruff and mypy on the product packages (settings in pyproject.toml); a finding fails the build.
lint: venv
	$(PY) -m ruff check hacluster raft replication vip checkers
	$(PY) -m mypy

# tests/unit only: pure and fast, no root, no namespaces, no FUSE, no daemons (tests/lab has those).
test-unit: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

demo: apt venv
	$(PY) -m chaos.mirror_demo

demo-coordinator: apt venv
	$(PY) -m chaos.demo

bench: apt venv
	$(PY) -m bench raft
	$(PY) -m bench replication
	$(PY) -m bench failover
	$(PY) -m bench farm
	$(PY) -m bench pgbench
	$(PY) -m bench vm

# The full chaos sweeps, mirror (kv and PostgreSQL workloads) then farm: every nemesis, 10 episodes each
# (chaos/results/<run>/, bench/results/chaos.json); make test runs each nemesis once.
chaos: apt venv
	$(PY) -m chaos run --nemesis all --episodes 10 --seed 1 --workload all --bench-json bench/results/chaos.json
	$(PY) -m chaos.farm_chaos --episodes 10 --seed 1

chaos-cleanup: venv
	$(PY) -m chaos.lab cleanup

# Install only what is missing; apt-get update only when something is.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml replication/_dataplane.c
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install:
	@test "$$(id -u)" = 0 || { echo "make install: run it as root"; exit 1; }
	$(MAKE) --no-print-directory apt APT_PACKAGES="$(RUNTIME_APT_PACKAGES)"
	test -x $(PREFIX)/bin/python || python3 -m venv $(PREFIX)
	$(PREFIX)/bin/python -m pip install -q --upgrade pip
	$(PREFIX)/bin/python -m pip install -q --upgrade .
	$(PREFIX)/bin/hacluster setup --sbin-dir $(SBINDIR)

# Removes the runtime directory (/run/hacluster: the socket and pid file of a stopped
# daemon); keeps /etc/hacluster (the configuration and secret), /var/lib/hacluster
# (the Raft journal: a member without it has lost its Raft memory) and
# /var/log/hacluster, as apt's remove does; it prints the command that removes them.
uninstall:
	@test "$$(id -u)" = 0 || { echo "make uninstall: run it as root"; exit 1; }
	-systemctl disable --now hacluster-node.service hacluster-witness.service 2>/dev/null
	rm -f $(SBINDIR)/hacluster /etc/systemd/system/hacluster-node.service \
	    /etc/systemd/system/hacluster-witness.service
	-systemctl daemon-reload 2>/dev/null
	rm -rf $(PREFIX) /run/hacluster
	@echo "kept /etc/hacluster /var/lib/hacluster /var/log/hacluster (to remove this member for good: rm -r /etc/hacluster /var/lib/hacluster /var/log/hacluster)"

clean:
	rm -rf $(VENV) build *.egg-info

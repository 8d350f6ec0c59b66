#!/usr/bin/env bash
# Installs what service-traceroute needs on a fresh Debian machine, only what is missing:
# libpcap (capture), iproute2 + nftables + conntrack (the namespace lab and the UDP shield),
# scamper (the lab tests compare trace with it), util-linux (setpriv) and libcap2-bin (setcap)
# for the privilege tests, libclang-dev (the nftables netlink crate generates its kernel
# bindings with bindgen at build time),
# traceroute (the demo's comparison), the lab's real applications and test tools
# (dnsmasq-base: DNS server; curl + openssl: TLS clients and server; ethtool: offloads;
# tcpdump: captures in the lab's self-tests; tshark: reads the --pcap files in a lab test; prometheus: the server that scrapes
# `monitor --metrics-listen` in a lab test), man-db, zsh, fish and systemd (the install test
# reads the man pages, completions and units with them), python3-venv (RIPE Atlas's parser
# for the Atlas-format test, from PyPI), and a Rust toolchain check.
set -euo pipefail

need=(libpcap-dev pkg-config iproute2 nftables conntrack traceroute scamper procps util-linux
      man-db zsh fish systemd python3-venv
      libcap2-bin libclang-dev dnsmasq-base curl openssl ethtool tcpdump tshark graphviz prometheus)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [[ -x $d/cargo ]] && export PATH="$d:$PATH"; done
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }

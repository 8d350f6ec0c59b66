#!/usr/bin/env bash
# The benchmark: builds the namespace lab and measures, in one run, the time service-traceroute
# takes to trace a live flow's path against scamper and Debian traceroute, then its CPU time
# and memory per traced flow. Prints a Markdown report (see BENCHMARKS.md).
# Needs root (network namespaces, raw sockets). Options: --runs N (15), --flows M (200).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Peers and measurement tools, only what is missing: scamper (peer), time (GNU time: max RSS).
missing=()
for p in scamper time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bench: missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
    exit 1
  fi
  echo "bench: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet -p service-traceroute -p svctr-lab
exec target/release/svctr-lab bench --tracer "$PWD/target/release/service-traceroute" "$@"

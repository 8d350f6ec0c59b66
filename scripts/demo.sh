#!/usr/bin/env bash
# The demo: builds the namespace lab, starts a download, traces it with service-traceroute,
# shows the flow's ground-truth path and a fresh flow's path (traceroute -T), removes the lab.
# Needs root (network namespaces, raw sockets).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --quiet -p service-traceroute -p svctr-lab
exec target/release/svctr-lab demo --tracer "$PWD/target/release/service-traceroute" "$@"

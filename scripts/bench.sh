#!/usr/bin/env bash
# The benchmark: builds the namespace lab and measures, in one run, the time service-traceroute
# takes to trace a live flow's path against scamper and Debian traceroute, then its CPU time
# and memory per traced flow (`svctr-lab bench`); then, on a lab with 1000 destinations, the
# time, probes/s, CPU and memory to trace all of them against scamper, trippy and traceroute
# (`svctr-lab bench-trace`); then live flows traced per second and memory per concurrent flow at
# 1,000 and 10,000 flows (`svctr-lab bench-flows`), and the capture's CPU next to a multi-gigabit
# transfer against tcpdump (`svctr-lab bench-capture`); then multipath discovery on the
# multipath lab against scamper tracelb and Dublin traceroute (`svctr-lab bench-multipath`);
# then `trace` of 1,000 to 32,000 destinations against the machine's raw send limit
# (`svctr-lab bench-throughput`) and the delay line's own accuracy (`svctr-lab bench-line`).
# Prints one Markdown report on stdout
# (see BENCHMARKS.md). Needs root (network namespaces, raw sockets).
#
# Options:
#   --runs N (15), --flows M (200)                   flow benchmark (`bench`)
#   --targets T (1000), --parallel P (50), --reps R (3)
#                                                    many-destination benchmark (`bench-trace`)
#   --mp-reps N (10)                                 multipath benchmark (`bench-multipath`)
#   --tp-targets LIST (1000,10000,32000)             throughput benchmark (`bench-throughput`)
#   --line A-B=DELAY[/JITTER][:LOSS%]                a delay line for `bench` and
#                                                    `bench-throughput` (repeatable)
#   --skip-flow, --skip-trace, --skip-flows, --skip-capture, --skip-multipath,
#   --skip-throughput, --skip-line                   leave a section out
#
# Time: about 20 s for `bench`, 2-3 min for `bench-trace` (mostly trippy with its default
# 1 s rounds), about 3 min for `bench-flows`, 2 min for `bench-capture` and 6 min for
# `bench-multipath` (scamper waits 250 ms between probes). The first run also installs trippy with `cargo install trippy --locked` if
# `trip` is missing, which compiles for several minutes on 2 cores (skipped if cargo or the
# build fails: the report then says trippy was not run).
set -euo pipefail
cd "$(dirname "$0")/.."

bench_args=()
trace_args=()
skip_flow=0
skip_trace=0
skip_flows=0
skip_capture=0
skip_multipath=0
skip_line=0
skip_throughput=0
mp_args=()
tp_args=()
while (($#)); do
  case "$1" in
    --runs | --flows)
      (($# >= 2)) || { echo "bench: $1 needs a value" >&2; exit 2; }
      bench_args+=("$1" "$2"); shift 2 ;;
    --targets | --parallel | --reps)
      (($# >= 2)) || { echo "bench: $1 needs a value" >&2; exit 2; }
      trace_args+=("$1" "$2"); shift 2 ;;
    --skip-flow) skip_flow=1; shift ;;
    --skip-trace) skip_trace=1; shift ;;
    --skip-flows) skip_flows=1; shift ;;
    --skip-capture) skip_capture=1; shift ;;
    --skip-multipath) skip_multipath=1; shift ;;
    --skip-line) skip_line=1; shift ;;
    --skip-throughput) skip_throughput=1; shift ;;
    --tp-targets)
      (($# >= 2)) || { echo "bench: $1 needs a value" >&2; exit 2; }
      tp_args+=(--targets "$2"); shift 2 ;;
    --line)
      (($# >= 2)) || { echo "bench: $1 needs a value" >&2; exit 2; }
      bench_args+=(--line "$2"); tp_args+=(--line "$2"); shift 2 ;;
    --mp-reps)
      (($# >= 2)) || { echo "bench: $1 needs a value" >&2; exit 2; }
      mp_args+=(--reps "$2"); shift 2 ;;
    *) echo "bench: unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done

source scripts/setup.sh
# Peers and measurement tools, only what is missing: scamper, tcpdump, dublin-traceroute and
# mtr-tiny (peers), time (GNU time: max RSS), hyperfine (BENCHMARKS.md's one-destination
# start-up figures).
missing=()
for p in scamper time tcpdump dublin-traceroute mtr-tiny hyperfine; do
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

# trippy (peer of bench-trace), from crates.io, only if missing.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
trip="$(command -v trip || true)"
[[ -n $trip || ! -x $cargo_bin/trip ]] || trip="$cargo_bin/trip"
if ((!skip_trace || !skip_flow)) && [[ -z $trip ]]; then
  echo "bench: installing trippy (cargo install trippy --locked; several minutes on 2 cores)" >&2
  if timeout 3600 cargo install --quiet trippy --locked >&2; then
    trip="$cargo_bin/trip"
  else
    echo "bench: cargo install trippy failed; bench-trace runs without trippy" >&2
  fi
fi

cargo build --release --quiet -p service-traceroute -p svctr-lab
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"
status=0
if ((!skip_flow)); then
  if [[ -n $trip ]]; then bench_args+=(--trip "$trip"); fi
  "$bin/svctr-lab" bench --tracer "$bin/service-traceroute" "${bench_args[@]}" || status=$?
fi
if ((!skip_trace)); then
  if [[ -n $trip ]]; then trace_args+=(--trip "$trip"); fi
  "$bin/svctr-lab" bench-trace --tracer "$bin/service-traceroute" "${trace_args[@]}" || status=$?
fi
if ((!skip_flows)); then
  "$bin/svctr-lab" bench-flows --tracer "$bin/service-traceroute" || status=$?
fi
if ((!skip_capture)); then
  "$bin/svctr-lab" bench-capture --tracer "$bin/service-traceroute" || status=$?
fi
if ((!skip_multipath)); then
  "$bin/svctr-lab" bench-multipath --tracer "$bin/service-traceroute" "${mp_args[@]}" || status=$?
fi
if ((!skip_throughput)); then
  "$bin/svctr-lab" bench-throughput --tracer "$bin/service-traceroute" "${tp_args[@]}" || status=$?
fi
if ((!skip_line)); then
  "$bin/svctr-lab" bench-line || status=$?
fi
exit "$status"

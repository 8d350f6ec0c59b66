#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named) one after the other, for SECONDS each or to a
# number of executions, and fails on the first crash. With a nightly toolchain where
# `rustup toolchain list` shows one (`cargo +nightly fuzz`), otherwise stable with
# RUSTC_BOOTSTRAP=1 (see fuzz/README.md). Corpora grow in fuzz/corpus/<target> (git-ignored),
# seeded from fuzz/seeds/<target>; a crash is saved under fuzz/artifacts/<target>/
# (git-ignored) and its log kept in fuzz/logs/<target>.log.
#
#   scripts/fuzz.sh [OPTIONS] [SECONDS] [TARGET...]
#
#   SECONDS           time per target (libFuzzer -max_total_time); default 60, or 3600 with
#                     --runs, where it is only the safety cap
#   --runs N          stop each target after N executions (libFuzzer -runs=N; also FUZZ_RUNS)
#   --sanitizer S     address (default), none, leak, memory, thread (cargo fuzz -s; also
#                     FUZZ_SANITIZER). `none` runs the targets about 2-3x faster; the code
#                     fuzzed is safe Rust, see fuzz/README.md
#
# FUZZ_LOG_TAG=X writes the log to logs/<target>-X.log: two sessions of one target can then
# run at once on the same corpus (each its own libFuzzer process and its own count).
#
# One target at a time, one libFuzzer process (no -jobs/-fork): the machine is shared.
# The commit fuzzed (taken before the runs), and any uncommitted change to what is built.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no -- fuzz_targets Cargo.toml ../crates/wire/src \
  ../crates/detect/src ../crates/core/src 2>/dev/null | awk '{print $NF}' | paste -sd' ' -)
[[ -n $dirty ]] && commit="$commit (plus uncommitted changes to $dirty)"

# Per-target libFuzzer options (e.g. -max_len) are set in `target_args` below.
#
# Prints a line per target: executions, exec/s, coverage points, corpus size, seconds, and at
# the end a Markdown table for fuzz/README.md with the date and the commit. A target that hits
# the time cap before --runs executions is reported as such ("cap"), not as a failure.
set -euo pipefail
runs=${FUZZ_RUNS:-}
sanitizer=${FUZZ_SANITIZER:-address}
while [[ $# -gt 0 ]]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --runs=*) runs=${1#*=}; shift ;;
    --sanitizer | -s) sanitizer=$2; shift 2 ;;
    --sanitizer=*) sanitizer=${1#*=}; shift ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ -n $runs && ! $runs =~ ^[0-9]+$ ]]; then
  echo "fuzz: --runs wants a number, not '$runs'" >&2
  exit 2
fi
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  secs=$1
  shift
elif [[ -n $runs ]]; then
  secs=3600
else
  secs=60
fi
cd "$(dirname "$0")/../fuzz"
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz (crates.io)" >&2
  cargo install --locked cargo-fuzz >/dev/null
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

# The commit fuzzed (taken before the runs), and any uncommitted change to what is built.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no -- fuzz_targets Cargo.toml ../crates/wire/src \
  ../crates/detect/src ../crates/core/src 2>/dev/null | awk '{print $NF}' | paste -sd' ' -)
[[ -n $dirty ]] && commit="$commit (plus uncommitted changes to $dirty)"

# Per-target libFuzzer options; each is explained in fuzz/README.md.
target_args() {
  case $1 in
    # Regex compilation dominates and grows with the file: ~2.8 k/s with inputs up to the
    # builtin file's 5 KB, ~9 k/s up to 2 KB (the builtin file without its comments is 2 KB,
    # seeds/signatures/builtin_compact.bin).
    signatures) echo -max_len=2048 ;;
    *) ;;
  esac
}

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <("${fuzz[@]}" list)
fi
mkdir -p logs
limit=(-max_total_time="$secs")
[[ -n $runs ]] && limit+=(-runs="$runs")
rows=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  seeds=()
  [[ -d "seeds/$t" ]] && seeds=("seeds/$t")
  extra=()
  mapfile -t extra < <(target_args "$t")
  log="logs/$t${FUZZ_LOG_TAG:+-$FUZZ_LOG_TAG}.log"
  echo "fuzz: $t for ${runs:+$runs executions or }${secs}s${extra[*]:+ (${extra[*]})}" >&2
  if ! "${fuzz[@]}" run -s "$sanitizer" "$t" "corpus/$t" "${seeds[@]}" -- \
      "${limit[@]}" "${extra[@]}" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz: $t FAILED (crash or error); see fuzz/$log and fuzz/artifacts/$t/" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "corpus/$t" -type f | wc -l)
  note=""
  [[ -n $runs && ${n:-0} -lt $runs ]] && note=" (cap)"
  echo "fuzz: $t ok: ${n:-?} executions$note, ${rate:-?}/s, ${cov:-?} coverage points," \
    "$corpus corpus inputs, ${took:-?} s" >&2
  rows+=("| \`$t\` | ${n:-?}$note | ${rate:-?} | ${cov:-?} | $corpus | ${took:-?} |")
done
echo "$(date -u +%Y-%m-%d), commit $commit, sanitizer $sanitizer," \
  "${runs:+-runs=$runs, }-max_total_time=$secs per target:"
echo
echo "| target | executions | exec/s | coverage points | corpus | seconds |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"

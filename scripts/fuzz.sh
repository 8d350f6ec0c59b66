#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named) for SECONDS each, one after the other, and
# fails on the first crash. With a nightly toolchain where `rustup toolchain list` shows one
# (`cargo +nightly fuzz`), otherwise stable with RUSTC_BOOTSTRAP=1 (see fuzz/README.md).
# Corpora grow in fuzz/corpus/<target> (git-ignored), seeded from fuzz/seeds/<target>; a
# crash is saved under fuzz/artifacts/<target>/ (git-ignored) and its log kept.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      # default: 60 s, every target
#
# Prints a line per target: executions, coverage points, corpus size, and at the end a
# Markdown table for fuzz/README.md with the date and the commit.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
[[ $# -gt 0 ]] && shift
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
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <("${fuzz[@]}" list)
fi
mkdir -p logs
rows=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  seeds=()
  [[ -d "seeds/$t" ]] && seeds=("seeds/$t")
  log="logs/$t.log"
  echo "fuzz: $t for ${secs}s" >&2
  if ! "${fuzz[@]}" run "$t" "corpus/$t" "${seeds[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz: $t FAILED (crash or error); see fuzz/$log and fuzz/artifacts/$t/" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(ls "corpus/$t" | wc -l)
  echo "fuzz: $t ok: ${runs:-?} executions, ${cov:-?} coverage points, $corpus corpus inputs" >&2
  rows+=("| \`$t\` | ${runs:-?} | ${cov:-?} | $corpus |")
done
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "$(date -u +%Y-%m-%d), commit $commit, ${secs} s per target:"
echo
echo "| target | executions | coverage points | corpus |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"

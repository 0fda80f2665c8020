#!/usr/bin/env bash
# The fuzz targets in fuzz/ (nightly toolchain and cargo-fuzz, which scripts/install-deps.sh
# installs):
#
#   bash scripts/fuzz.sh build            build every target
#   bash scripts/fuzz.sh run [SECONDS]    every input that ever failed a target (its regressions),
#                                         each within a time limit, then each target for SECONDS
#                                         (default 20) from its committed corpus
#   bash scripts/fuzz.sh [SECONDS]        both
#
# The run starts from each target's committed corpus in fuzz/corpus/<target> (read only: what
# the run adds goes to fuzz/target/corpus/<target>). The random seed is fixed (ROTA_FUZZ_SEED,
# default 1), so a run from a clean checkout tries the same inputs every time and CI passes or
# fails on the code, not on luck; long searches with random seeds are run by hand (see
# docs/testing.md). A crash stops the run with a non-zero exit and leaves the input in
# fuzz/artifacts/<target>/; add it to the target's regression inputs (fuzz/regressions/<target>/)
# once fixed. A regression input that takes longer than ROTA_FUZZ_INPUT_MS (default 250 ms)
# fails the run too: some of them are slowness bugs, which a crash check alone would not catch.
set -euo pipefail
cd "$(dirname "$0")/.."
action=all
case "${1:-}" in
  build | run) action=$1; shift ;;
esac
seconds="${1:-20}"
seed="${ROTA_FUZZ_SEED:-1}"
limit_ms="${ROTA_FUZZ_INPUT_MS:-250}"
export PATH="$PWD/.tools/cargo-fuzz/bin:$PATH"
cd fuzz

if [ "$action" != run ]; then
  cargo +nightly fuzz build
fi
[ "$action" = build ] && exit 0

targets=$(cargo +nightly fuzz list)
[ -n "$targets" ] || { echo "fuzz: cargo fuzz list named no target" >&2; exit 1; }
mkdir -p target
ran=0
for target in $targets; do
  # Every input that ever failed this target runs first, each timed.
  if [ -d "regressions/$target" ]; then
    log="target/regressions-$target.log"
    if ! cargo +nightly fuzz run "$target" regressions/"$target"/* -- -runs=1 >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "fuzz: a regression input of $target fails again" >&2
      exit 1
    fi
    slow=$(grep -E "^Executed .* in [0-9]+ ms" "$log" \
      | awk -v limit="$limit_ms" '{ms = $(NF - 1); if (ms + 0 > limit) print}')
    if [ -n "$slow" ]; then
      echo "$slow" >&2
      echo "fuzz: a regression input of $target took over $limit_ms ms" >&2
      exit 1
    fi
    echo "fuzz: $target: $(grep -cE '^Executed ' "$log") regression inputs, each within $limit_ms ms"
  fi
  echo "fuzz: $target for ${seconds}s"
  log="target/fuzz-$target.log"
  mkdir -p "target/corpus/$target"
  if ! cargo +nightly fuzz run "$target" "target/corpus/$target" "corpus/$target" -- \
      -seed="$seed" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  last=$(grep -E "^#[0-9]+" "$log" | tail -n 1)
  [ -n "$last" ] || { echo "fuzz: $target printed no progress: did it run?" >&2; exit 1; }
  echo "$last"
  ran=$((ran + 1))
done
expected=$(ls fuzz_targets/*.rs | wc -l)
if [ "$ran" -ne "$expected" ]; then
  echo "fuzz: $ran targets ran, fuzz_targets/ holds $expected" >&2
  exit 1
fi
echo "fuzz: every target ($ran) ran ${seconds}s without a failure"

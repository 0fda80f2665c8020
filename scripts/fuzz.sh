#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time (default 20 s each; first argument to
# change it), starting from its committed corpus in fuzz/corpus/<target> (read only: what the
# run adds goes to fuzz/target/corpus/<target>). The random seed is fixed (ROTA_FUZZ_SEED,
# default 1), so a run from a clean checkout tries the same inputs every time and CI passes or
# fails on the code, not on luck; long searches with random seeds are run by hand (see
# docs/testing.md). A crash stops the run with a non-zero exit and leaves the input in
# fuzz/artifacts/<target>/; add it to the target's regression inputs
# (fuzz/regressions/<target>/) once fixed. Needs the nightly toolchain and cargo-fuzz
# (scripts/install-deps.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
seed="${ROTA_FUZZ_SEED:-1}"
export PATH="$PWD/.tools/cargo-fuzz/bin:$PATH"
cd fuzz
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
  # Every input that ever crashed a target runs first, then new inputs are sought for $seconds.
  if [ -d "regressions/$target" ]; then
    cargo +nightly fuzz run "$target" "regressions/$target" -- -runs=0 >/dev/null
  fi
  echo "fuzz: $target for ${seconds}s"
  log="target/fuzz-$target.log"
  mkdir -p target
  mkdir -p "target/corpus/$target"
  if ! cargo +nightly fuzz run "$target" "target/corpus/$target" "corpus/$target" -- \
      -seed="$seed" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^#[0-9]+" "$log" | tail -n 1
done
echo "fuzz: every target ran ${seconds}s without a failure"

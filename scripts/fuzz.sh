#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time (default 20 s each; first argument to
# change it), starting from its committed corpus in fuzz/corpus/<target>. A crash stops the
# run with a non-zero exit and leaves the input in fuzz/artifacts/<target>/; add it to the
# target's regression inputs (fuzz/regressions/<target>/) once fixed. Needs the nightly
# toolchain and cargo-fuzz (scripts/install-deps.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
export PATH="$PWD/.tools/cargo-fuzz/bin:$PATH"
cd fuzz
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  # Every input that ever crashed a target runs first, then the corpus grows for $seconds.
  if [ -d "regressions/$target" ]; then
    cargo +nightly fuzz run "$target" "regressions/$target" -- -runs=0 >/dev/null
  fi
  echo "fuzz: $target for ${seconds}s"
  log="target/fuzz-$target.log"
  mkdir -p target
  if ! cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" \
      -timeout=10 -rss_limit_mb=4096 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^#[0-9]+" "$log" | tail -n 1
done
echo "fuzz: every target ran ${seconds}s without a failure"

#!/usr/bin/env bash
# The one command that runs every check rota has: installs what the tests need, then format,
# lints and the whole test suite (property tests, the simulator's seeds and each fuzz target
# included). CI runs exactly this.
#
#   bash scripts/test.sh          everything
#   bash scripts/test.sh quick    before every push: format, lints, and every test but the
#                                 suites of whole clusters (handover, multiprocess, partitions,
#                                 the benchmark's smoke run), with 300 simulator seeds and no
#                                 fuzzing
#
# Everything is built once; then the test programs run straight from the build, in groups side
# by side: the suites of whole clusters (one after the other: each takes the machine), every
# other test program (one after the other), and the work that only computes (the simulator's
# seeds, the fuzz targets' build) at a lower priority, so that the waiting suites keep their
# timing. Each group's output goes to target/test-logs/<group>.log, printed when it fails. The
# time each stage took is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

tier="${1:-full}"
case "$tier" in
  full | quick) ;;
  *) echo "usage: bash scripts/test.sh [quick]" >&2; exit 2 ;;
esac

stages=()
started=$(date +%s)
stage_start=$started
stage() {
  local now
  now=$(date +%s)
  stages+=("$(printf '%-30s %5ds' "$1" $((now - stage_start)))")
  stage_start=$now
}
# The stages' times, also when a stage fails (the failing one is the first not listed).
print_stages() {
  local status=$?
  echo
  if [ $status -eq 0 ]; then
    echo "scripts/test.sh $tier: every check passed; stages:"
  else
    echo "scripts/test.sh $tier: FAILED (exit $status); stages done:"
  fi
  printf '  %s\n' "${stages[@]}"
  printf '  %-30s %5ds\n' "total" $(($(date +%s) - started))
}
trap print_stages EXIT

bash scripts/install-deps.sh
stage "install what the tests need"

# The workspace with the etcd backend (its client needs the protoc installed above), so the
# rota binary the multi-process tests run supports etcd; the simulator is built on its own, so
# that its test-only switches (`teeth`) never reach a binary that another test runs.
main=(--workspace --exclude rota-sim --features rota/etcd --locked)
sim=(-p rota-sim --locked)
cargo fmt --all -- --check
cargo clippy --workspace --features rota/etcd --locked --all-targets -- -D warnings
stage "format and lints"

logs=target/test-logs
rm -rf "$logs"
mkdir -p "$logs"
# Builds the test programs of `cargo test ARGS --no-run` and lists them in $logs/<list>:
# a line each, "target-name<TAB>program<TAB>package directory".
build_tests() {
  local list=$1
  shift
  cargo test "$@" --no-run --message-format=json-render-diagnostics \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"], m["manifest_path"].rsplit("/", 1)[0], sep="\t")
' >"$logs/$list"
}
build_tests main.list "${main[@]}" --lib --bins --tests --examples
build_tests sim.list "${sim[@]}" --lib --tests
# The binaries the tests start (`rota`, `rota-bench`), as built for the tests above.
cargo build "${main[@]}" --bins
# The documentation's examples compile and pass.
cargo test "${main[@]}" --doc
stage "build (and run the doc tests)"

# Runs the test programs of a list (those whose target name matches $2, or all but those with
# $3), each in its package's directory as cargo would, one after the other.
run_tests() {
  local list=$1 only=${2:-} except=${3:-}
  local name program dir
  while IFS=$'\t' read -r name program dir; do
    if [ -n "$only" ] && ! [[ " $only " == *" $name "* ]]; then continue; fi
    if [ -n "$except" ] && [[ " $except " == *" $name "* ]]; then continue; fi
    echo "---- $name ($program)"
    (cd "$dir" && "$program") || return 1
  done <"$logs/$list"
}

pids=()
names=()
# Starts a group in the background, its output in $logs/<name>.log.
group() {
  local name=$1
  shift
  ("$@") >"$logs/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}
# Waits for every group, then prints each one's summary, or its log if it failed; fails if one did.
wait_groups() {
  local failed=0 i
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      grep -hE "^test result|seeds in|^fuzz:" "$logs/${names[$i]}.log" \
        | sed "s/^/${names[$i]}: /" || true
    else
      echo "==== ${names[$i]} failed; its log:" >&2
      cat "$logs/${names[$i]}.log" >&2
      failed=1
    fi
  done
  pids=()
  names=()
  return $failed
}

clusters="handover multiprocess partitions bench"
if [ "$tier" = full ]; then
  group clusters run_tests main.list "$clusters"
fi
group units run_tests main.list "" "$clusters"
# The simulator's seeds, computing on every core. The count is set for this command only: rota
# reads every ROTA_* variable of its environment as configuration, and refuses one it does not
# know.
seeds=3000
[ "$tier" = quick ] && seeds=300
group seeds env ROTA_SIM_SEEDS="$seeds" nice -n 10 bash -c "$(declare -f run_tests); logs=$logs; run_tests sim.list"
if [ "$tier" = full ]; then
  # The fuzz targets' build (nightly, sanitizers) while the suites above wait.
  group fuzz-build nice -n 15 bash scripts/fuzz.sh build
fi
wait_groups
stage "run the tests (side by side)"

if [ "$tier" = full ]; then
  # Every fuzz target, briefly, from its committed corpus (a crash fails the run).
  bash scripts/fuzz.sh run "${ROTA_FUZZ_SECONDS:-20}"
  stage "fuzz every target"
fi

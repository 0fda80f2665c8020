#!/usr/bin/env bash
# The one command that runs every check rota has: installs what the tests need, then format,
# lints and the whole test suite (property tests included). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# Everything, the etcd backend included (its client needs the protoc installed above): the rota
# binary is built with etcd support, which the multi-process test runs on.
features=(--workspace --features rota/etcd --locked)
cargo fmt --all -- --check
cargo clippy "${features[@]}" --all-targets -- -D warnings
# Libraries, binaries, integration tests and examples; benchmarks are compiled by clippy above
# and run with `cargo bench` (run as tests they would take minutes). The simulator's seeds run
# on their own below.
cargo test "${features[@]}" --lib --bins --tests --examples -- --skip every_seed_keeps_every_invariant
# The simulator's seeds: a few thousand (about 6 minutes on 2 cores). The count is set for this
# command only: rota reads every ROTA_* variable of its environment as configuration, and
# refuses one it does not know.
ROTA_SIM_SEEDS="${ROTA_SIM_SEEDS:-3000}" cargo test "${features[@]}" --test seeds every_seed_keeps_every_invariant
# Doc tests and the documented examples compile and pass too.
cargo test "${features[@]}" --doc
# Every fuzz target, briefly, from its committed corpus (a crash fails the run).
bash scripts/fuzz.sh "${ROTA_FUZZ_SECONDS:-20}"

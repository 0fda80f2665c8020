#!/usr/bin/env bash
# The one command that runs every check rota has: installs what the tests need, then format,
# lints and the whole test suite (property tests included). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Libraries, binaries, integration tests and examples; benchmarks are compiled by clippy above
# and run with `cargo bench` (run as tests they would take minutes).
cargo test --workspace --lib --bins --tests --examples --locked
# Doc tests and the documented examples compile and pass too.
cargo test --workspace --doc --locked

#!/usr/bin/env bash
# The one command that runs every check rota has: installs what the tests need, then format,
# lints and the whole test suite (property tests included). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
# Doc tests and the documented examples compile and pass too.
cargo test --workspace --doc --locked

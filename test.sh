#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: installs what the tests need (protoc, the
# S3 test server, moto), checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")"
bash infra/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features strata/failpoints -- -D warnings
# The crash points of the fault tests (`failpoints`) are compiled into the test build only.
cargo nextest run --workspace --features strata/failpoints --no-fail-fast "$@"
# nextest runs no doctests: the engine's crate example is one (it opens, writes and reads back).
cargo test --doc -p strata-engine

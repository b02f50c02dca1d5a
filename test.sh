#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: installs what the tests need (protoc, the
# S3 test server, moto), checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")"
bash infra/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast "$@"
# nextest runs no doctests: the engine's crate example is one (it opens, writes and reads back).
cargo test --doc -p strata-engine

#!/usr/bin/env bash
# Install what a fresh Debian machine needs to build and test Strata. Idempotent, and quiet
# when everything is already there.
#
#   infra/setup.sh            everything: apt packages (protoc, curl, etcd), moto, pyarrow +
#                             duckdb (export tests), s3 server
#   infra/setup.sh --no-etcd  skip etcd (only the cluster tests need it)
#
# - protobuf-compiler + libprotobuf-dev (protoc and its well-known types: tonic-prost-build and
#   etcd-client's build scripts need them), curl,
#   a C compiler; apt-get update runs only when something has to be installed
# - etcd-server + etcd-client 3.4 (infra/etcd.sh install: guarded against service starts)
# - moto[server] (pinned in infra/moto.sh), the second-opinion S3 server
# - cargo-nextest: checked, not installed (preinstalled on our machines; installing it from
#   source takes minutes: cargo install cargo-nextest --locked)
# - infra/s3-server built into target/infra (infra/s3.sh build)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

with_etcd=1
for a in "$@"; do
    case "$a" in
        --no-etcd) with_etcd=0 ;;
        *) die "unknown argument $a (usage: infra/setup.sh [--no-etcd])" ;;
    esac
done

# --- Debian packages, in one apt-get run -------------------------------------------------
pkgs=()
command -v protoc >/dev/null 2>&1 || pkgs+=(protobuf-compiler)
# The well-known types (google/protobuf/*.proto) that etcd-client's protos import: a
# "Recommends" of protobuf-compiler, so --no-install-recommends leaves them out.
[ -f /usr/include/google/protobuf/descriptor.proto ] || pkgs+=(libprotobuf-dev)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
command -v cc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || pkgs+=(python3 python3-pip)
if [ ${#pkgs[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get to install them"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    say "setup: apt-get install ${pkgs[*]} ..."
    log="$(mktemp)"
    if ! { $sudo apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } \
        >"$log" 2>&1; then
        cat "$log" >&2
        die "apt-get install ${pkgs[*]} failed"
    fi
    rm -f "$log"
fi
if [ "$with_etcd" = 1 ]; then
    "$INFRA_DIR/etcd.sh" install
fi

# --- Python: moto -------------------------------------------------------------------------
"$INFRA_DIR/moto.sh" install

# --- Python: pyarrow + DuckDB, the readers the Parquet export tests check against ----------
PYARROW_VERSION="26.0.1"
DUCKDB_VERSION="2.0.0"
if ! python3 - "$PYARROW_VERSION" "$DUCKDB_VERSION" >/dev/null 2>&1 <<'PY'
import sys
import importlib.metadata as m
assert m.version("pyarrow") == sys.argv[1]
assert m.version("duckdb") == sys.argv[2]
PY
then
    say "setup: installing pyarrow==$PYARROW_VERSION duckdb==$DUCKDB_VERSION ..."
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "pyarrow==$PYARROW_VERSION" "duckdb==$DUCKDB_VERSION" >&2 ||
        die "pip install pyarrow duckdb failed"
fi

# --- Rust tools ---------------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup) first"
if ! cargo nextest --version >/dev/null 2>&1; then
    say "setup: WARNING: cargo-nextest is missing; install it with: cargo install cargo-nextest --locked"
fi

# --- Our S3 server ------------------------------------------------------------------------
"$INFRA_DIR/s3.sh" build >/dev/null

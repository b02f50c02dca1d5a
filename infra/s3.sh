#!/usr/bin/env bash
# Start and stop Strata's own S3-compatible test server (infra/s3-server: s3s + s3s-fs with
# per-key locking, so conditional PUTs are correct under concurrency) on loopback.
#
#   infra/s3.sh build                 build the server if missing or stale; print its path
#   infra/s3.sh start [DIR] [PORT]    fresh data dir, start, wait, create the bucket, print env
#   infra/s3.sh env   [DIR]           print the env of the running server again
#   infra/s3.sh stop  [DIR]           stop it (SIGTERM by pid file)
#   infra/s3.sh status [DIR]          exit 0 when it runs
#   infra/s3.sh path                  print the binary path (no build)
#
# DIR   state directory: data/, pid, log, env   (default $STRATA_S3_DIR or /tmp/strata-s3)
# PORT  loopback port, 0 = any free one          (default $STRATA_S3_PORT or 19000)
# The printed lines are `export VAR=...` for a client:
#   eval "$(infra/s3.sh start)"
# Settings: STRATA_S3_BUCKET (strata), STRATA_S3_ACCESS_KEY (strata),
# STRATA_S3_SECRET_KEY (strata-secret), STRATA_S3_REGION (us-east-1),
# STRATA_INFRA_TARGET_DIR (target/infra), STRATA_S3_SERVER_BIN (use this binary, never build).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TARGET_DIR="${STRATA_INFRA_TARGET_DIR:-$REPO_ROOT/target/infra}"
SRC_DIR="$INFRA_DIR/s3-server"
# Release: ~45 s more to build than debug (once), twice as fast to serve (see its Cargo.toml).
BIN="${STRATA_S3_SERVER_BIN:-$TARGET_DIR/release/strata-s3-server}"

BUCKET="${STRATA_S3_BUCKET:-strata}"
ACCESS_KEY="${STRATA_S3_ACCESS_KEY:-strata}"
SECRET_KEY="${STRATA_S3_SECRET_KEY:-strata-secret}"
REGION="${STRATA_S3_REGION:-us-east-1}"

cmd="${1:-}"
[ $# -gt 0 ] && shift
DIR="${1:-${STRATA_S3_DIR:-/tmp/strata-s3}}"
PORT="${2:-${STRATA_S3_PORT:-19000}}"

needs_build() {
    [ -x "$BIN" ] || return 0
    [ -n "$(find "$SRC_DIR/Cargo.toml" "$SRC_DIR/src" -newer "$BIN" -print -quit 2>/dev/null)" ]
}

build() {
    if [ -n "${STRATA_S3_SERVER_BIN:-}" ]; then
        [ -x "$BIN" ] || die "STRATA_S3_SERVER_BIN=$BIN is not an executable"
        return 0
    fi
    if needs_build; then
        command -v cargo >/dev/null || die "cargo not found: cannot build $SRC_DIR"
        say "s3: building strata-s3-server (from scratch: ~4 min) ..."
        local t0=$SECONDS
        # Its own workspace and target dir: never waits on, or slows, the main build.
        (cd "$SRC_DIR" && cargo build --release --locked --quiet --target-dir "$TARGET_DIR" --bin strata-s3-server) >&2 \
            || die "building $SRC_DIR failed"
        touch "$BIN"
        say "s3: built in $((SECONDS - t0)) s"
    fi
}

EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

# fail MSG: show the server's log, stop it, and exit.
fail() {
    cat "$DIR/log" >&2 2>/dev/null || true
    stop_pidfile "$DIR/pid" s3 >/dev/null 2>&1 || true
    die "$1"
}

start() {
    build
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    if pid_alive "$DIR/pid"; then
        stop_pidfile "$DIR/pid" s3
    fi
    if [ "$PORT" != 0 ] && port_in_use "$PORT"; then
        die "port $PORT is already in use (choose another: infra/s3.sh start DIR PORT)"
    fi
    rm -rf "$DIR/data" "$DIR/env"
    mkdir -p "$DIR/data"
    : >"$DIR/log"
    "$BIN" --root "$DIR/data" --listen "127.0.0.1:$PORT" \
        --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" --bucket "$BUCKET" \
        </dev/null >>"$DIR/log" 2>&1 &
    echo $! >"$DIR/pid"
    # The server prints `listening on 127.0.0.1:PORT` once bound; that gives the real port.
    local addr=""
    for _ in $(seq 1 200); do
        addr="$(sed -n 's/^listening on //p' "$DIR/log" | head -n1)"
        [ -n "$addr" ] && break
        pid_alive "$DIR/pid" || break
        sleep 0.05
    done
    [ -n "$addr" ] || fail "strata-s3-server did not start"
    PORT="${addr##*:}"
    wait_http "http://$addr/" 20 "$DIR/pid" || fail "server on $addr does not answer"
    # The bucket was created at start (--bucket); check it through the signed API with curl.
    if curl --help all 2>/dev/null | grep -q -- '--aws-sigv4'; then
        local code
        code="$(curl -s -o /dev/null -w '%{http_code}' -m 5 -I \
            -H "x-amz-content-sha256: $EMPTY_SHA256" \
            --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
            "http://$addr/$BUCKET")"
        [ "$code" = 200 ] || fail "HEAD bucket $BUCKET answered $code"
    fi
    print_s3_env "$PORT" "$ACCESS_KEY" "$SECRET_KEY" "$REGION" "$BUCKET" >"$DIR/env"
    say "s3: strata-s3-server on http://$addr, bucket $BUCKET, data in $DIR/data, log $DIR/log"
    cat "$DIR/env"
}

case "$cmd" in
    build) build; echo "$BIN" ;;
    path) echo "$BIN" ;;
    start) start ;;
    stop) stop_pidfile "$DIR/pid" s3 ;;
    env)
        pid_alive "$DIR/pid" || die "no server running for $DIR (infra/s3.sh start $DIR)"
        cat "$DIR/env"
        ;;
    status)
        if pid_alive "$DIR/pid"; then say "s3: running (pid $(cat "$DIR/pid"))"; else say "s3: not running"; exit 1; fi
        ;;
    *) usage; exit 2 ;;
esac

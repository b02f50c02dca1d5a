#!/usr/bin/env bash
# Start and stop moto's S3 server on loopback: the independent second opinion on S3 semantics
# (in memory: it loses everything when stopped).
#
#   infra/moto.sh install              pip install the pinned moto[server] if missing
#   infra/moto.sh start [DIR] [PORT]   start, wait, create the bucket, print env
#   infra/moto.sh env   [DIR]          print the env of the running server again
#   infra/moto.sh stop  [DIR]          stop it (SIGTERM by pid file)
#   infra/moto.sh status [DIR]         exit 0 when it runs
#
# DIR   state directory: pid, log, env   (default $STRATA_MOTO_DIR or /tmp/strata-moto)
# PORT  loopback port                    (default $STRATA_MOTO_PORT or 19100)
# Prints `export VAR=...` lines for a client:  eval "$(infra/moto.sh start)"
# Settings: STRATA_S3_BUCKET (strata), STRATA_S3_REGION (us-east-1). moto accepts any
# credentials; these scripts hand out strata / strata-secret.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MOTO_VERSION="5.2.1"

BUCKET="${STRATA_S3_BUCKET:-strata}"
REGION="${STRATA_S3_REGION:-us-east-1}"

cmd="${1:-}"
[ $# -gt 0 ] && shift
DIR="${1:-${STRATA_MOTO_DIR:-/tmp/strata-moto}}"
PORT="${2:-${STRATA_MOTO_PORT:-19100}}"

# The pinned moto with its server extras. (Started as `python3 -m moto.server`, which works
# whether or not pip's script directory, or a pyenv shim for moto_server, is on PATH.)
moto_ok() {
    python3 - "$MOTO_VERSION" >/dev/null 2>&1 <<'PY'
import sys
import importlib.metadata as m
assert m.version("moto") == sys.argv[1]
for dist in ("flask", "flask-cors", "werkzeug"):
    m.version(dist)
PY
}

install() {
    moto_ok && return 0
    command -v python3 >/dev/null || die "python3 not found"
    say "moto: installing moto[server]==$MOTO_VERSION ..."
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "moto[server]==$MOTO_VERSION" >&2 \
        || die "pip install moto[server]==$MOTO_VERSION failed"
    moto_ok || die "moto $MOTO_VERSION still not importable by $(command -v python3) after install"
}

start() {
    install
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    if pid_alive "$DIR/pid"; then
        stop_pidfile "$DIR/pid" moto
    fi
    [ "$PORT" != 0 ] || die "moto needs an explicit port"
    port_in_use "$PORT" && die "port $PORT is already in use (choose another: infra/moto.sh start DIR PORT)"
    rm -f "$DIR/env"
    : >"$DIR/log"
    python3 -m moto.server -H 127.0.0.1 -p "$PORT" </dev/null >>"$DIR/log" 2>&1 &
    echo $! >"$DIR/pid"
    wait_http "http://127.0.0.1:$PORT/" 60 "$DIR/pid" || { cat "$DIR/log" >&2; die "moto did not start"; }
    # moto checks no signatures: a plain PUT creates the bucket.
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' -m 10 -X PUT "http://127.0.0.1:$PORT/$BUCKET")"
    [ "$code" = 200 ] || die "creating bucket $BUCKET answered $code"
    print_s3_env "$PORT" strata strata-secret "$REGION" "$BUCKET" >"$DIR/env"
    say "moto: S3 on http://127.0.0.1:$PORT, bucket $BUCKET (in memory), log $DIR/log"
    cat "$DIR/env"
}

case "$cmd" in
    install) install ;;
    start) start ;;
    stop) stop_pidfile "$DIR/pid" moto ;;
    env)
        pid_alive "$DIR/pid" || die "no moto running for $DIR (infra/moto.sh start $DIR)"
        cat "$DIR/env"
        ;;
    status)
        if pid_alive "$DIR/pid"; then say "moto: running (pid $(cat "$DIR/pid"))"; else say "moto: not running"; exit 1; fi
        ;;
    *) usage; exit 2 ;;
esac

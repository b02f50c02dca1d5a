#!/usr/bin/env bash
# Install (Debian's etcd-server 3.4), start and stop a single-member etcd on loopback.
#
#   infra/etcd.sh install                           apt-get install etcd-server etcd-client if missing
#   infra/etcd.sh start [DIR] [CLIENT_PORT] [PEER_PORT]   fresh data dir, start, wait, print env
#   infra/etcd.sh restart [DIR] [CLIENT_PORT] [PEER_PORT] stop if running, start again KEEPING
#                                                   the data dir (an existing member), print env
#   infra/etcd.sh env   [DIR]                       print the env of the running etcd again
#   infra/etcd.sh stop  [DIR]                       stop it (SIGTERM by pid file)
#   infra/etcd.sh kill9 [DIR]                       SIGKILL it (a crash: no clean shutdown)
#   infra/etcd.sh status [DIR]                      exit 0 when it runs
#
# DIR          state directory: data/, pid, log, env  (default $STRATA_ETCD_DIR or /tmp/strata-etcd)
# CLIENT_PORT  default $STRATA_ETCD_PORT or 23790;  PEER_PORT  default $STRATA_ETCD_PEER_PORT or 23800
# (not 2379/2380: the Debian package's own service may hold those where systemd runs).
# Prints `export STRATA_ETCD=http://127.0.0.1:PORT` and `ETCDCTL_ENDPOINTS`/`ETCDCTL_API`:
#   eval "$(infra/etcd.sh start)"
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="${1:-}"
[ $# -gt 0 ] && shift
DIR="${1:-${STRATA_ETCD_DIR:-/tmp/strata-etcd}}"
CPORT="${2:-${STRATA_ETCD_PORT:-23790}}"
PPORT="${3:-${STRATA_ETCD_PEER_PORT:-23800}}"

etcd_bin() {
    command -v etcd 2>/dev/null && return 0
    [ -x /usr/bin/etcd ] && { echo /usr/bin/etcd; return 0; }
    return 1
}

install() {
    if etcd_bin >/dev/null && command -v etcdctl >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null || die "etcd is missing and there is no apt-get: install etcd 3.4+ by hand"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    say "etcd: installing etcd-server and etcd-client ..."
    # The package's maintainer scripts would start an etcd service on 2379 where an init
    # system runs: refuse service starts while installing, then remove the guard.
    local guard=/usr/sbin/policy-rc.d restore=""
    if [ -e "$guard" ]; then
        restore="$(mktemp)"
        $sudo cp -p "$guard" "$restore"
    fi
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$guard" >/dev/null
    $sudo chmod 755 "$guard"
    local rc=0 log
    log="$(mktemp)"
    {
        $sudo apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
                etcd-server etcd-client
    } >"$log" 2>&1 || rc=$?
    [ "$rc" = 0 ] || cat "$log" >&2
    rm -f "$log"
    if [ -n "$restore" ]; then
        $sudo mv "$restore" "$guard"
    else
        $sudo rm -f "$guard"
    fi
    [ "$rc" = 0 ] || die "apt-get install etcd-server etcd-client failed"
    etcd_bin >/dev/null || die "etcd not found after install"
}

# start fresh|keep: `fresh` wipes DIR/data and bootstraps a new one-member cluster; `keep`
# starts the member already in DIR/data (same ports as before: the peer URL is recorded in
# the data). etcd reads an existing member's cluster from its data dir, so `keep` passes no
# --initial-cluster* flags (they only apply to bootstrapping).
start() {
    local mode="$1"
    install
    local bin
    bin="$(etcd_bin)"
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    if pid_alive "$DIR/pid"; then
        stop_pidfile "$DIR/pid" etcd
    fi
    port_in_use "$CPORT" && die "port $CPORT is already in use (infra/etcd.sh $cmd DIR CLIENT_PORT PEER_PORT)"
    port_in_use "$PPORT" && die "port $PPORT is already in use (infra/etcd.sh $cmd DIR CLIENT_PORT PEER_PORT)"
    local c="http://127.0.0.1:$CPORT" p="http://127.0.0.1:$PPORT"
    local bootstrap=()
    rm -f "$DIR/env"
    if [ "$mode" = keep ]; then
        [ -d "$DIR/data/member" ] || die "no etcd data in $DIR/data to restart (infra/etcd.sh start $DIR)"
        echo "--- restart $(date -u +%FT%TZ)" >>"$DIR/log"
    else
        rm -rf "$DIR/data"
        mkdir -p "$DIR/data"
        chmod 700 "$DIR/data"
        : >"$DIR/log"
        bootstrap=(--initial-cluster "strata-dev=$p" --initial-cluster-state new
            --initial-cluster-token "strata-dev-$$")
    fi
    "$bin" --name strata-dev --data-dir "$DIR/data" \
        --listen-client-urls "$c" --advertise-client-urls "$c" \
        --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
        --auto-compaction-mode revision --auto-compaction-retention 1000 \
        "${bootstrap[@]}" \
        </dev/null >>"$DIR/log" 2>&1 &
    echo $! >"$DIR/pid"
    local deadline=$(( $(date +%s) + 30 ))
    until curl -sf -m 2 "$c/health" 2>/dev/null | grep -q '"health":"true"'; do
        if ! pid_alive "$DIR/pid" || [ "$(date +%s)" -ge "$deadline" ]; then
            tail -n 30 "$DIR/log" >&2 || true
            stop_pidfile "$DIR/pid" etcd 2>/dev/null || true
            die "etcd did not become healthy on $c"
        fi
        sleep 0.1
    done
    {
        printf 'export STRATA_ETCD=%s\n' "$c"
        printf 'export ETCDCTL_API=3\n'
        printf 'export ETCDCTL_ENDPOINTS=%s\n' "$c"
    } >"$DIR/env"
    say "etcd: $("$bin" --version 2>/dev/null | head -n1) on $c, data in $DIR/data, log $DIR/log"
    cat "$DIR/env"
}

case "$cmd" in
    install) install ;;
    start) start fresh ;;
    restart) start keep ;;
    stop) stop_pidfile "$DIR/pid" etcd ;;
    kill9)
        if pid_alive "$DIR/pid"; then
            pid="$(cat "$DIR/pid")"
            kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$pid" 2>/dev/null && die "etcd pid $pid still there 10 s after SIGKILL"
            say "etcd: killed (pid $pid)"
        else
            say "etcd: not running"
        fi
        rm -f "$DIR/pid"
        ;;
    env)
        pid_alive "$DIR/pid" || die "no etcd running for $DIR (infra/etcd.sh start $DIR)"
        cat "$DIR/env"
        ;;
    status)
        if pid_alive "$DIR/pid"; then say "etcd: running (pid $(cat "$DIR/pid"))"; else say "etcd: not running"; exit 1; fi
        ;;
    *) usage; exit 2 ;;
esac

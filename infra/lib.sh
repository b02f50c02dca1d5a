# Shared helpers for the infra scripts (sourced, not run).
# shellcheck shell=bash

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_ROOT="$(cd "$INFRA_DIR/.." && pwd)"

say() { printf '%s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# pid_alive PIDFILE: whether the process named in PIDFILE is running.
pid_alive() {
    local pid
    [ -f "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# stop_pidfile PIDFILE NAME: SIGTERM the process in PIDFILE, wait up to 10 s, then SIGKILL.
stop_pidfile() {
    local pidfile="$1" name="$2" pid
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        say "$name: not running"
        return 0
    fi
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name: pid $pid ignored SIGTERM for 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    say "$name: stopped (pid $pid)"
}

# wait_http URL SECONDS PIDFILE: wait until URL answers with any HTTP status (an auth error
# counts: the server is up), or fail when the time is up or the process died.
wait_http() {
    local url="$1" secs="$2" pidfile="$3" code deadline
    deadline=$(( $(date +%s) + secs ))
    while :; do
        code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null || true)"
        if [ -n "$code" ] && [ "$code" != "000" ]; then
            return 0
        fi
        pid_alive "$pidfile" || return 1
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# port_in_use PORT: whether something listens on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# print_s3_env PORT ACCESS SECRET REGION BUCKET
print_s3_env() {
    printf 'export AWS_ENDPOINT_URL=http://127.0.0.1:%s\n' "$1"
    printf 'export AWS_ACCESS_KEY_ID=%s\n' "$2"
    printf 'export AWS_SECRET_ACCESS_KEY=%s\n' "$3"
    printf 'export AWS_REGION=%s\n' "$4"
    printf 'export STRATA_S3_BUCKET=%s\n' "$5"
}

# usage: print the calling script's leading comment block.
usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
}

#!/usr/bin/env bash
# Bounded resources (issue 11): the rows of the issue's table, measured against one binary on
# the embedded default with a 512 MiB budget (--write-buffer-mb 256 --cache-memory-mb 256).
# Every server is started on a fresh data dir on loopback and stopped afterwards.
#
#   infra/bench-resources.sh [BIN]        BIN defaults to target/release/strata
#   DUR=30 OUT=/tmp/bench-resources infra/bench-resources.sh target/release/strata
#   ROWS="flood mix" infra/bench-resources.sh     only these rows
#   SERVER_ARGS="--compaction-memory-mb 64" infra/bench-resources.sh   extra server flags
#
# Rows (each prints the server's peak RSS, sampled by `strata bench --report-rss`):
#   batchget  one 1 MiB value named 1,000 times in one BatchGet
#   flood     64 clients writing 1 MiB values for DUR s (durable); then disk use, L0 files,
#             write stalls, and RSS after 20 s idle
#   flood+scan the same flood with 16 concurrent scans
#   scans     16 concurrent scans over 10,000 x 100 KiB values, no writes
#   mix       the scale-sheet mix (strata bench default), 16 clients, DUR s: p99 and max per op,
#             and every op over 100 ms with its start time (`strata bench --slow-ms`)
# The bench client is always this checkout's binary (BENCH, default BIN), so an older server
# binary can be measured with the same client.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/strata}"
BENCH="${BENCH:-$BIN}"
DUR="${DUR:-30}"
OUT="${OUT:-$(mktemp -d)}"
ROWS="${ROWS:-batchget flood flood+scan scans mix}"
want() { [[ " $ROWS " == *" $1 "* ]]; }
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SERVER_PID=""
start_server() {
    DATA="$(mktemp -d)"
    PORT="$(port)"
    MPORT="$(port)"
    "$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$MPORT" \
        --write-buffer-mb 256 --cache-memory-mb 256 ${SERVER_ARGS:-} "$@" >"$OUT/server-$PORT.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        grep -q "strata listening on" "$OUT/server-$PORT.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server did not start: $(tail -5 "$OUT/server-$PORT.log")" >&2
    exit 1
}
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 600); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    rm -rf "$DATA"
}
trap stop_server EXIT
rss_mb() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$SERVER_PID/status"; }
metric() { curl -sf "127.0.0.1:$MPORT/metrics" | awk -v m="$1" '$1==m {print $2}'; }
bench() { "$BENCH" bench --target "127.0.0.1:$PORT" --no-progress --report-rss "$SERVER_PID" "$@"; }
# Peak RSS of a run from its JSON, or the server's own high-water mark if the run failed.
peak() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rss"]["peak_bytes"]>>20)' "$1" 2>/dev/null ||
        awk '/VmHWM/ {print int($2/1024) " (VmHWM; the run failed)"}' "/proc/$SERVER_PID/status"
}

if want batchget; then
echo "== batchget (1,000 x one 1 MiB value in one BatchGet)"
start_server
bench --workload default --read-fraction 1 --batch-fraction 1 --batch-size 1000 --keys 1 \
    --value-size 1048576 --preload --clients 1 --ops 3 --json "$OUT/batchget.json" | tail -4 || true
echo "batchget: peak RSS $(peak "$OUT/batchget.json") MiB"
stop_server
fi

if want flood; then
echo "== flood (64 clients, 1 MiB durable puts, ${DUR} s)"
start_server
bench --workload put --value-size 1048576 --clients 64 --keys 3000 --duration "$DUR" \
    --json "$OUT/flood.json" | tail -4
sleep 20
echo "flood: peak RSS $(peak "$OUT/flood.json") MiB, idle RSS $(rss_mb) MiB, objects $(du -sm "$DATA/objects" | cut -f1) MiB" \
    "(live <= 3000 MiB), L0 files $(metric strata_l0_files), stall delays $(metric strata_write_stall_delays_total)," \
    "stops $(metric strata_write_stall_stops_total), refusals $(metric strata_write_stall_refusals_total)"
stop_server
fi

if want flood+scan; then
echo "== flood + 16 scans (${DUR} s)"
start_server
bench --workload put --value-size 1048576 --clients 64 --keys 3000 --duration "$DUR" \
    --json "$OUT/flood2.json" >/dev/null &
FLOOD=$!
sleep 2
bench --workload scan --no-preload --keys 3000 --clients 16 --duration "$((DUR - 4))" \
    --json "$OUT/flood-scans.json" | tail -4
wait "$FLOOD"
sleep 10
echo "flood+scan: peak RSS $(peak "$OUT/flood2.json") MiB, idle RSS $(rss_mb) MiB"
stop_server
fi

if want scans; then
echo "== 16 scans over 10,000 x 100 KiB values"
start_server
bench --workload scan --value-size 102400 --keys 10000 --clients 16 --duration 20 \
    --json "$OUT/scans.json" | tail -4
echo "scans: peak RSS $(peak "$OUT/scans.json") MiB"
stop_server
fi

if want mix; then
echo "== the scale-sheet mix, 16 clients, ${DUR} s"
start_server
bench --clients 16 --keys 20000 --duration "$DUR" --json "$OUT/mix.json" --slow-ms 100 \
    2>"$OUT/mix-slow.txt" | tail -12
echo "mix: peak RSS $(peak "$OUT/mix.json") MiB; $(grep -c '^SLOW' "$OUT/mix-slow.txt" || true) ops over 100 ms" \
    "(timeline in $OUT/mix-slow.txt, beside the server log $OUT/server-$PORT.log)"
grep '^SLOW' "$OUT/mix-slow.txt" | head -20 || true
stop_server
fi
echo "JSON reports and server logs in $OUT"

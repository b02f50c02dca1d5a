#!/usr/bin/env bash
# Strata side by side with SlateDB and the floor, in one run (issue 13).
#
#   infra/bench-compare.sh [OUT]            everything (default OUT: a new temp dir)
#   DUR=5 STORES=local infra/bench-compare.sh /tmp/cmp
#   WORKLOADS="put-1 put-64 ycsb-a" SYSTEMS="strata-embedded slatedb-1ms" infra/bench-compare.sh
#
# Systems (each on a fresh directory or S3 prefix per run):
#   strata-embedded  `strata bench --embedded DIR`: the engine in the bench process, no gRPC
#   strata-grpc      `strata serve` + `strata bench --target` (the server's RSS and CPU sampled)
#   slatedb-1ms      SlateDB 0.18 in-process (infra/bench-compare, its own crate), WAL flush 1 ms
#   slatedb-100ms    the same at SlateDB's default flush interval, 100 ms
#   floor            raw store PUT / ranged GET (`strata bench --embedded --workload
#                    store-put|store-get`) and the empty gRPC round trip (`--workload ping`)
# Stores: local (a directory; Strata fsyncs, object_store's LocalFileSystem under SlateDB does
# not) and s3 (infra/s3.sh's server on loopback). Every system gets the same cache (256 MiB
# memory, no disk tier) and write buffer (256 MiB).
#
# Settings: DUR seconds per run (2), KEYS preloaded keys for reads (10000), STORES ("local s3"),
# SYSTEMS, WORKLOADS (all below), S3_WORKLOADS (the subset run on s3), BIN (target/release/strata),
# PEER (target/peers/release/strata-bench-peers). Builds what is missing (release; the peer
# crate ~6 min the first time). Writes OUT/json/<store>/<system>/<workload>.json, logs, and
# the report of infra/bench-compare/report.py: OUT/compare.txt, OUT/compare.json, OUT/plots/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${1:-$(mktemp -d /tmp/bench-compare.XXXXXX)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DUR="${DUR:-2}"
KEYS="${KEYS:-10000}"
STORES="${STORES:-local s3}"
SYSTEMS="${SYSTEMS:-strata-embedded strata-grpc slatedb-1ms slatedb-100ms floor}"
ALL_WORKLOADS="put-1 put-64 get-1 get-uniform-64 get-zipfian-64 get-cold-16 scan-8 batch-16 mix-16 ycsb-a ycsb-b ycsb-c ycsb-d ycsb-e ycsb-f"
WORKLOADS="${WORKLOADS:-$ALL_WORKLOADS}"
S3_WORKLOADS="${S3_WORKLOADS:-put-1 put-64 get-1 get-uniform-64 get-cold-16 ycsb-a mix-16}"
BIN_FROM_ENV="${BIN:-}"
BIN="${BIN:-$ROOT/target/release/strata}"
PEER_FROM_ENV="${PEER:-}"
PEER="${PEER:-$ROOT/target/peers/release/strata-bench-peers}"
CACHE_MB=256
BUFFER_MB=256
has() { [[ " $1 " == *" $2 "* ]]; }
# No run may hang the whole comparison: each gets its duration plus time for preload and close.
LIMIT=$((DUR * 10 + 300))
say() { echo "[bench-compare] $*" >&2; }

if [ -z "$BIN_FROM_ENV" ]; then
    say "building strata (release) ..."
    cargo build --release --quiet -p strata
fi
if { has "$SYSTEMS" slatedb-1ms || has "$SYSTEMS" slatedb-100ms; } && [ -z "${PEER_FROM_ENV:-}" ]; then
    say "building the SlateDB peer (release; its own workspace and target dir) ..."
    cargo build --release --quiet --locked --manifest-path infra/bench-compare/Cargo.toml \
        --target-dir "$ROOT/target/peers"
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

S3_DIR=""
cleanup() {
    stop_server
    if [ -n "$S3_DIR" ]; then infra/s3.sh stop "$S3_DIR" >/dev/null 2>&1 || true; fi
}
SERVER_PID=""
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
trap cleanup EXIT
start_server() { # DIR PORT URL CACHE_MB LOG
    "$BIN" serve --data-dir "$1" --listen "127.0.0.1:$2" --object-store "$3" \
        --cache-memory-mb "$4" --cache-disk-mb 0 --write-buffer-mb $BUFFER_MB >"$5" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        grep -q "strata listening on" "$5" 2>/dev/null && return 0
        sleep 0.1
    done
    say "  server did not start: $(tail -2 "$5")"
    stop_server
    return 1
}

# Flags of one workload for strata bench and the peer (same generator, same flags).
# Sets CLIENTS, ARGS, and COLD (1 = the cache is too small to hold the data).
workload_args() {
    COLD=0
    case "$1" in
        put-1) CLIENTS=1; ARGS="--workload put" ;;
        put-64) CLIENTS=64; ARGS="--workload put" ;;
        get-1) CLIENTS=1; ARGS="--workload read --value-size 1024 --keys $KEYS" ;;
        get-uniform-64) CLIENTS=64; ARGS="--workload read --value-size 1024 --keys $KEYS" ;;
        get-zipfian-64) CLIENTS=64; ARGS="--workload read --value-size 1024 --keys $KEYS --distribution zipfian" ;;
        # 100 MB of values against a 4 MiB cache: nearly every read misses the cache.
        get-cold-16) CLIENTS=16; COLD=1; ARGS="--workload read --value-size 1024 --keys $((KEYS * 10))" ;;
        scan-8) CLIENTS=8; ARGS="--workload scan --value-size 1024 --keys $KEYS --scan-length 100" ;;
        batch-16) CLIENTS=16; ARGS="--workload default --read-fraction 0.5 --batch-fraction 1 --batch-size 16 --value-size 1024 --keys $KEYS" ;;
        mix-16) CLIENTS=16; ARGS="--workload default --keys 20000" ;;
        ycsb-*) CLIENTS=16; ARGS="--workload $1 --keys $KEYS" ;;
        *) say "unknown workload $1"; return 1 ;;
    esac
    ARGS="$ARGS --clients $CLIENTS --duration $DUR --seed 42 --no-progress"
}

# store_url STORE NAME: where one run keeps its data.
store_url() {
    case "$1" in
        local) echo "file://$OUT/runs/$2" ;;
        s3) echo "s3://${STRATA_S3_BUCKET}/$2" ;;
    esac
}

run_one() { # STORE SYSTEM WORKLOAD
    local store="$1" system="$2" w="$3"
    local json="$OUT/json/$store/$system/$w.json" log="$OUT/logs/$store-$system-$w.log"
    mkdir -p "$(dirname "$json")" "$OUT/logs"
    # A failed run must not leave an earlier run's result in a reused OUT.
    rm -f "$json"
    local name="$system-$w-$RANDOM"
    local url; url="$(store_url "$store" "$name")"
    local dir="$OUT/runs/$name-dir"
    local cache=$CACHE_MB
    workload_args "$w" || return 0
    [ "$COLD" = 1 ] && cache=4
    say "$store $system $w"
    # shellcheck disable=SC2086
    case "$system" in
        strata-embedded)
            timeout "$LIMIT" "$BIN" bench --embedded "$dir" --object-store "$url" --cache-memory-mb "$cache" \
                --write-buffer-mb $BUFFER_MB $ARGS --json "$json" >"$log" 2>&1 ;;
        slatedb-1ms|slatedb-100ms)
            local flush="${system#slatedb-}"; flush="${flush%ms}"
            timeout "$LIMIT" "$PEER" slatedb --store "$url" --flush-ms "$flush" --cache-memory-mb "$cache" \
                $ARGS --json "$json" >"$log" 2>&1 ;;
        strata-grpc)
            local p; p="$(port)"
            start_server "$dir" "$p" "$url" "$cache" "$log.server" || return 0
            local extra=""
            if [[ "$ARGS" == *"--workload read"* || "$ARGS" == *"--workload scan"* ]]; then
                # No flush RPC: load, then restart (a clean stop flushes the memtables), so
                # reads go to SSTs as in the in-process runs (which flush after the preload).
                local keys; keys="$(sed -n 's/.*--keys \([0-9]*\).*/\1/p' <<<"$ARGS")"
                timeout "$LIMIT" "$BIN" bench --target "127.0.0.1:$p" --workload load --keys "$keys" \
                    --value-size 1024 --clients 16 --no-progress >"$log.load" 2>&1 ||
                    say "  load failed: $(tail -1 "$log.load")"
                stop_server
                start_server "$dir" "$p" "$url" "$cache" "$log.server2" || return 0
                extra="--no-preload"
            fi
            timeout "$LIMIT" "$BIN" bench --target "127.0.0.1:$p" --report-rss "$SERVER_PID" $ARGS $extra \
                --json "$json" >"$log" 2>&1 || say "  failed: $(tail -1 "$log")"
            stop_server ;;
    esac || say "  failed: $(tail -1 "$log")"
    rm -rf "$dir" "$OUT/runs/$name"
}

run_floor() { # STORE
    local store="$1"
    mkdir -p "$OUT/json/$store/floor" "$OUT/logs"
    for c in 1 64; do
        for w in store-put store-get; do
            local name="floor-$w-$c-$RANDOM"
            rm -f "$OUT/json/$store/floor/$w-$c.json"
            say "$store floor $w-$c"
            timeout "$LIMIT" "$BIN" bench --embedded "$OUT/runs/$name-dir" --object-store "$(store_url "$store" "$name")" \
                --workload "$w" --clients "$c" --duration "$DUR" --no-progress \
                --json "$OUT/json/$store/floor/$w-$c.json" >"$OUT/logs/$store-floor-$w-$c.log" 2>&1 ||
                say "  failed: $(tail -1 "$OUT/logs/$store-floor-$w-$c.log")"
            rm -rf "$OUT/runs/$name-dir" "$OUT/runs/$name"
        done
        if [ "$store" = local ]; then
            # The empty round trip does not depend on the store: measured once.
            local p; p="$(port)"
            "$BIN" serve --data-dir "$OUT/runs/ping" --listen "127.0.0.1:$p" --cache-disk-mb 0 \
                >"$OUT/logs/ping-server.log" 2>&1 &
            SERVER_PID=$!
            for _ in $(seq 1 100); do
                grep -q "strata listening on" "$OUT/logs/ping-server.log" && break
                sleep 0.1
            done
            say "floor ping-$c"
            timeout "$LIMIT" "$BIN" bench --target "127.0.0.1:$p" --workload ping --clients "$c" --duration "$DUR" \
                --no-progress --report-rss "$SERVER_PID" --json "$OUT/json/$store/floor/ping-$c.json" \
                >"$OUT/logs/ping-$c.log" 2>&1 || say "  failed: $(tail -1 "$OUT/logs/ping-$c.log")"
            stop_server
            rm -rf "$OUT/runs/ping"
        fi
    done
}

started=$SECONDS
for store in $STORES; do
    if [ "$store" = s3 ]; then
        S3_DIR="$OUT/s3"
        if ! s3_env="$(infra/s3.sh start "$S3_DIR" 0)"; then
            say "the S3 test server did not start: skipping the s3 runs"
            S3_DIR=""
            continue
        fi
        eval "$s3_env"
        export AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION STRATA_S3_BUCKET
        list="$S3_WORKLOADS"
    else
        list="$WORKLOADS"
    fi
    has "$SYSTEMS" floor && run_floor "$store"
    for w in $list; do
        has "$WORKLOADS" "$w" || continue
        for system in $SYSTEMS; do
            [ "$system" = floor ] && continue
            run_one "$store" "$system" "$w"
        done
    done
    if [ "$store" = s3 ]; then
        infra/s3.sh stop "$S3_DIR" >/dev/null 2>&1 || true
        S3_DIR=""
    fi
done
say "runs took $((SECONDS - started)) s"
rm -rf "$OUT/runs"
# Plots need matplotlib: from the system, else a venv of our own under target/ (made once).
PY=python3
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    VENV="$ROOT/target/bench-venv"
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
        say "installing matplotlib into $VENV (for the plots) ..."
        { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet matplotlib; } >&2 ||
            say "could not install matplotlib: the report comes without plots"
    fi
    "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null && PY="$VENV/bin/python"
fi
"$PY" infra/bench-compare/report.py "$OUT" || say "report failed"
say "results in $OUT (compare.txt, compare.json, plots/)"

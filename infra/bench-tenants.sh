#!/usr/bin/env bash
# Tenant isolation (issue 14): the put latency of a calm tenant alone, beside a tenant held at
# its quota, and beside a tenant flooding 1 MiB writes with no quota; the server's peak RSS
# against its 512 MiB budget (--write-buffer-mb 256 --cache-memory-mb 256). One server, on
# loopback, with a tokens file made by `strata token create`; stopped at the end.
#
#   infra/bench-tenants.sh [BIN]          BIN defaults to target/release/strata
#   DUR=20 OUT=/tmp/bench-tenants infra/bench-tenants.sh
#   SERVER_ARGS="--tenant-max-in-flight-mb 4" infra/bench-tenants.sh    extra `strata serve` flags
#
# The calm tenant: 4 clients of 1 KiB durable puts. The flooding tenants: 64 clients of
# 1 MiB durable puts; "capped" has requests_per_sec = 100 and write_bytes_per_sec = 20 MiB/s
# (its clients wait the retry-after-ms they are given, as a well-behaved client does).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/strata}"
DUR="${DUR:-20}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK="$(mktemp -d)"
TOKENS="$WORK/tokens.toml"
CALM="$("$BIN" token create --tokens-file "$TOKENS" --namespace calm --rights read,write 2>/dev/null)"
FLOOD="$("$BIN" token create --tokens-file "$TOKENS" --namespace flood --rights read,write 2>/dev/null)"
CAPPED="$("$BIN" token create --tokens-file "$TOKENS" --namespace capped --rights read,write 2>/dev/null)"
cat >>"$TOKENS" <<EOF

[namespaces.capped]
requests_per_sec = 100
write_bytes_per_sec = 20971520
EOF

PORT="$(port)"
"$BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --tokens "$TOKENS" \
    --write-buffer-mb 256 --cache-memory-mb 256 --cache-disk-mb 0 ${SERVER_ARGS:-} >"$OUT/server.log" 2>&1 &
PID=$!
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap stop EXIT
for _ in $(seq 1 100); do
    grep -q "strata listening on" "$OUT/server.log" 2>/dev/null && break
    sleep 0.1
done

# bench TOKEN NAME ARGS...: one run of `strata bench` as that tenant, JSON to $OUT/NAME.json.
bench() {
    local token="$1" name="$2"
    shift 2
    STRATA_TOKEN="$token" "$BIN" bench --target "127.0.0.1:$PORT" --no-progress --no-preload \
        --workload put --duration "$DUR" --json "$OUT/$name.json" "$@" >"$OUT/$name.txt" 2>&1
}
calm() { bench "$CALM" "calm-$1" --clients 4 --value-size 1024; }
flood() { bench "$1" "$2" --clients 64 --value-size 1048576 --report-rss "$PID"; }

calm alone
flood "$CAPPED" capped &
F=$!
sleep 1
calm beside-capped
wait "$F" || true
flood "$FLOOD" flood &
F=$!
sleep 1
calm beside-flood
wait "$F" || true

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(n):
    with open(os.path.join(out, n + ".json")) as f:
        return json.load(f)
def put(r):
    o = r["ops"].get("put") or {}
    return o.get("latency_us") or {}
rows = []
for name in ["calm-alone", "calm-beside-capped", "calm-beside-flood"]:
    r = load(name)
    l = put(r)
    rows.append((name, r["total"]["ops"], l.get("p50"), l.get("p99"), l.get("max")))
print("| calm tenant (4 clients, 1 KiB puts) | ops | p50 µs | p99 µs | max µs |")
print("|---|---|---|---|---|")
for n, ops, p50, p99, mx in rows:
    print(f"| {n} | {ops} | {p50} | {p99} | {mx} |")
alone = rows[0][3] or 1
for n, _, _, p99, _ in rows[1:]:
    print(f"{n}: p99 {p99 / alone:.2f}x of alone")
for name in ["capped", "flood"]:
    r = load(name)
    rss = (r.get("rss") or {}).get("peak_bytes", 0) >> 20
    errs = r.get("errors") or {}
    print(f"{name} tenant (64 clients, 1 MiB puts): {r['total']['ops']} ok, errors {errs}, "
          f"server peak RSS {rss} MiB (budget 512 MiB + 256 MiB overhead = 768 MiB)")
PY

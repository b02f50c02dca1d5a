#!/usr/bin/env bash
# A/B of two strata binaries (e.g. glibc's malloc vs `--features mimalloc`), alternating, on
# fresh directories: in-process durable puts and gets, gets over gRPC, the mix over gRPC with
# the server's peak RSS. The bench client is always the first binary.
#
#   cp target/release/strata /tmp/strata-a
#   cargo build --release --features mimalloc && cp target/release/strata /tmp/strata-b
#   infra/bench-allocator-ab.sh /tmp/strata-a /tmp/strata-b [ROUNDS]
set -euo pipefail
A="$1"; B="$2"; ROUNDS="${3:-2}"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for round in $(seq 1 "$ROUNDS"); do
    for bin in "$A" "$B"; do
        D="$(mktemp -d)"
        put=$("$bin" bench --embedded "$D/a" --workload put --clients 64 --duration 2 --seed 42 --no-progress 2>/dev/null | awk '$1=="put"{print $3 " ops/s, p99 " $7 " us"}')
        get=$("$bin" bench --embedded "$D/b" --workload read --value-size 1024 --keys 10000 --clients 64 --duration 2 --seed 42 --no-progress 2>/dev/null | awk '$1=="get"{print $3 " ops/s"}')
        p="$(port)"
        "$bin" serve --data-dir "$D/s" --listen "127.0.0.1:$p" --cache-disk-mb 0 >"$D/log" 2>&1 &
        sp=$!
        for _ in $(seq 1 50); do grep -q "listening on" "$D/log" && break; sleep 0.1; done
        rget=$("$A" bench --target "127.0.0.1:$p" --workload read --value-size 1024 --keys 10000 --clients 64 --duration 2 --seed 42 --no-progress 2>/dev/null | awk '$1=="get"{print $3 " ops/s"}')
        mix=$("$A" bench --target "127.0.0.1:$p" --workload default --keys 20000 --clients 16 --duration 4 --seed 42 --no-progress --report-rss "$sp" 2>/dev/null | awk '/^total/{printf "%s ops/s, ", $8} /RSS/{print "peak RSS " $6 " MiB"}')
        kill "$sp"; wait "$sp" 2>/dev/null || true
        echo "round $round $(basename "$bin"): embedded put x64 $put | embedded get x64 $get | grpc get x64 $rget | grpc mix x16 $mix"
        rm -rf "$D"
    done
done

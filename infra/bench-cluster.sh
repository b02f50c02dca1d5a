#!/usr/bin/env bash
# Benchmark a local cluster: N nodes on loopback over infra/etcd.sh + infra/s3.sh, then
# `strata bench` (1 KiB durable puts with 64 clients, then the default mix) through all nodes,
# and the S3 PUTs per 1,000 writes from the nodes' /metrics.
#
#   infra/bench-cluster.sh [NODES] [PARTITIONS]      (defaults 3, 16; needs a release build)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
N="${1:-3}"
PARTS="${2:-16}"
S=target/release/strata
[ -x "$S" ] || die "build first: cargo build --release --bin strata"
WORK="$(mktemp -d /tmp/strata-bench-cluster.XXXXXX)"
cleanup() {
    pkill -f "strata serve --etcd .* --node-id bench-" 2>/dev/null || true
    sleep 1
    infra/etcd.sh stop "$WORK/etcd" >/dev/null 2>&1 || true
    infra/s3.sh stop "$WORK/s3" >/dev/null 2>&1 || true
}
trap cleanup EXIT
eval "$(infra/etcd.sh start "$WORK/etcd" 25790 25800 2>/dev/null)"
eval "$(infra/s3.sh start "$WORK/s3" 19600 2>/dev/null)"
targets=""
for i in $(seq 1 "$N"); do
    "$S" serve --etcd "$STRATA_ETCD" --object-store "s3://$STRATA_S3_BUCKET/bench" \
        --node-id "bench-$i" --listen "127.0.0.1:5200$i" --data-dir "$WORK/n$i" \
        --metrics-listen "127.0.0.1:5210$i" --cache-disk-mb 0 --partitions "$PARTS" \
        >"$WORK/n$i.log" 2>&1 &
    targets="$targets,127.0.0.1:5200$i"
done
targets="${targets#,}"
sleep 5
"$S" ctl status --etcd "$STRATA_ETCD" | sed -n '1,/^$/p;/^NODE/,/^$/p'
metric() {
    for i in $(seq 1 "$N"); do curl -s "127.0.0.1:5210$i/metrics"; done |
        awk -v k="$1" '$1==k{s+=$2} END{print s+0}'
}
p0=$(metric strata_objstore_puts_total)
w0=$(metric strata_writes_total)
"$S" bench --target "$targets" --workload put --value-size 1024 --clients 64 --duration 15 --no-progress
p1=$(metric strata_objstore_puts_total)
w1=$(metric strata_writes_total)
echo "S3 PUTs: $((p1 - p0)) for $((w1 - w0)) writes = $(((p1 - p0) * 1000 / (w1 - w0 + 1))) PUTs per 1,000 writes"
"$S" bench --target "$targets" --clients 16 --duration 15 --keys 20000 --no-progress

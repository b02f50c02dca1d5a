#!/usr/bin/env bash
# Compaction throughput of a compactor fleet: one node (8 partitions, in-process compaction off)
# on infra/etcd.sh + infra/s3.sh; WORKERS `strata compactor` processes register and are frozen
# (SIGSTOP; 10 min leases) while `strata bench` piles up L0 files, then resumed; prints how fast
# they drain it (MB read per second of wall time until every partition's L0 is below the
# trigger). Needs a release build.
#
#   VALUE=8192 DUR=60 infra/bench-fleet.sh WORKERS
set -euo pipefail
W="${1:-1}"
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
S=target/release/strata
[ -x "$S" ] || die "build first: cargo build --release --bin strata"
WORK="$(mktemp -d /tmp/strata-fleet.XXXXXX)"
cleanup() {
    pkill -f "strata serve --etcd .* --node-id fb-" 2>/dev/null || true
    pkill -CONT -f "strata compactor --etcd .* --worker-id fbw" 2>/dev/null || true; pkill -f "strata compactor --etcd .* --worker-id fbw" 2>/dev/null || true
    sleep 1
    infra/etcd.sh stop "$WORK/etcd" >/dev/null 2>&1 || true
    infra/s3.sh stop "$WORK/s3" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
eval "$(infra/etcd.sh start "$WORK/etcd" 25890 25900 2>/dev/null)"
eval "$(infra/s3.sh start "$WORK/s3" 19700 2>/dev/null)"
"$S" serve --etcd "$STRATA_ETCD" --object-store "s3://$STRATA_S3_BUCKET/fb" --node-id fb-1 \
    --listen 127.0.0.1:52301 --data-dir "$WORK/n1" --cache-disk-mb 0 --partitions 8 \
    --memtable-mb 2 --compaction false > "$WORK/n1.log" 2>&1 &
sleep 5
for i in $(seq 1 "$W"); do
    "$S" compactor --etcd "$STRATA_ETCD" --object-store "s3://$STRATA_S3_BUCKET/fb" --worker-id "fbw$i" \
        --lease-ttl-secs 600 > "$WORK/w$i.log" 2>&1 &
done
sleep 6
"$S" ctl status --etcd "$STRATA_ETCD" | grep -A3 COMPACTOR
# Freeze the workers (their leases last 10 min) while the load piles up L0 files.
pkill -STOP -f "strata compactor --etcd .* --worker-id fbw"
"$S" bench --target 127.0.0.1:52301 --workload put --value-size ${VALUE:-1024} --clients 64 --duration ${DUR:-40} --no-progress | grep -E "total|bytes"
sleep 3
"$S" ctl status --etcd "$STRATA_ETCD" --json > "$WORK/before.json"
python3 - "$WORK/before.json" <<'PY'
import json,sys
s=json.load(open(sys.argv[1]))
t=s["partition_table"]
print("before: L0 files", sum(p["l0_files"] for p in t), "SST MB %.1f" % (sum(p["sst_bytes"] for p in t)/1e6))
PY
start=$(date +%s.%N)
pkill -CONT -f "strata compactor --etcd .* --worker-id fbw"
# Drained: every partition's L0 below the trigger, and no new job for 3 s.
last=""; stable=0
while true; do
    sleep 1
    "$S" ctl status --etcd "$STRATA_ETCD" --json > "$WORK/s.json"
    line=$(python3 - "$WORK/s.json" <<'PY'
import json,sys
s=json.load(open(sys.argv[1]))
t=s["partition_table"]; c=s["compactors"]
print(max(p["l0_files"] for p in t), sum(x["jobs"] for x in c), sum(x["bytes_in"] for x in c), len(c))
PY
)
    read l0 jobs bytes n <<< "$line"
    if [ "$l0" -lt 4 ] && [ "$n" -ge 1 ] && [ "$jobs" = "$last" ]; then stable=$((stable+1)); else stable=0; fi
    last=$jobs
    if [ $stable -ge 3 ]; then break; fi
done
end=$(date +%s.%N)
python3 - "$WORK/s.json" "$start" "$end" "$W" <<'PY'
import json,sys
s=json.load(open(sys.argv[1])); start=float(sys.argv[2]); end=float(sys.argv[3])-3
c=s["compactors"]; b=sum(x["bytes_in"] for x in c); o=sum(x["bytes_out"] for x in c)
print(f"workers={sys.argv[4]} drained in {end-start:.1f} s: read {b/1e6:.1f} MB, wrote {o/1e6:.1f} MB -> {b/1e6/(end-start):.1f} MB/s aggregate; per worker (job time):",
      ", ".join(f'{x["id"]} {x["mb_per_sec"]:.1f} MB/s ({x["partitions"]} partitions)' for x in c))
PY

#!/usr/bin/env bash
# Write and space amplification of a compaction strategy under the default `strata bench` mix:
# an embedded release server (4 MiB memtables) on a scratch dir, the bench for SECS seconds,
# then the server's compaction metrics. Needs a release build and several GB of free disk
# (compacted inputs wait out the 5 min GC grace).
#
#   infra/bench-compaction.sh leveled|size-tiered|time-window [SUBCOMPACTIONS] [SECS]
#
# EXTRA="--gc-pending-budget-mb 2048" adds serve flags. Prints the peak size of the object
# directory (sampled every 2 s) and of the compacted inputs waiting for deletion.
set -u
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
S=$1; SUB=${2:-2}; SECS=${3:-90}
BIN="$REPO_ROOT/target/release/strata"
[ -x "$BIN" ] || die "build first: cargo build --release --bin strata"
D=$(mktemp -d /tmp/strata-bench-compaction.XXXXXX)
P=$((20000 + RANDOM % 10000)); M=$((P+1))
$BIN serve --data-dir $D --listen 127.0.0.1:$P --metrics-listen 127.0.0.1:$M --memtable-mb 4 \
  --compaction-strategy $S --subcompactions $SUB --cache-memory-mb 128 --cache-disk-mb 512 \
  ${EXTRA:-} > $D.log 2>&1 &
SP=$!
sleep 2
(
  peak=0; pend=0
  while kill -0 $SP 2>/dev/null; do
    b=$(du -sb "$D/objects" 2>/dev/null | cut -f1); b=${b:-0}
    [ "$b" -gt "$peak" ] && peak=$b
    q=$(curl -s http://127.0.0.1:$M/metrics | awk '/^strata_compaction_pending_deletion_bytes/ {s+=$2} END {printf "%.0f", s}')
    [ "${q:-0}" -gt "$pend" ] && pend=$q
    echo "$peak $pend" > $D.peak
    sleep 2
  done
) &
$BIN bench --target http://127.0.0.1:$P --duration $SECS > $D.bench 2>&1
sleep 5
curl -s http://127.0.0.1:$M/metrics > $D.metrics
kill $SP; wait $SP 2>/dev/null
rm -rf "$D/objects" "$D/cache"
echo "== $S sub=$SUB"
grep -E "ops/s|throughput|p50|writes" $D.bench | head -5
grep -E "^strata_flush_bytes_total|^strata_compaction_(bytes|l0|busy|jobs|budget)|^strata_write_amp|^strata_space_amp|^strata_sst_bytes" $D.metrics
read PEAK PEND < $D.peak
echo "peak object dir $((PEAK / 1048576)) MiB; peak compacted inputs awaiting deletion $((PEND / 1048576)) MiB"

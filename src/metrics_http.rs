//! `/metrics` in Prometheus text format, served on hyper (already in the tree through tonic).
//!
//! Two sources go into one page:
//! - the counters and gauges of the engine, the object store meter, the cache and the
//!   compactors, read from their atomics at scrape time (`render`, `render_compaction`);
//! - everything recorded through the `metrics` facade — latency histograms of RPCs by method
//!   and status code (`strata_rpc_duration_seconds`, compute's `connections.rs`), object-store
//!   requests by operation (`strata_objstore_request_duration_seconds`), commit group sizes,
//!   flush and compaction durations, write stalls by reason — rendered by the Prometheus
//!   recorder installed with [`install_recorder`].

use http_body_util::Full;
use hyper::body::Bytes as HyperBytes;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;
use strata_cache::BlockCache;
use strata_compactor::CompactorStats;
use strata_compute::{DbStats, EngineMetrics};
use strata_objstore::Metered;
use tokio::net::TcpListener;

/// Latency buckets, seconds: from a cached read to a stalled write.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
    5.0, 10.0,
];
/// Operations per commit group.
const GROUP_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// Bytes per commit group (WAL segment): 1 KiB to 8 MiB (`max_group_bytes`).
const GROUP_BYTES_BUCKETS: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 2097152.0, 4194304.0, 8388608.0,
];

/// Installs the process-wide Prometheus recorder behind the `metrics` facade and returns the
/// handle that renders it; `None` if a recorder was installed already (the first one keeps
/// recording). Histograms are exported with buckets (Prometheus histograms, so quantiles can
/// be aggregated across nodes).
pub fn install_recorder() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("strata_commit_group_ops".into()),
                GROUP_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("strata_commit_group_bytes".into()),
                GROUP_BYTES_BUCKETS,
            )
        });
    let handle = match builder.and_then(|b| b.install_recorder()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; histograms are not exported");
            return None;
        }
    };
    // Histograms keep their samples until upkeep folds them in: do it between scrapes too,
    // so memory stays bounded when no one scrapes.
    let h = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            h.run_upkeep();
        }
    });
    Some(handle)
}

/// Serves `/metrics` (and `/`) until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    source: StatsSource,
    meter: Metered,
    cache: BlockCache,
    recorder: Option<PrometheusHandle>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((sock, _)) = accepted else {
            continue;
        };
        let (source, meter, cache, recorder) = (
            source.clone(),
            meter.clone(),
            cache.clone(),
            recorder.clone(),
        );
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let ok =
                req.method() == hyper::Method::GET && matches!(req.uri().path(), "/metrics" | "/");
            let resp = if ok {
                let (m, st, compactions) = source();
                let mut body = render(&m, &st, &meter, &cache);
                render_compaction(&mut body, &st, &compactions);
                if let Some(r) = &recorder {
                    body.push_str(&r.render());
                }
                hyper::Response::builder()
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(HyperBytes::from(body)))
            } else {
                hyper::Response::builder()
                    .status(hyper::StatusCode::NOT_FOUND)
                    .body(Full::new(HyperBytes::new()))
            };
            std::future::ready(resp)
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(5))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
            // A scrape is one short request: bound the connection, keep-alive or not.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

/// The engine counters and state summary to export (one engine, or a node's partitions),
/// and the stats of the compactors running in the process, by partition.
pub type StatsSource = std::sync::Arc<
    dyn Fn() -> (
            std::sync::Arc<EngineMetrics>,
            DbStats,
            Vec<(u32, CompactorStats)>,
        ) + Send
        + Sync,
>;

pub fn render(m: &EngineMetrics, st: &DbStats, meter: &Metered, cache: &BlockCache) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    metric("strata_gets_total", "counter", "Keys read.", l(&m.gets));
    metric(
        "strata_writes_total",
        "counter",
        "Write ops applied.",
        l(&m.writes),
    );
    metric(
        "strata_wal_segments_total",
        "counter",
        "WAL segments put.",
        l(&m.wal_segments),
    );
    metric(
        "strata_wal_bytes_total",
        "counter",
        "WAL bytes put.",
        l(&m.wal_bytes),
    );
    metric(
        "strata_wal_put_failures_total",
        "counter",
        "Failed WAL segment puts (retried).",
        l(&m.wal_put_failures),
    );
    metric(
        "strata_flushes_total",
        "counter",
        "Memtable flushes.",
        l(&m.flushes),
    );
    metric(
        "strata_flush_bytes_total",
        "counter",
        "Bytes of flushed SSTs.",
        l(&m.flush_bytes),
    );
    for (name, help, v) in [
        (
            "strata_write_stall_delays_total",
            "Write batches delayed because L0 passed its slowdown limit.",
            &m.write_stall_delays,
        ),
        (
            "strata_write_stall_stops_total",
            "Write batches that waited because L0 reached its stop limit.",
            &m.write_stall_stops,
        ),
        (
            "strata_write_stall_refusals_total",
            "Write batches refused (RESOURCE_EXHAUSTED) after waiting out a write stall.",
            &m.write_stall_refusals,
        ),
        (
            "strata_write_stall_micros_total",
            "Time writes spent held back by write stalls, microseconds.",
            &m.write_stall_micros,
        ),
        (
            "strata_write_buffer_full_micros_total",
            "Time commit loops spent over --write-buffer-mb waiting for a flush, microseconds, summed over partitions (so its rate can pass 1 s/s); every writer of such a partition waits.",
            &m.write_buffer_full_micros,
        ),
        (
            "strata_connections_accepted_total",
            "Client connections accepted.",
            &m.connections_accepted,
        ),
        (
            "strata_connections_refused_total",
            "Connections closed at once because --max-connections were open.",
            &m.connections_refused,
        ),
        (
            "strata_connections_idle_closed_total",
            "Connections closed after --idle-timeout-secs without a request in flight.",
            &m.connections_idle_closed,
        ),
        (
            "strata_connections_handshake_timeouts_total",
            "Connections closed for not finishing the HTTP/2 handshake in time.",
            &m.connections_handshake_timeouts,
        ),
        (
            "strata_connections_over_share_closed_total",
            "Connections closed because their tenant held its --tenant-max-connections share.",
            &m.connections_over_share_closed,
        ),
    ] {
        metric(name, "counter", help, l(v));
    }
    metric(
        "strata_connections_open",
        "gauge",
        "Client connections open.",
        l(&m.connections_open),
    );
    metric(
        "strata_memtable_bytes",
        "gauge",
        "Bytes in memtables.",
        st.memtable_bytes,
    );
    metric("strata_l0_files", "gauge", "SSTs in L0.", st.l0_files);
    metric(
        "strata_sst_bytes",
        "gauge",
        "Bytes of live SSTs.",
        st.sst_bytes,
    );
    metric(
        "strata_manifest_version",
        "gauge",
        "Current manifest version.",
        st.manifest_version,
    );
    let c = meter.counts();
    metric(
        "strata_objstore_puts_total",
        "counter",
        "Object store PUT requests.",
        c.puts,
    );
    metric(
        "strata_objstore_gets_total",
        "counter",
        "Object store GET requests.",
        c.gets,
    );
    metric(
        "strata_objstore_lists_total",
        "counter",
        "Object store LIST requests.",
        c.lists,
    );
    metric(
        "strata_objstore_deletes_total",
        "counter",
        "Object store DELETE requests.",
        c.deletes,
    );
    metric(
        "strata_objstore_errors_total",
        "counter",
        "Failed object store requests.",
        c.errors,
    );
    metric(
        "strata_objstore_bytes_put_total",
        "counter",
        "Bytes sent to the object store.",
        c.bytes_put,
    );
    metric(
        "strata_objstore_bytes_got_total",
        "counter",
        "Bytes read from the object store.",
        c.bytes_got,
    );
    let cs = cache.stats();
    metric(
        "strata_cache_hits_total",
        "counter",
        "Block cache hits.",
        cs.hits,
    );
    metric(
        "strata_cache_misses_total",
        "counter",
        "Block cache misses.",
        cs.misses,
    );
    metric(
        "strata_cache_memory_bytes",
        "gauge",
        "Block cache memory in use.",
        cs.memory_used_bytes,
    );
    s
}

/// Compaction metrics, per partition compacted in this process (label `partition`), and the
/// space amplification of the engines served here.
pub fn render_compaction(s: &mut String, st: &DbStats, compactions: &[(u32, CompactorStats)]) {
    let space_amp = if st.last_level_bytes == 0 {
        0.0
    } else {
        st.sst_bytes as f64 / st.last_level_bytes as f64
    };
    let _ = writeln!(
        s,
        "# HELP strata_space_amplification SST bytes over bytes of the deepest non-empty level (0: nothing below L0).\n# TYPE strata_space_amplification gauge\nstrata_space_amplification {space_amp}"
    );
    type Field = fn(&CompactorStats) -> f64;
    let fields: [(&str, &str, &str, Field); 12] = [
        (
            "strata_tiered_files_total",
            "counter",
            "SSTs moved to the cold tier.",
            |c| c.tiered_files as f64,
        ),
        (
            "strata_tiered_bytes_total",
            "counter",
            "Bytes of SSTs moved to the cold tier.",
            |c| c.tiered_bytes as f64,
        ),
        (
            "strata_compaction_jobs_total",
            "counter",
            "Compaction jobs committed.",
            |c| c.jobs as f64,
        ),
        (
            "strata_compaction_bytes_read_total",
            "counter",
            "Bytes of SSTs read by compaction.",
            |c| c.bytes_in as f64,
        ),
        (
            "strata_compaction_bytes_written_total",
            "counter",
            "Bytes of SSTs written by compaction.",
            |c| c.bytes_out as f64,
        ),
        (
            "strata_compaction_l0_bytes_total",
            "counter",
            "Bytes of L0 SSTs compacted (about the bytes flushed).",
            |c| c.l0_bytes_in as f64,
        ),
        (
            "strata_compaction_busy_seconds_total",
            "counter",
            "Time spent in jobs that merged data.",
            |c| c.busy_millis as f64 / 1e3,
        ),
        (
            "strata_compaction_expired_files_dropped_total",
            "counter",
            "SSTs dropped whole, unread, because all their values had expired.",
            |c| c.expired_files_dropped as f64,
        ),
        (
            "strata_compaction_pending_deletions",
            "gauge",
            "Compacted inputs waiting for their grace period.",
            |c| c.pending_deletions as f64,
        ),
        (
            "strata_compaction_pending_deletion_bytes",
            "gauge",
            "Bytes of compacted inputs waiting for their grace period.",
            |c| c.pending_deletion_bytes as f64,
        ),
        (
            "strata_compaction_budget_pauses_total",
            "counter",
            "Jobs held back because compacted inputs awaiting deletion exceeded --gc-pending-budget-mb.",
            |c| c.budget_pauses as f64,
        ),
        (
            "strata_write_amplification",
            "gauge",
            "Bytes flushed and compacted over bytes flushed (0: no L0 compaction yet).",
            |c| c.write_amplification,
        ),
    ];
    for (name, kind, help, get) in fields {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (p, c) in compactions {
            let _ = writeln!(s, "{name}{{partition=\"{p}\"}} {}", get(c));
        }
    }
}

//! Per-operation recording (HDR histograms in microseconds), merging across
//! clients, and the report: a text table and a JSON document.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::workload::OpKind;

/// Highest latency tracked precisely (one hour, in µs); larger ones saturate.
const MAX_TRACKED_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant digits; the bounds are constants, so this
    // cannot fail.
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("valid histogram bounds")
}

/// What one client saw for one operation kind.
#[derive(Debug, Clone)]
pub struct OpStats {
    hist: Histogram<u64>,
    /// Successful requests.
    pub count: u64,
    /// Keys touched by successful requests (1 for single ops, batch size for
    /// batches, entries returned for scans).
    pub items: u64,
    /// Reads answered with found=false (per key for batches), deletes of absent keys.
    pub not_found: u64,
    /// Failed requests by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// Key + value bytes sent in writes.
    pub bytes_written: u64,
    /// Key + value bytes received in reads (found entries only).
    pub bytes_read: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        Self {
            hist: new_histogram(),
            count: 0,
            items: 0,
            not_found: 0,
            errors: BTreeMap::new(),
            bytes_written: 0,
            bytes_read: 0,
        }
    }
}

impl OpStats {
    fn merge(&mut self, other: &OpStats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.count += other.count;
        self.items += other.items;
        self.not_found += other.not_found;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        self.bytes_written += other.bytes_written;
        self.bytes_read += other.bytes_read;
    }

    /// Failed requests of every code.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The result of one successful request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub items: u64,
    pub not_found: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
}

/// Per-kind stats of one client (or, merged, of the run).
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    ops: [OpStats; OpKind::COUNT],
}

impl Recorder {
    /// Records a success taking `latency`.
    pub fn record_ok(&mut self, kind: OpKind, latency: Duration, o: Outcome) {
        let s = &mut self.ops[kind.index()];
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        s.hist.saturating_record(us);
        s.count += 1;
        s.items += o.items;
        s.not_found += o.not_found;
        s.bytes_written += o.bytes_written;
        s.bytes_read += o.bytes_read;
    }

    /// Records a failure with gRPC code name `code`.
    pub fn record_err(&mut self, kind: OpKind, code: &str) {
        *self.ops[kind.index()]
            .errors
            .entry(code.to_string())
            .or_default() += 1;
    }

    /// Adds another recorder's counts.
    pub fn merge(&mut self, other: &Recorder) {
        for (a, b) in self.ops.iter_mut().zip(other.ops.iter()) {
            a.merge(b);
        }
    }

    /// Stats of one kind.
    pub fn get(&self, kind: OpKind) -> &OpStats {
        &self.ops[kind.index()]
    }

    /// Summarizes the run over `elapsed`.
    pub fn summarize(&self, elapsed: Duration) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut ops = BTreeMap::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut total = Totals::default();
        for kind in OpKind::ALL {
            let s = self.get(kind);
            for (code, n) in &s.errors {
                *errors.entry(code.clone()).or_default() += n;
            }
            total.ops += s.count;
            total.errors += s.error_count();
            total.bytes_written += s.bytes_written;
            total.bytes_read += s.bytes_read;
            if kind == OpKind::Scan {
                total.keys_scanned = s.items;
            }
            ops.insert(kind.name(), op_summary(s, secs));
        }
        total.ops_per_s = total.ops as f64 / secs;
        total.mb_written_per_s = total.bytes_written as f64 / 1e6 / secs;
        total.mb_read_per_s = total.bytes_read as f64 / 1e6 / secs;
        total.scanned_keys_per_s = total.keys_scanned as f64 / secs;
        Summary {
            elapsed_s: secs,
            total,
            ops,
            errors,
        }
    }
}

fn op_summary(s: &OpStats, secs: f64) -> OpSummary {
    let h = &s.hist;
    let latency_us = (s.count > 0).then(|| Latency {
        min: h.min(),
        mean: (h.mean() * 10.0).round() / 10.0,
        p50: h.value_at_quantile(0.50),
        p95: h.value_at_quantile(0.95),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    });
    OpSummary {
        count: s.count,
        ops_per_s: s.count as f64 / secs,
        items: s.items,
        items_per_s: s.items as f64 / secs,
        not_found: s.not_found,
        errors: s.error_count(),
        bytes_written: s.bytes_written,
        bytes_read: s.bytes_read,
        latency_us,
        curve_us: if s.count > 0 {
            CURVE_QUANTILES
                .iter()
                .map(|&q| (q, h.value_at_quantile(q)))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// One operation kind over the run.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub count: u64,
    pub ops_per_s: f64,
    pub items: u64,
    pub items_per_s: f64,
    pub not_found: u64,
    pub errors: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Absent when no request of this kind succeeded.
    pub latency_us: Option<Latency>,
    /// The latency distribution, `(quantile, µs)` at [`CURVE_QUANTILES`] (for plots); empty
    /// when no request of this kind succeeded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub curve_us: Vec<(f64, u64)>,
}

/// Quantiles of the latency curves in the JSON report.
pub const CURVE_QUANTILES: [f64; 17] = [
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// All kinds together.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub ops: u64,
    pub ops_per_s: f64,
    pub errors: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub mb_written_per_s: f64,
    pub mb_read_per_s: f64,
    pub keys_scanned: u64,
    pub scanned_keys_per_s: f64,
}

/// The measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub elapsed_s: f64,
    pub total: Totals,
    /// Every kind, always present (count 0 when the workload has none).
    pub ops: BTreeMap<&'static str, OpSummary>,
    /// Failed requests by gRPC code name, all kinds together.
    pub errors: BTreeMap<String, u64>,
}

/// The preload phase, when there was one.
#[derive(Debug, Clone, Serialize)]
pub struct PreloadSummary {
    pub keys: u64,
    pub elapsed_s: f64,
    pub keys_per_s: f64,
    pub bytes_written: u64,
    pub mb_per_s: f64,
}

/// The whole JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: serde_json::Value,
    pub preload: Option<PreloadSummary>,
    /// The server's resident memory during the run (`--report-rss`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss: Option<super::rss::RssReport>,
    /// Requests completed per interval of the measured phase: `(ms since the start, requests
    /// in the interval ending then)`, every 250 ms (for throughput-over-time plots).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<(u64, u64)>,
    /// Object-store requests made during the measured phase, by kind (`--embedded` only: the
    /// store is in this process), for the cost figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_requests: Option<serde_json::Value>,
    #[serde(flatten)]
    pub summary: Summary,
}

impl Summary {
    /// The human table: one row per kind that ran, then totals and errors.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<17} {:>10} {:>11} {:>11} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>8}",
            "op",
            "count",
            "ops/s",
            "keys/s",
            "p50(us)",
            "p95(us)",
            "p99(us)",
            "p99.9(us)",
            "max(us)",
            "notfound",
            "errors"
        );
        for kind in OpKind::ALL {
            let Some(s) = self.ops.get(kind.name()) else {
                continue;
            };
            if s.count == 0 && s.errors == 0 {
                continue;
            }
            let lat = |f: fn(&Latency) -> u64| {
                s.latency_us
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |l| f(l).to_string())
            };
            let _ = writeln!(
                out,
                "{:<17} {:>10} {:>11.1} {:>11.1} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>8}",
                kind.name(),
                s.count,
                s.ops_per_s,
                s.items_per_s,
                lat(|l| l.p50),
                lat(|l| l.p95),
                lat(|l| l.p99),
                lat(|l| l.p999),
                lat(|l| l.max),
                s.not_found,
                s.errors
            );
        }
        let t = &self.total;
        let _ = writeln!(
            out,
            "total: {} ops in {:.2} s = {:.1} ops/s, {} errors",
            t.ops, self.elapsed_s, t.ops_per_s, t.errors
        );
        let _ = writeln!(
            out,
            "bytes: written {} ({:.2} MB/s), read {} ({:.2} MB/s)",
            human_bytes(t.bytes_written),
            t.mb_written_per_s,
            human_bytes(t.bytes_read),
            t.mb_read_per_s
        );
        if t.keys_scanned > 0 {
            let _ = writeln!(
                out,
                "scanned: {} keys = {:.1} keys/s",
                t.keys_scanned, t.scanned_keys_per_s
            );
        }
        if !self.errors.is_empty() {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect();
            let _ = writeln!(out, "errors by code: {}", list.join(", "));
        }
        out
    }
}

/// `1234567` -> `1.23 MB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_recorder() -> Recorder {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 1..=1000u64 {
            a.record_ok(
                OpKind::Get,
                Duration::from_micros(i),
                Outcome {
                    items: 1,
                    not_found: u64::from(i % 10 == 0),
                    bytes_read: 100,
                    ..Outcome::default()
                },
            );
        }
        b.record_ok(
            OpKind::BatchWrite,
            Duration::from_millis(3),
            Outcome {
                items: 16,
                bytes_written: 16_000,
                ..Outcome::default()
            },
        );
        b.record_ok(
            OpKind::Scan,
            Duration::from_nanos(10),
            Outcome {
                items: 100,
                bytes_read: 5_000,
                ..Outcome::default()
            },
        );
        b.record_err(OpKind::Put, "Unavailable");
        b.record_err(OpKind::Get, "Unavailable");
        b.record_err(OpKind::Get, "DeadlineExceeded");
        a.merge(&b);
        a
    }

    #[test]
    fn percentiles_and_totals() {
        let r = sample_recorder();
        let s = r.summarize(Duration::from_secs(2));
        let get = &s.ops["get"];
        assert_eq!(get.count, 1000);
        assert_eq!(get.not_found, 100);
        assert_eq!(get.errors, 2);
        assert!((get.ops_per_s - 500.0).abs() < 1e-9);
        let l = get.latency_us.as_ref().expect("latency");
        assert!((499..=501).contains(&l.p50), "{l:?}");
        assert!((949..=951).contains(&l.p95), "{l:?}");
        assert!((989..=991).contains(&l.p99), "{l:?}");
        assert!((998..=1000).contains(&l.p999), "{l:?}");
        assert_eq!(l.min, 1);
        // Sub-microsecond latencies are recorded as 1 µs.
        assert_eq!(s.ops["scan"].latency_us.as_ref().map(|l| l.max), Some(1));
        assert_eq!(s.total.ops, 1002);
        assert_eq!(s.total.errors, 3);
        assert_eq!(s.total.bytes_written, 16_000);
        assert_eq!(s.total.bytes_read, 105_000);
        assert_eq!(s.total.keys_scanned, 100);
        assert_eq!(s.errors["Unavailable"], 2);
        assert!(s.ops["put"].latency_us.is_none());
    }

    #[test]
    fn json_shape() {
        let r = sample_recorder();
        let report = Report {
            config: serde_json::json!({"workload": "default", "clients": 16}),
            preload: None,
            rss: None,
            timeline: vec![(250, 10)],
            store_requests: None,
            summary: r.summarize(Duration::from_secs(1)),
        };
        let v = serde_json::to_value(&report).expect("serializes");
        assert_eq!(v["timeline"][0][1], 10);
        assert!(v.get("store_requests").is_none());
        for key in ["config", "preload", "elapsed_s", "total", "ops", "errors"] {
            assert!(v.get(key).is_some(), "missing {key}: {v}");
        }
        let ops = v["ops"].as_object().expect("ops object");
        assert_eq!(ops.len(), OpKind::COUNT);
        for kind in OpKind::ALL {
            let o = &ops[kind.name()];
            for key in [
                "count",
                "ops_per_s",
                "items_per_s",
                "not_found",
                "errors",
                "latency_us",
            ] {
                assert!(o.get(key).is_some(), "{} missing {key}", kind.name());
            }
        }
        for key in ["p50", "p95", "p99", "p999", "max", "mean", "min"] {
            assert!(v["ops"]["get"]["latency_us"][key].is_number(), "{key}");
        }
        assert!(v["ops"]["delete"]["latency_us"].is_null());
        assert_eq!(v["total"]["ops"], 1002);
        assert!(v["total"]["mb_read_per_s"].is_number());
        assert_eq!(v["errors"]["DeadlineExceeded"], 1);
        assert_eq!(v["config"]["clients"], 16);
    }

    #[test]
    fn table_lists_ran_kinds_only() {
        let t = sample_recorder().summarize(Duration::from_secs(1)).table();
        assert!(t.contains("p99.9(us)"));
        assert!(t.lines().any(|l| l.starts_with("get ")));
        assert!(t.lines().any(|l| l.starts_with("batch_write ")));
        assert!(
            t.lines().any(|l| l.starts_with("put ")),
            "errors-only kinds are listed"
        );
        assert!(!t.lines().any(|l| l.starts_with("delete ")));
        assert!(t.contains("errors by code: DeadlineExceeded=1, Unavailable=2"));
        assert!(t.contains("scanned: 100 keys"));
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_234_567), "1.23 MB");
    }
}

//! `/metrics` against the real binary: the counters of before, and the histograms recorded
//! through the `metrics` facade — RPC latency by method and status code, object-store
//! requests by operation, commit group sizes — in Prometheus text, served on hyper.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use std::time::Duration;
use strata_testkit::kv::{put, put_req};
use strata_testkit::{Server, ServerOpts};

/// The value of the series `name{…}` whose labels include every `labels` pair.
fn series(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let labelled = rest.strip_prefix('{')?.strip_suffix('}')?;
        let all = labels
            .iter()
            .all(|(k, v)| labelled.split(',').any(|p| p == format!("{k}=\"{v}\"")));
        if all {
            value.parse().ok()
        } else {
            None
        }
    })
}

#[tokio::test]
async fn metrics_export_rpc_latency_by_method_and_code_and_store_latency_by_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start_with(
        dir.path(),
        ServerOpts {
            extra_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
            ..Default::default()
        },
    );
    let mut c = s.client().await;
    for i in 0..5 {
        put(&mut c, format!("k{i}"), "v").await;
    }
    let refused = c.put(put_req("", "no key")).await;
    assert_eq!(
        refused.expect_err("an empty key is refused").code(),
        tonic::Code::InvalidArgument
    );
    // The error's timer records when its response ends, a moment after the client has it.
    let mut page = String::new();
    for _ in 0..50 {
        page = s.metrics_text();
        if series(
            &page,
            "strata_rpc_duration_seconds_count",
            &[("rpc", "KV/Put"), ("code", "INVALID_ARGUMENT")],
        )
        .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = series(
        &page,
        "strata_rpc_duration_seconds_count",
        &[("rpc", "KV/Put"), ("code", "OK")],
    );
    assert!(ok.is_some_and(|n| n >= 5.0), "{ok:?} in:\n{page}");
    let bad = series(
        &page,
        "strata_rpc_duration_seconds_count",
        &[("rpc", "KV/Put"), ("code", "INVALID_ARGUMENT")],
    );
    assert_eq!(bad, Some(1.0), "in:\n{page}");
    // Buckets, so quantiles aggregate across nodes: a put is faster than 10 s.
    let under_10s = series(
        &page,
        "strata_rpc_duration_seconds_bucket",
        &[("rpc", "KV/Put"), ("code", "OK"), ("le", "10")],
    );
    assert!(under_10s.is_some_and(|n| n >= 5.0), "in:\n{page}");
    // Each durable put is a WAL PUT on the object store, in a commit group of at least one op.
    let store_puts = series(
        &page,
        "strata_objstore_request_duration_seconds_count",
        &[("op", "put"), ("outcome", "ok")],
    );
    assert!(store_puts.is_some_and(|n| n >= 5.0), "in:\n{page}");
    assert!(page.contains("strata_commit_group_ops_bucket"), "{page}");
    assert!(page.contains("strata_commit_group_bytes_bucket"), "{page}");
    assert!(
        page.contains("strata_write_buffer_full_micros_total"),
        "{page}"
    );
    // The counters of before are still there.
    assert!(s.metric("strata_writes_total") >= 5);
}

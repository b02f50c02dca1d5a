//! `strata bench` against the real binary: the engine in-process (`--embedded`) runs a YCSB
//! workload and reports it as JSON; it refuses a store that already holds a keyspace (it would
//! fence the server running on it) unless told it is a previous bench run's; the store floor
//! deletes what it wrote; the gRPC target runs YCSB F and the empty round trip.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use std::path::Path;
use std::process::Output;
use strata_testkit::kv::{get, put};
use strata_testkit::Server;

fn bench(args: &[&str]) -> Output {
    std::process::Command::new(strata_testkit::bin())
        .arg("bench")
        .args(["--no-progress", "--seed", "7"])
        .args(args)
        .output()
        .expect("runs strata bench")
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("the JSON report")).expect("parses")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn embedded_bench_runs_ycsb_d_and_refuses_a_used_store_unless_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("engine");
    let json = dir.path().join("d.json");
    let data_s = data.to_str().unwrap();
    let json_s = json.to_str().unwrap();
    let common = [
        "--workload",
        "ycsb-d",
        "--keys",
        "200",
        "--ops",
        "400",
        "--clients",
        "4",
    ];
    let first = bench(&[&["--embedded", data_s, "--json", json_s][..], &common].concat());
    assert!(first.status.success(), "first run: {}", stderr(&first));
    let r = report(&json);
    assert_eq!(r["config"]["workload"], "ycsb-d");
    assert_eq!(r["config"]["distribution"], "latest");
    assert_eq!(r["total"]["ops"], 400);
    assert_eq!(r["total"]["errors"], 0);
    let gets = r["ops"]["get"]["count"].as_u64().unwrap();
    let inserts = r["ops"]["insert"]["count"].as_u64().unwrap();
    assert_eq!(gets + inserts, 400);
    assert!(
        gets > inserts && inserts > 0,
        "95/5: {gets} gets, {inserts} inserts"
    );
    // The preload wrote every key and reads count back from acknowledged inserts.
    assert_eq!(r["ops"]["get"]["not_found"], 0);
    assert!(r["store_requests"]["puts"].as_u64().unwrap() > 0);
    assert!(!r["ops"]["get"]["curve_us"].as_array().unwrap().is_empty());

    // The same store again: refused (it holds a keyspace), naming the way out.
    let again = bench(&[&["--embedded", data_s][..], &common].concat());
    assert!(!again.status.success(), "a used store must be refused");
    assert!(
        stderr(&again).contains("--embedded-reuse"),
        "{}",
        stderr(&again)
    );
    let reuse = bench(&[&["--embedded", data_s, "--embedded-reuse"][..], &common].concat());
    assert!(
        reuse.status.success(),
        "with --embedded-reuse: {}",
        stderr(&reuse)
    );
}

#[tokio::test]
async fn embedded_bench_leaves_a_running_servers_store_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let mut c = s.client().await;
    put(&mut c, "mine", "kept").await;
    let data = s.data_dir.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        bench(&[
            "--embedded",
            &data,
            "--workload",
            "put",
            "--ops",
            "10",
            "--keys",
            "10",
        ])
    })
    .await
    .unwrap();
    assert!(
        !out.status.success(),
        "the bench must not open a server's store"
    );
    // Not fenced: the server still takes writes, and nothing of the bench's is there.
    put(&mut c, "after", "ok").await;
    let mine = get(&mut c, "mine").await;
    assert!(mine.found && mine.value == "kept", "{mine:?}");
    let bench_key = format!("key{:0>47}", 0);
    assert!(
        !get(&mut c, bench_key).await.found,
        "a bench key landed in the server's keyspace"
    );
}

#[test]
fn the_store_floor_deletes_what_it_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("floor");
    let json = dir.path().join("f.json");
    let out = bench(&[
        "--embedded",
        data.to_str().unwrap(),
        "--workload",
        "store-put",
        "--ops",
        "50",
        "--clients",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(&json);
    assert_eq!(r["ops"]["floor"]["count"], 50);
    assert_eq!(r["store_requests"]["puts"], 50);
    assert_eq!(r["total"]["bytes_written"], 50 * 1024);
    let left = walk(&data);
    assert!(left.is_empty(), "objects left behind: {left:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn grpc_bench_runs_ycsb_f_and_the_empty_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let json = dir.path().join("f.json");
    let (addr, json_s) = (s.addr.clone(), json.to_str().unwrap().to_string());
    let out = tokio::task::spawn_blocking(move || {
        let f = bench(&[
            "--target",
            &addr,
            "--workload",
            "ycsb-f",
            "--keys",
            "100",
            "--ops",
            "200",
            "--clients",
            "2",
            "--json",
            &json_s,
        ]);
        let ping = bench(&["--target", &addr, "--workload", "ping", "--ops", "50"]);
        (f, ping)
    })
    .await
    .unwrap();
    assert!(out.0.status.success(), "ycsb-f: {}", stderr(&out.0));
    assert!(out.1.status.success(), "ping: {}", stderr(&out.1));
    let r = report(&json);
    let reads = r["ops"]["get"]["count"].as_u64().unwrap();
    let rmw = r["ops"]["read_modify_write"]["count"].as_u64().unwrap();
    assert_eq!(reads + rmw, 200);
    assert!(
        rmw > 50 && reads > 50,
        "50/50: {reads} reads, {rmw} read-modify-writes"
    );
    assert_eq!(r["total"]["errors"], 0);
}

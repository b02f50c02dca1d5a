//! `strata export` writes a consistent snapshot as Parquet that pyarrow and DuckDB read back
//! exactly: every live key with its value and version (including writes still only in the
//! WAL of a `kill -9`ed server), nothing deleted or expired; and an incremental export holds
//! exactly what changed, deletions flagged.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use strata_compute::pb;
use strata_testkit::kv::Kv;
use strata_testkit::{bin, Server, ServerOpts};

/// hex(key) -> (value, version, deleted, expiry window [lo, hi] in ms)
type Model = BTreeMap<String, (Vec<u8>, u64, bool, Option<(u64, u64)>)>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write_expected(path: &Path, m: &Model) {
    let obj: serde_json::Map<String, serde_json::Value> = m
        .iter()
        .map(|(k, (v, ver, del, exp))| {
            let mut o = serde_json::json!({"value": hex(v), "version": ver, "deleted": del});
            match exp {
                Some((lo, hi)) => o["expires_between"] = serde_json::json!([lo, hi]),
                // Keys without a TTL must export a null expiry.
                None if !del => o["expires_at"] = serde_json::Value::Null,
                None => {}
            }
            (k.clone(), o)
        })
        .collect();
    std::fs::write(path, serde_json::to_vec(&obj).expect("json")).expect("write expected");
}

fn export(args: &[&str]) -> String {
    let out = std::process::Command::new(bin())
        .arg("export")
        .args(args)
        .arg("--no-progress")
        .output()
        .expect("run strata export");
    assert!(
        out.status.success(),
        "strata export {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both readers must see exactly `m`. Needs python3 with pyarrow and duckdb
/// (`infra/setup.sh` installs them).
fn check(dir: &Path, m: &Model) {
    let expected = dir.with_extension("expected.json");
    write_expected(&expected, m);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/check_export.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(dir)
        .arg(&expected)
        .output()
        .expect("run python3 (infra/setup.sh installs pyarrow and duckdb)");
    assert!(
        out.status.success(),
        "the export does not read back as expected: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

async fn put(kv: &mut Kv, key: &[u8], value: &[u8], ttl_ms: u64) -> u64 {
    kv.put(pb::PutRequest {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        ttl_ms,
        ..Default::default()
    })
    .await
    .expect("put")
    .into_inner()
    .version
}

async fn delete(kv: &mut Kv, key: &[u8]) -> u64 {
    kv.delete(pb::DeleteRequest {
        key: Bytes::copy_from_slice(key),
        ..Default::default()
    })
    .await
    .expect("delete")
    .into_inner()
    .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_reads_back_in_pyarrow_and_duckdb_and_increments_apply() {
    let data = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_with(
        data.path(),
        ServerOpts {
            extra_args: vec!["--memtable-mb".into(), "1".into()],
            ..Default::default()
        },
    );
    let mut kv = server.client().await;
    let mut live: Model = BTreeMap::new();
    // Enough to flush a few memtables (SSTs), then a tail that stays in the WAL.
    for i in 0..3000u32 {
        let k = format!("user:{i:05}");
        let v = format!("{i}-{}", "x".repeat((i as usize * 37) % 900));
        let ver = put(&mut kv, k.as_bytes(), v.as_bytes(), 0).await;
        live.insert(hex(k.as_bytes()), (v.into_bytes(), ver, false, None));
    }
    // Overwrites, deletes, binary keys and values, a live TTL and an expired one.
    for i in (0..3000u32).step_by(7) {
        let k = format!("user:{i:05}");
        let v = format!("new-{i}");
        let ver = put(&mut kv, k.as_bytes(), v.as_bytes(), 0).await;
        live.insert(hex(k.as_bytes()), (v.into_bytes(), ver, false, None));
    }
    for i in (0..3000u32).step_by(11) {
        let k = format!("user:{i:05}");
        delete(&mut kv, k.as_bytes()).await;
        live.remove(&hex(k.as_bytes()));
    }
    let bin_key = [0u8, 255, 1, 254, 0];
    let bin_val: Vec<u8> = (0..=255u8).collect();
    let ver = put(&mut kv, &bin_key, &bin_val, 0).await;
    live.insert(hex(&bin_key), (bin_val, ver, false, None));
    // The server stamps "now + ttl": between our clock's readings around the put.
    let lo = strata_manifest::now_ms() + 3_600_000;
    let ver = put(&mut kv, b"ttl:long", b"lives", 3_600_000).await;
    let hi = strata_manifest::now_ms() + 3_600_000;
    put(&mut kv, b"ttl:short", b"gone", 1).await;
    live.insert(
        hex(b"ttl:long"),
        (b"lives".to_vec(), ver, false, Some((lo, hi))),
    );
    // Crash: what was acknowledged is in SSTs or only in the WAL.
    server.kill9();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let full = out.path().join("full");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let summary = export(&[
        "--data-dir",
        data_dir,
        "--to",
        &format!("file://{}", full.display()),
    ]);
    println!("{summary}");
    check(&full, &live);
    // A second export into the same place is refused (readers of `*.parquet` would mix them).
    let again = std::process::Command::new(bin())
        .args(["export", "--data-dir", data_dir, "--no-progress", "--to"])
        .arg(format!("file://{}", full.display()))
        .output()
        .expect("run strata export");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // Incremental: changes after the first export, read from a restarted server.
    let server = Server::start_with(
        data.path(),
        ServerOpts {
            extra_args: vec!["--memtable-mb".into(), "1".into()],
            ..Default::default()
        },
    );
    let mut kv = server.client().await;
    let mut changes: Model = BTreeMap::new();
    for i in (0..3000u32).step_by(13) {
        let k = format!("user:{i:05}");
        let v = format!("changed-{i}");
        let ver = put(&mut kv, k.as_bytes(), v.as_bytes(), 0).await;
        changes.insert(hex(k.as_bytes()), (v.into_bytes(), ver, false, None));
    }
    for i in (1..3000u32).step_by(17) {
        let k = format!("user:{i:05}");
        if live.contains_key(&hex(k.as_bytes())) {
            let ver = delete(&mut kv, k.as_bytes()).await;
            changes.insert(hex(k.as_bytes()), (Vec::new(), ver, true, None));
        }
    }
    let inc = out.path().join("inc");
    let summary = export(&[
        "--data-dir",
        data_dir,
        "--to",
        &format!("file://{}", inc.display()),
        "--since",
        &format!("file://{}", full.display()),
    ]);
    println!("{summary}");
    check(&inc, &changes);
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(inc.join("_manifest.json")).expect("incremental manifest"),
    )
    .expect("json");
    assert_eq!(m["kind"], "incremental");
}

fn ctl_snapshot(data_dir: &str, args: &[&str]) -> (bool, String) {
    let mut c = std::process::Command::new(bin());
    c.args(["ctl", "snapshot"])
        .args(args)
        .args(["--data-dir", data_dir]);
    strata_testkit::run_bounded(&mut c, std::time::Duration::from_secs(120))
}

/// An archival snapshot taken from a running server (writes only in its WAL included) exports
/// exactly as the store was then, whatever changed since; `list` shows it. Restored into a new
/// keyspace it copies no SST, serves every key with its old value and version, takes new
/// writes above them, compacts the source's SSTs into its own, and survives a `kill -9`; the
/// source is untouched. Deleting a snapshot something was restored from needs `--force`; once
/// deleted it can no longer be exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_exports_and_restores_the_store_as_it_was() {
    let data = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(
        data.path(),
        ServerOpts {
            extra_args: vec!["--memtable-mb".into(), "1".into()],
            ..Default::default()
        },
    );
    let mut kv = server.client().await;
    let mut then: Model = BTreeMap::new();
    for i in 0..2500u32 {
        let k = format!("k{i:05}");
        let v = format!("{i}-{}", "s".repeat((i as usize * 31) % 700));
        let ver = put(&mut kv, k.as_bytes(), v.as_bytes(), 0).await;
        then.insert(hex(k.as_bytes()), (v.into_bytes(), ver, false, None));
    }
    let data_dir = data.path().to_str().expect("utf-8 path");
    let (ok, text) = ctl_snapshot(data_dir, &["create"]);
    assert!(ok, "{text}");
    let id = text
        .split("created snapshot ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {text:?}"))
        .to_string();
    // Changes after the snapshot: overwrites, deletes, new keys.
    for i in (0..2500u32).step_by(3) {
        put(&mut kv, format!("k{i:05}").as_bytes(), b"later", 0).await;
    }
    for i in (0..2500u32).step_by(5) {
        delete(&mut kv, format!("k{i:05}").as_bytes()).await;
    }
    put(&mut kv, b"new-key", b"later", 0).await;

    let (ok, text) = ctl_snapshot(data_dir, &["list"]);
    assert!(ok && text.contains(&id), "{text}");
    let dest = out.path().join("snap");
    let url = format!("file://{}", dest.display());
    println!(
        "{}",
        export(&["--data-dir", data_dir, "--snapshot", &id, "--to", &url])
    );
    check(&dest, &then);

    // Restore into a new keyspace: nothing copied, every key as it was, writable.
    let restored = tempfile::tempdir().expect("temp dir");
    let to = format!("file://{}/objects", restored.path().display());
    let out_restore = std::process::Command::new(bin())
        .args([
            "ctl",
            "restore",
            "--snapshot",
            &id,
            "--data-dir",
            data_dir,
            "--to",
            &to,
        ])
        .output()
        .expect("run strata ctl restore");
    assert!(
        out_restore.status.success(),
        "{}",
        String::from_utf8_lossy(&out_restore.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out_restore.stdout).trim());
    let ssts_in = |dir: &Path| -> usize {
        walk(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "sst"))
            .count()
    };
    assert_eq!(ssts_in(restored.path()), 0, "a restore copies no SST");
    // The source's server keeps running; a second server serves the restored keyspace.
    let mut b_server = Server::start_with(
        restored.path(),
        ServerOpts {
            extra_args: vec!["--memtable-mb".into(), "1".into()],
            ..Default::default()
        },
    );
    let mut b = b_server.client().await;
    let expect_then = |b: &mut Kv| {
        let mut b = b.clone();
        let then = then.clone();
        async move {
            for i in (0..2500u32).step_by(7) {
                let k = format!("k{i:05}");
                let (v, ver, _, _) = &then[&hex(k.as_bytes())];
                let r = b
                    .get(pb::GetRequest {
                        key: Bytes::from(k.clone()),
                        consistency: 0,
                    })
                    .await
                    .expect("get")
                    .into_inner();
                assert!(r.found, "{k} missing from the restored keyspace");
                assert_eq!((&r.value[..], r.version), (&v[..], *ver), "{k}");
            }
        }
    };
    expect_then(&mut b).await;
    let max_then = then.values().map(|e| e.1).max().unwrap_or(0);
    // Writes to the restored keyspace: versions continue above the snapshot's; enough of
    // them that its compaction merges the source's SSTs into its own.
    let mut newest = 0;
    for i in 0..4000u32 {
        let k = format!("b{i:05}");
        newest = put(&mut b, k.as_bytes(), "r".repeat(1000).as_bytes(), 0).await;
    }
    assert!(newest > max_then);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !b_server.log_text().contains("compaction committed") {
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction in the restored keyspace"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ssts_in(restored.path()) > 0);
    expect_then(&mut b).await;
    // A restart reads the restored manifests (with their foreign root) again.
    b_server.kill9();
    let b_server = Server::start_with(restored.path(), ServerOpts::default());
    let mut b = b_server.client().await;
    expect_then(&mut b).await;
    // The source is untouched by all this.
    let r = kv
        .get(pb::GetRequest {
            key: Bytes::from("k00003"),
            consistency: 0,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(&r.value[..], b"later");

    // The snapshot backs the restored keyspace: deleting it needs --force.
    let (ok, text) = ctl_snapshot(data_dir, &["delete", &id]);
    assert!(!ok && text.contains("--force"), "{text}");
    let (ok, text) = ctl_snapshot(data_dir, &["delete", &id, "--force"]);
    assert!(ok, "{text}");
    let (_, text) = ctl_snapshot(data_dir, &["list"]);
    assert!(!text.contains(&id), "{text}");
    let gone = std::process::Command::new(bin())
        .args([
            "export",
            "--no-progress",
            "--data-dir",
            data_dir,
            "--snapshot",
            &id,
        ])
        .arg("--to")
        .arg(format!("file://{}", out.path().join("again").display()))
        .output()
        .expect("run strata export");
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no complete snapshot"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The embedded default runs the snapshot schedule in `strata serve`: a point-in-time restore
/// (`ctl restore --at`) brings back the values as of that time, and not a later overwrite.
#[tokio::test]
async fn the_embedded_schedule_gives_point_in_time_restores() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(
        data.path(),
        ServerOpts {
            extra_args: ["--snapshot-every-secs", "1", "--snapshot-keep-secs", "60"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    );
    let mut kv = server.client().await;
    for i in 0..200u32 {
        put(&mut kv, format!("k{i:03}").as_bytes(), b"first", 0).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t1 = strata_manifest::now_ms();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..200u32 {
        put(&mut kv, format!("k{i:03}").as_bytes(), b"second", 0).await;
    }
    let data_dir = data.path().to_str().expect("utf-8 path");
    let restored = tempfile::tempdir().expect("temp dir");
    let to = format!("file://{}/objects", restored.path().display());
    let out = std::process::Command::new(bin())
        .args(["ctl", "restore", "--at", &t1.to_string()])
        .args(["--data-dir", data_dir, "--to", &to])
        .output()
        .expect("run strata ctl restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{}", text.trim());
    assert!(text.contains("-auto"), "not a scheduled snapshot: {text}");
    let b_server = Server::start(restored.path());
    let mut b = b_server.client().await;
    for i in 0..200u32 {
        let r = b
            .get(pb::GetRequest {
                key: Bytes::from(format!("k{i:03}")),
                consistency: 0,
            })
            .await
            .expect("get")
            .into_inner();
        assert!(r.found, "k{i:03} missing");
        assert_eq!(&r.value[..], b"first", "k{i:03}: the value as of t1");
    }
    let (ok, list) = ctl_snapshot(data_dir, &["list"]);
    assert!(ok, "{list}");
    assert!(list.contains("-auto"), "{list}");
}

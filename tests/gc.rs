//! Garbage collection against a slow reader (`docs/gc.md`): a scan holds a view while
//! compaction replaces every file it lists and GC deletes them. A scan past the snapshot-age
//! bound stops with a clean `ABORTED`-class error instead of reading deleted files; within the
//! bound, scans read every key; and the unbounded variant shows the failure the bound prevents.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use strata_cache::{BlockCache, CacheConfig};
use strata_compactor::{CompactionOptions, Compactor};
use strata_compute::{Cond, Db, DbOptions, EngineError, Op, WriteOp};
use strata_manifest::{EmbeddedManifestStore, ManifestStore};
use strata_objstore::{LocalStore, Store};

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    manifests: Arc<dyn ManifestStore>,
    db: Db,
}

async fn env(max_snapshot_age: Duration) -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path()).expect("store"));
    let manifests: Arc<dyn ManifestStore> = Arc::new(EmbeddedManifestStore::new(store.clone()));
    // A small cache, so the scan has to fetch blocks of its files as it goes.
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 64 << 10,
        disk_dir: None,
        disk_bytes: 0,
    })
    .await
    .expect("cache");
    let opts = DbOptions {
        max_snapshot_age,
        ..DbOptions::default()
    };
    let (db, _) = Db::open(opts, store.clone(), manifests.clone(), cache)
        .await
        .expect("open");
    // Four flushed files of 2,000 keys each, every key in each file: compaction replaces all.
    for round in 0..4 {
        let ops = (0..2000)
            .map(|i| WriteOp {
                key: Bytes::from(format!("key-{i:05}")),
                op: Op::Put {
                    value: Bytes::from(format!("{round}-{}", "v".repeat(200))),
                    ttl_ms: 0,
                },
                cond: Cond::None,
            })
            .collect();
        db.write(ops, true).await.expect("write");
        db.flush().await.expect("flush");
    }
    Env {
        _dir: dir,
        store,
        manifests,
        db,
    }
}

/// Compacts the four L0 files into one (GC grace 3 s).
async fn compact(e: &Env) -> Compactor {
    let c = Compactor::new(
        e.store.clone(),
        e.manifests.clone(),
        0,
        CompactionOptions {
            gc_grace: Duration::from_secs(3),
            ..CompactionOptions::default()
        },
    );
    let r = c.compact_once().await.expect("compact").expect("a job");
    assert_eq!(r.input_files, 4);
    c
}

/// Lets the grace pass and GC delete the replaced files.
async fn collect(c: &Compactor) {
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(c.collect_garbage().await.expect("gc"), 4, "inputs deleted");
}

async fn compact_and_collect(e: &Env) {
    let c = compact(e).await;
    collect(&c).await;
}

async fn drain(s: &mut strata_compute::Scanner) -> Result<usize, EngineError> {
    let mut n = 0;
    while !s.is_done() {
        n += s.next_chunk(100).await?.len();
    }
    Ok(n)
}

#[tokio::test]
async fn a_slow_scan_gets_a_clean_error_and_never_reads_deleted_files() {
    // The bound (2 s) is below the GC grace (3 s), as 4 min is below 5 min by default.
    let e = env(Duration::from_secs(2)).await;
    let mut slow = e.db.scan(Bytes::new(), None).expect("scan");
    let mut quick = e.db.scan(Bytes::new(), None).expect("scan");
    assert_eq!(slow.next_chunk(100).await.expect("first chunk").len(), 100);
    let c = compact(&e).await;
    // An old view used within its bound reads everything, though its files were replaced:
    // they are deleted only after the grace, which is longer than the bound.
    assert_eq!(drain(&mut quick).await.expect("quick scan"), 2000);
    collect(&c).await;
    // Its files are gone, and it is past its bound: a clean "snapshot too old".
    let err = drain(&mut slow).await.expect_err("the slow scan must stop");
    assert!(
        matches!(&err, EngineError::SnapshotTooOld(m) if m.contains("snapshot too old")),
        "{err:?}"
    );
    // A scan taken now reads every key, from the compacted file.
    let mut fresh = e.db.scan(Bytes::new(), None).expect("scan");
    assert_eq!(drain(&mut fresh).await.expect("fresh scan"), 2000);
}

#[tokio::test]
async fn without_the_bound_the_same_slow_scan_hits_deleted_files() {
    let e = env(Duration::from_secs(3600)).await;
    let mut slow = e.db.scan(Bytes::new(), None).expect("scan");
    assert_eq!(slow.next_chunk(100).await.expect("first chunk").len(), 100);
    compact_and_collect(&e).await;
    // What the bound prevents: the view lists files GC deleted.
    let err = drain(&mut slow).await.expect_err("reads a deleted file");
    assert!(
        matches!(
            err,
            EngineError::Corruption(_) | EngineError::Unavailable(_)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn with_the_reader_floor_replaced_files_go_once_no_reader_holds_them_whatever_the_grace() {
    // The embedded default's rule: the compactor runs in the engine's process and asks it
    // which versions its readers hold; no grace covers the slow scan, the floor does.
    let e = env(Duration::from_secs(3600)).await;
    let mut slow = e.db.scan(Bytes::new(), None).expect("scan");
    assert_eq!(slow.next_chunk(100).await.expect("first chunk").len(), 100);
    let db = e.db.clone();
    let c = Compactor::new(
        e.store.clone(),
        e.manifests.clone(),
        0,
        CompactionOptions {
            gc_grace: Duration::ZERO,
            ..CompactionOptions::default()
        },
    )
    .with_reader_floor(Arc::new(move |_| db.oldest_held_version()));
    let r = c.compact_once().await.expect("compact").expect("a job");
    assert_eq!(r.input_files, 4);
    let committed = e.manifests.load_latest(0).await.unwrap().unwrap().version;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while e.db.manifest_version() < committed {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine did not install the compaction"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slow scan still holds the version listing the inputs: nothing goes.
    assert_eq!(c.collect_garbage().await.expect("gc"), 0);
    assert_eq!(
        drain(&mut slow).await.expect("slow scan reads its files"),
        1900
    );
    drop(slow);
    // No reader holds it any more: the inputs go at once.
    assert_eq!(c.collect_garbage().await.expect("gc"), 4, "inputs deleted");
    let mut fresh = e.db.scan(Bytes::new(), None).expect("scan");
    assert_eq!(drain(&mut fresh).await.expect("fresh scan"), 2000);
}

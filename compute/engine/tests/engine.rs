//! Engine tests against a real local directory store (and the in-memory one for speed).
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "these tests wait for real storage on the real clock"
)]

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use strata_engine::{Cond, Db, DbOptions, EngineError, Op, WriteOp};
use strata_objstore::{LocalStore, Store};

mod common;
use common::{faulty, open, open_on, open_reporting, put};

fn del(key: &str, cond: Cond) -> WriteOp {
    WriteOp {
        key: Bytes::copy_from_slice(key.as_bytes()),
        op: Op::Delete,
        cond,
    }
}

async fn get(db: &Db, key: &str) -> Option<(String, u64)> {
    db.get(key.as_bytes())
        .await
        .unwrap()
        .map(|(v, ver)| (String::from_utf8(v.to_vec()).unwrap(), ver))
}

#[tokio::test]
async fn versions_conditions_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), DbOptions::default()).await;
    let v1 = db
        .write(vec![put("a", "1", Cond::None)], true)
        .await
        .unwrap()[0]
        .version;
    assert_eq!(get(&db, "a").await, Some(("1".into(), v1)));
    let err = db
        .write(vec![put("a", "x", Cond::IfAbsent)], true)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::FailedPrecondition(_)), "{err}");
    let v2 = db
        .write(vec![put("a", "2", Cond::IfVersion(v1))], true)
        .await
        .unwrap()[0]
        .version;
    assert!(v2 > v1);
    assert!(db
        .write(vec![put("a", "3", Cond::IfVersion(v1))], true)
        .await
        .is_err());
    // A batch with one failing condition applies nothing.
    let err = db
        .write(
            vec![put("b", "b", Cond::None), put("a", "4", Cond::IfAbsent)],
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::FailedPrecondition(_)));
    assert_eq!(get(&db, "b").await, None);
    let out = db.write(vec![del("a", Cond::None)], true).await.unwrap();
    assert!(out[0].found);
    assert_eq!(get(&db, "a").await, None);
    let out = db.write(vec![del("a", Cond::None)], true).await.unwrap();
    assert!(!out[0].found);
    db.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn recovery_replays_the_wal_and_reads_flushed_ssts() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        memtable_bytes: 64 << 10,
        ..Default::default()
    };
    let db = open(dir.path(), opts.clone()).await;
    let mut versions = Vec::new();
    for chunk in 0..100u32 {
        let ops = (chunk * 20..chunk * 20 + 20)
            .map(|i| {
                let k = format!("key{i:05}");
                let v = format!("value-{i}-{}", "x".repeat((i % 50) as usize));
                put(&k, &v, Cond::None)
            })
            .collect();
        versions.extend(db.write(ops, true).await.unwrap().iter().map(|o| o.version));
    }
    db.write(vec![del("key00007", Cond::None)], true)
        .await
        .unwrap();
    assert!(db.stats().l0_files > 0, "small memtables must have flushed");
    // Drop without close: like a crash, the tail is only in the WAL.
    drop(db);
    let db = open(dir.path(), opts).await;
    for i in 0..2000u32 {
        let k = format!("key{i:05}");
        let got = get(&db, &k).await;
        if i == 7 {
            assert_eq!(got, None);
        } else {
            let v = format!("value-{i}-{}", "x".repeat((i % 50) as usize));
            assert_eq!(got, Some((v, versions[i as usize])), "{k}");
        }
    }
    // Scan sees everything in order, minus the deleted key.
    let mut sc = db.scan(Bytes::from_static(b"key"), None).unwrap();
    let mut keys = Vec::new();
    while !sc.is_done() {
        for (k, _, _) in sc.next_chunk(97).await.unwrap() {
            keys.push(k);
        }
    }
    assert_eq!(keys.len(), 1999);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    db.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_second_writer_fences_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), DbOptions::default()).await;
    a.write(vec![put("k", "from-a", Cond::None)], true)
        .await
        .unwrap();
    let b = open(dir.path(), DbOptions::default()).await;
    assert_eq!(get(&b, "k").await.map(|v| v.0), Some("from-a".into()));
    // The first writer's next segment name is taken: it must not acknowledge.
    let err = a
        .write(vec![put("k", "late", Cond::None)], true)
        .await
        .unwrap_err();
    // Certainly not applied, so safe to retry on the new owner.
    assert!(matches!(err, EngineError::NotServing(_)), "{err}");
    b.write(vec![put("k2", "from-b", Cond::None)], true)
        .await
        .unwrap();
    assert_eq!(get(&b, "k").await.map(|v| v.0), Some("from-a".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_makes_writes_unavailable_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty(dir.path());
    let opts = DbOptions {
        write_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    let db = open_on(store, opts).await;
    let v1 = db
        .write(vec![put("k1", "before", Cond::None)], true)
        .await
        .unwrap()[0]
        .version;

    faults.set_down(true);
    let started = std::time::Instant::now();
    let err = db
        .write(vec![put("k2", "during", Cond::None)], true)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a write must not hang past its deadline"
    );
    // Not durable, so not visible; what was acknowledged still reads.
    assert_eq!(get(&db, "k2").await, None);
    assert_eq!(get(&db, "k1").await, Some(("before".into(), v1)));

    faults.set_down(false);
    // The stalled segment is retried with the same name and bytes; service resumes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let v3 = loop {
        match db.write(vec![put("k3", "after", Cond::None)], true).await {
            Ok(o) => break o[0].version,
            Err(EngineError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("writes did not resume: {e}"),
        }
    };
    // The write that got UNAVAILABLE had an unknown outcome; its segment landed before k3's.
    let k2 = get(&db, "k2").await;
    assert_eq!(k2.as_ref().map(|v| v.0.as_str()), Some("during"));
    drop(db);

    // Reopen without faults, as after a crash: every acknowledged write is there.
    let db = open(dir.path(), DbOptions::default()).await;
    assert_eq!(get(&db, "k1").await, Some(("before".into(), v1)));
    assert_eq!(get(&db, "k3").await, Some(("after".into(), v3)));
    assert_eq!(get(&db, "k2").await, k2);
    db.close(Duration::from_secs(5)).await.unwrap();
}

/// Found by the cluster's linearizability check: a failed condition must not be answered
/// before the state it was checked against is durable and visible. Otherwise a client learns
/// "the version is no longer 1" and a read it issues afterwards still sees version 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_condition_is_answered_only_once_what_it_saw_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty(dir.path());
    let db = open_on(store, DbOptions::default()).await;
    let v1 = db
        .write(vec![put("k", "one", Cond::None)], true)
        .await
        .unwrap()[0]
        .version;
    // The next write's WAL PUT is slow: it is sequenced at once but visible only when it lands.
    faults.set_latency(Duration::from_millis(400));
    let slow = {
        let db = db.clone();
        tokio::spawn(async move { db.write(vec![put("k", "two", Cond::None)], true).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    faults.set_latency(Duration::ZERO);
    let err = db
        .write(vec![put("k", "cas", Cond::IfVersion(v1))], true)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::FailedPrecondition(_)), "{err}");
    // The CAS failed because "two" replaced version v1: a read now must see "two".
    let (value, version) = get(&db, "k").await.unwrap();
    assert_eq!(
        value, "two",
        "a read after a failed CAS saw the state the CAS ruled out"
    );
    assert!(version > v1);
    slow.await.unwrap().unwrap();
}

/// A WAL PUT that landed although its answer was lost is retried with the same name: the
/// retry finds our own segment there, which is success, not a newer writer's fence.
#[tokio::test(flavor = "multi_thread")]
async fn a_wal_put_whose_answer_was_lost_does_not_fence_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty(dir.path());
    let db = open_on(store, DbOptions::default()).await;
    faults.lose_next_put_response();
    // Its outcome is unknown to the writer (the answer was lost) ...
    let r = db.write(vec![put("k", "landed", Cond::None)], true).await;
    assert!(matches!(r, Err(EngineError::Unavailable(_))), "{r:?}");
    // ... but the engine keeps serving, and the write did land.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match db.write(vec![put("k2", "next", Cond::None)], true).await {
            Ok(_) => break,
            Err(EngineError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the writer fenced itself: {e}"),
        }
    }
    assert_eq!(get(&db, "k").await.map(|v| v.0), Some("landed".into()));
    assert_eq!(get(&db, "k2").await.map(|v| v.0), Some("next".into()));
}

/// TTLs expire on the engine's clock: with a manual one, a test moves time forward instead of
/// sleeping, and every read path agrees the value is gone.
#[tokio::test]
async fn ttl_values_expire_when_the_injected_clock_passes_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = strata_clock::Clock::manual(1_700_000_000_000);
    let db = open(
        dir.path(),
        DbOptions {
            clock: clock.clone(),
            ..Default::default()
        },
    )
    .await;
    let ttl = WriteOp {
        key: Bytes::from_static(b"t"),
        op: Op::Put {
            value: Bytes::from_static(b"short-lived"),
            ttl_ms: 60_000,
        },
        cond: Cond::None,
    };
    db.write(vec![ttl, put("p", "permanent", Cond::None)], true)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(59));
    assert_eq!(get(&db, "t").await.map(|v| v.0), Some("short-lived".into()));
    clock.advance(Duration::from_secs(2));
    assert_eq!(get(&db, "t").await, None, "expired 61 s after its write");
    assert_eq!(get(&db, "p").await.map(|v| v.0), Some("permanent".into()));
    let mut scan = db.scan(Bytes::new(), None).unwrap();
    let keys: Vec<Bytes> = scan
        .next_chunk(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(keys, vec![Bytes::from_static(b"p")]);
    // An expired key is absent for conditions too.
    db.write(vec![put("t", "again", Cond::IfAbsent)], true)
        .await
        .unwrap();
}

/// The pipelined group commit acknowledges in segment order: a segment that lands while a
/// lower one is still being retried is neither visible nor acknowledged until the lower one
/// lands too (a later group may have been checked against the earlier one's effects).
#[tokio::test(flavor = "multi_thread")]
async fn a_segment_that_lands_before_a_lower_one_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty(dir.path());
    let (db, report) = open_reporting(store, pipelined()).await;
    // The first data segment sits past the fence's window.
    let first = report.fence_segment + strata_format::WAL_MAX_IN_FLIGHT;
    faults.fail_puts_matching(Some(&format!("{first:020}.wal")));
    let r1 = db.write(vec![put("one", "1", Cond::None)], true).await;
    assert!(matches!(r1, Err(EngineError::Unavailable(_))), "{r1:?}");
    // Segment first + 1 lands at once, but the write waits behind the failing segment.
    let second = {
        let db = db.clone();
        tokio::spawn(async move { db.write(vec![put("two", "2", Cond::None)], true).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let landed = std::fs::read_dir(dir.path().join(strata_manifest::layout::wal_prefix(0)))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy() == format!("{:020}.wal", first + 1));
    assert!(
        landed,
        "the pipeline put the next segment while the lower one failed"
    );
    assert!(
        !second.is_finished(),
        "acknowledged before a lower segment landed"
    );
    assert_eq!(
        get(&db, "two").await,
        None,
        "visible before a lower segment landed"
    );
    faults.fail_puts_matching(None);
    second.await.unwrap().unwrap();
    assert_eq!(get(&db, "one").await.map(|v| v.0), Some("1".into()));
    drop(db);
    let db = open(dir.path(), DbOptions::default()).await;
    assert_eq!(get(&db, "one").await.map(|v| v.0), Some("1".into()));
    assert_eq!(get(&db, "two").await.map(|v| v.0), Some("2".into()));
    db.close(Duration::from_secs(5)).await.unwrap();
}

/// A writer whose pipeline has a gap (a segment failing while the next one landed) is taken
/// over: the new writer fills the gap with its marker, skips the segment above it (never
/// acknowledged), and the old writer's retry of the gap finds the marker and steps down
/// without acknowledging what the new writer skipped.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_writer_fills_a_pipeline_gap_and_skips_the_orphan_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty(dir.path());
    let (a, report) = open_reporting(store, pipelined()).await;
    let first = report.fence_segment + strata_format::WAL_MAX_IN_FLIGHT;
    a.write(vec![put("acked", "a", Cond::None)], true)
        .await
        .unwrap();
    // The next segment (first + 1) fails until the takeover; the one above it lands.
    faults.fail_puts_matching(Some(&format!("{:020}.wal", first + 1)));
    let r = a.write(vec![put("lost", "x", Cond::None)], true).await;
    assert!(matches!(r, Err(EngineError::Unavailable(_))), "{r:?}");
    let orphan = {
        let a = a.clone();
        tokio::spawn(async move { a.write(vec![put("orphan", "o", Cond::None)], true).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!orphan.is_finished());

    let local: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let (b, report) = open_reporting(local, DbOptions::default()).await;
    assert_eq!(report.orphaned_segments, 1, "{report:?}");
    assert_eq!(get(&b, "acked").await.map(|v| v.0), Some("a".into()));
    assert_eq!(
        get(&b, "lost").await,
        None,
        "the gap holds the new writer's marker"
    );
    assert_eq!(
        get(&b, "orphan").await,
        None,
        "an orphan above the gap was replayed"
    );
    // The old writer's retry of the gap finds the new marker: it steps down without
    // acknowledging the write the new writer skipped. Its answer is "outcome unknown", not
    // "not applied": the taken name was a retry's, and an earlier attempt of ours might have
    // landed there and been collected before another writer's marker took the name.
    faults.fail_puts_matching(None);
    let r = orphan.await.unwrap();
    assert!(matches!(r, Err(EngineError::Unavailable(_))), "{r:?}");
    assert!(a.is_fenced());
    b.write(vec![put("after", "b", Cond::None)], true)
        .await
        .unwrap();
    b.close(Duration::from_secs(5)).await.unwrap();
    // A third writer replays the same way (the orphan stays skipped behind the marker).
    let (c, report) = open_reporting(
        Arc::new(LocalStore::open(dir.path()).unwrap()),
        DbOptions::default(),
    )
    .await;
    assert_eq!(get(&c, "orphan").await, None, "{report:?}");
    assert_eq!(get(&c, "acked").await.map(|v| v.0), Some("a".into()));
    assert_eq!(get(&c, "after").await.map(|v| v.0), Some("b".into()));
    c.close(Duration::from_secs(5)).await.unwrap();
}

/// Every group is pipelined, however small (the tests' groups are one small write each).
fn pipelined() -> DbOptions {
    DbOptions {
        wal_pipeline_min_bytes: 0,
        ..Default::default()
    }
}

/// An open that failed after its fence but before it filled the gap of a deposed writer's
/// pipeline leaves markers above the gap; the next open still finds and fills the gap (it is
/// measured from the highest data segment, not the highest name) instead of refusing the
/// partition as corrupt.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_gap_below_a_failed_openers_markers_is_still_filled() {
    use strata_format::{encode_wal_segment, WalSegmentHeader, WAL_MAX_IN_FLIGHT};
    use strata_objstore::PutMode;
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = faulty(dir.path());
    let local: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let (a, report) = open_reporting(store, pipelined()).await;
    let first = report.fence_segment + WAL_MAX_IN_FLIGHT;
    a.write(vec![put("acked", "a", Cond::None)], true)
        .await
        .unwrap();
    faults.fail_puts_matching(Some(&format!("{:020}.wal", first + 1)));
    let r = a.write(vec![put("lost", "x", Cond::None)], true).await;
    assert!(matches!(r, Err(EngineError::Unavailable(_))), "{r:?}");
    // Three more groups fill the pipeline behind the failing segment and land.
    let mut orphans = Vec::new();
    for i in 0..3 {
        let a = a.clone();
        orphans.push(tokio::spawn(async move {
            a.write(vec![put(&format!("orphan{i}"), "o", Cond::None)], true)
                .await
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An opener that fenced above them and died before filling the gap.
    let dead_fence = first + 5;
    for id in dead_fence..dead_fence + WAL_MAX_IN_FLIGHT {
        let marker = encode_wal_segment(
            &WalSegmentHeader {
                segment_id: id,
                writer_epoch: dead_fence << 24,
                created_ms: 1,
            },
            &[],
        );
        local
            .put(
                &strata_manifest::layout::wal_path(0, id),
                marker,
                PutMode::Create,
            )
            .await
            .unwrap();
    }
    let (b, report) = open_reporting(local, DbOptions::default()).await;
    assert_eq!(report.orphaned_segments, 3, "{report:?}");
    assert_eq!(get(&b, "acked").await.map(|v| v.0), Some("a".into()));
    for i in 0..3 {
        assert_eq!(get(&b, &format!("orphan{i}")).await, None);
    }
    faults.fail_puts_matching(None);
    for o in orphans {
        let r = o.await.unwrap();
        assert!(matches!(r, Err(EngineError::Unavailable(_))), "{r:?}");
    }
    b.close(Duration::from_secs(5)).await.unwrap();
}

/// A small write that arrives behind large ones still waiting to be sequenced goes first
/// (fairness: acknowledgements are in segment order, so a small write sequenced behind
/// megabytes of large ones would wait for all of them to land); with the bound off
/// (`large_write_bytes: 0`) writes are sequenced in arrival order. Every write lands either
/// way, and large writes keep their arrival order.
///
/// One thread: each spawned write sends its request when the test yields right after
/// spawning it, so the arrival order is the spawn order however loaded the machine is.
#[tokio::test]
async fn a_small_write_is_not_sequenced_behind_large_ones_waiting() {
    for bounded in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (store, faults) = faulty(dir.path());
        let opts = DbOptions {
            large_write_bytes: if bounded { 64 << 10 } else { 0 },
            large_in_flight_bytes: 2 << 20,
            ..Default::default()
        };
        let db = open_on(store, opts).await;
        // Every WAL PUT takes 300 ms: the first large writes stay in flight while the rest
        // arrive.
        faults.set_latency(Duration::from_millis(300));
        let big = "x".repeat(1 << 20);
        let mut large = Vec::new();
        for i in 0..6 {
            let (db, v) = (db.clone(), big.clone());
            large.push(tokio::spawn(async move {
                db.write(vec![put(&format!("large-{i}"), &v, Cond::None)], true)
                    .await
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let small = db
            .write(vec![put("small", "v", Cond::None)], true)
            .await
            .unwrap()[0]
            .version;
        let mut versions = Vec::new();
        for t in large {
            versions.push(t.await.unwrap().unwrap()[0].version);
        }
        faults.set_latency(Duration::ZERO);
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "large writes keep their arrival order: {versions:?}"
        );
        if bounded {
            assert!(
                versions.iter().filter(|v| **v > small).count() >= 3,
                "the small write waited behind the large ones: small {small}, large {versions:?}"
            );
        } else {
            assert!(
                versions.iter().all(|v| *v < small),
                "without the bound writes go in arrival order: small {small}, large {versions:?}"
            );
        }
        for i in 0..6 {
            assert_eq!(
                get(&db, &format!("large-{i}")).await.map(|v| v.0.len()),
                Some(1 << 20)
            );
        }
        assert_eq!(get(&db, "small").await.map(|v| v.0), Some("v".into()));
        db.close(Duration::from_secs(5)).await.unwrap();
    }
}

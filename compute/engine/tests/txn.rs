//! The participant side of cross-partition transactions, on one engine: prepare locks keys
//! and checks conditions, resolve applies or drops, intents survive a reopen (failover), and
//! markers make resolves idempotent and refuse late prepares.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "these tests wait for real storage on the real clock"
)]

use bytes::Bytes;
use std::time::Duration;
use strata_engine::{Cond, Db, DbOptions, EngineError};

mod common;
use common::{open, put};

async fn get(db: &Db, key: &str) -> Option<String> {
    db.get(key.as_bytes())
        .await
        .unwrap()
        .map(|(v, _)| String::from_utf8(v.to_vec()).unwrap())
}

fn short() -> DbOptions {
    DbOptions {
        write_timeout: Duration::from_millis(600),
        ..DbOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prepared_key_is_locked_until_the_commit_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), short()).await;
    db.write(vec![put("a", "old", Cond::None)], true)
        .await
        .unwrap();
    let v_old = db.get(b"a").await.unwrap().unwrap().1;
    db.txn_prepare(
        "t1",
        1,
        vec![
            put("a", "new", Cond::IfVersion(v_old)),
            put("b", "new", Cond::IfAbsent),
        ],
    )
    .await
    .unwrap();
    assert_eq!(db.prepared_txns().len(), 1);
    // Locked: a plain write and a read both wait, and give up retry-safe, applying nothing.
    let err = db
        .write(vec![put("a", "other", Cond::None)], true)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Locked(_)), "{err}");
    assert!(matches!(
        db.get(b"b").await.unwrap_err(),
        EngineError::Locked(_)
    ));
    // Unlocked keys are untouched by the lock.
    db.write(vec![put("c", "free", Cond::None)], true)
        .await
        .unwrap();
    // Another transaction on a locked key conflicts at once.
    let err = db
        .txn_prepare("t2", 1, vec![put("b", "x", Cond::None)])
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err}");

    // A waiting writer goes through once the commit lands, after it.
    let waiter = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(vec![put("a", "after", Cond::None)], true)
                .await
                .map(|o| o[0].version)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let versions = db.txn_resolve("t1", true).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions[0] > v_old && versions[1] > versions[0]);
    let after = waiter.await.unwrap().unwrap();
    assert!(after > versions[1]);
    assert_eq!(get(&db, "a").await.as_deref(), Some("after"));
    assert_eq!(get(&db, "b").await.as_deref(), Some("new"));
    assert!(db.prepared_txns().is_empty());
    // Idempotent: a retried resolve answers the same versions from the marker.
    assert_eq!(db.txn_resolve("t1", true).await.unwrap(), versions);
    // User scans never show the intent records.
    let mut s = db.scan(Bytes::new(), None).unwrap();
    let mut keys = Vec::new();
    while !s.is_done() {
        keys.extend(s.next_chunk(100).await.unwrap().into_iter().map(|e| e.0));
    }
    assert_eq!(keys, vec![&b"a"[..], b"b", b"c"]);
    db.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_condition_prepares_nothing_and_abort_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), short()).await;
    db.write(vec![put("a", "1", Cond::None)], true)
        .await
        .unwrap();
    let err = db
        .txn_prepare("t1", 1, vec![put("a", "2", Cond::IfAbsent)])
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::FailedPrecondition(_)), "{err}");
    assert!(db.prepared_txns().is_empty());

    db.txn_prepare("t2", 1, vec![put("a", "2", Cond::None)])
        .await
        .unwrap();
    assert_eq!(
        db.txn_resolve("t2", false).await.unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(get(&db, "a").await.as_deref(), Some("1"));
    // A prepare that arrives after its transaction was aborted here is refused.
    let err = db
        .txn_prepare("t2", 1, vec![put("a", "2", Cond::None)])
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err}");
    // So is one whose abort came first (the abort leaves a marker).
    assert!(db.txn_resolve("t3", false).await.unwrap().is_empty());
    let err = db
        .txn_prepare("t3", 1, vec![put("a", "3", Cond::None)])
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err}");
    // Committing a transaction never prepared here is a bug, not a silent success.
    assert!(db.txn_resolve("t4", true).await.is_err());
    assert_eq!(get(&db, "a").await.as_deref(), Some("1"));
    db.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_intents_survive_a_crash_and_stay_locked() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path(), short()).await;
        db.write(vec![put("a", "old", Cond::None)], true)
            .await
            .unwrap();
        db.txn_prepare("t1", 1, vec![put("a", "new", Cond::None)])
            .await
            .unwrap();
        db.txn_prepare("t2", 1, vec![put("z", "gone", Cond::None)])
            .await
            .unwrap();
        // Some of it reaches an SST, some stays in the WAL.
        db.flush().await.unwrap();
        db.txn_prepare("t3", 1, vec![put("m", "m", Cond::None)])
            .await
            .unwrap();
        // Crash: no close.
        db.abandon();
    }
    // A new owner (same store) finds all three intents and locks their keys again.
    let db = open(dir.path(), short()).await;
    let mut pending: Vec<String> = db.prepared_txns().into_iter().map(|p| p.0).collect();
    pending.sort();
    assert_eq!(pending, vec!["t1", "t2", "t3"]);
    assert!(matches!(
        db.get(b"a").await.unwrap_err(),
        EngineError::Locked(_)
    ));
    db.txn_resolve("t1", true).await.unwrap();
    db.txn_resolve("t2", false).await.unwrap();
    db.txn_resolve("t3", true).await.unwrap();
    assert_eq!(get(&db, "a").await.as_deref(), Some("new"));
    assert_eq!(get(&db, "z").await, None);
    assert_eq!(get(&db, "m").await.as_deref(), Some("m"));
    db.close(Duration::from_secs(5)).await.unwrap();
    // And resolved intents stay resolved after another reopen.
    let db = open(dir.path(), short()).await;
    assert!(db.prepared_txns().is_empty());
    assert_eq!(get(&db, "a").await.as_deref(), Some("new"));
    db.close(Duration::from_secs(5)).await.unwrap();
}

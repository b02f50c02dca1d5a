//! API semantics of `strata.v1.KV` against the real `strata serve` binary (issue 2):
//! versions, conditions, TTL, batches, scans, limits, durability modes, health, reflection,
//! and restart.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use bytes::Bytes;
use std::time::{Duration, Instant};
use strata_compute::pb;
use strata_testkit::kv::{b, get, put, put_req, Kv};
use strata_testkit::Server;
use tonic::transport::Channel;
use tonic::Code;

// ---------------------------------------------------------------------------------------
// helpers

async fn start() -> (tempfile::TempDir, Server, Kv) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.client().await;
    (dir, server, client)
}

async fn put_if_absent(
    c: &mut Kv,
    key: impl AsRef<[u8]>,
    value: impl AsRef<[u8]>,
) -> Result<u64, tonic::Status> {
    let mut r = put_req(key, value);
    r.condition = Some(pb::put_request::Condition::IfAbsent(true));
    c.put(r).await.map(|r| r.into_inner().version)
}

async fn put_if_version(
    c: &mut Kv,
    key: impl AsRef<[u8]>,
    value: impl AsRef<[u8]>,
    v: u64,
) -> Result<u64, tonic::Status> {
    let mut r = put_req(key, value);
    r.condition = Some(pb::put_request::Condition::IfVersion(v));
    c.put(r).await.map(|r| r.into_inner().version)
}

async fn delete(
    c: &mut Kv,
    key: impl AsRef<[u8]>,
    if_version: Option<u64>,
) -> Result<pb::DeleteResponse, tonic::Status> {
    c.delete(pb::DeleteRequest {
        key: b(key),
        if_version,
        durability: 0,
    })
    .await
    .map(|r| r.into_inner())
}

async fn batch_get(c: &mut Kv, keys: &[&[u8]]) -> Vec<pb::GetResponse> {
    c.batch_get(pb::BatchGetRequest {
        keys: keys.iter().map(b).collect(),
        consistency: 0,
    })
    .await
    .expect("batch_get")
    .into_inner()
    .results
}

fn op_put(p: pb::PutRequest) -> pb::WriteOp {
    pb::WriteOp {
        op: Some(pb::write_op::Op::Put(p)),
    }
}

fn op_delete(key: impl AsRef<[u8]>, if_version: Option<u64>) -> pb::WriteOp {
    pb::WriteOp {
        op: Some(pb::write_op::Op::Delete(pb::DeleteRequest {
            key: b(key),
            if_version,
            durability: 0,
        })),
    }
}

async fn batch_write(
    c: &mut Kv,
    ops: Vec<pb::WriteOp>,
    durability: pb::Durability,
) -> Result<Vec<u64>, tonic::Status> {
    c.batch_write(pb::BatchWriteRequest {
        ops,
        durability: durability as i32,
    })
    .await
    .map(|r| r.into_inner().versions)
}

async fn scan(c: &mut Kv, req: pb::ScanRequest) -> (Vec<pb::KeyValue>, usize) {
    let mut stream = c.scan(req).await.expect("scan").into_inner();
    let mut out = Vec::new();
    let mut chunks = 0;
    while let Some(msg) = stream.message().await.expect("scan stream") {
        chunks += 1;
        out.extend(msg.entries);
    }
    (out, chunks)
}

fn scan_req(start: &[u8], end: &[u8], prefix: &[u8], limit: u32) -> pb::ScanRequest {
    pb::ScanRequest {
        start: b(start),
        end: b(end),
        prefix: b(prefix),
        limit,
        consistency: 0,
    }
}

fn keys_of(entries: &[pb::KeyValue]) -> Vec<Vec<u8>> {
    entries.iter().map(|e| e.key.to_vec()).collect()
}

#[track_caller]
fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needles: &[&str]) {
    match r {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "wrong code; status message: {}",
                s.message()
            );
            for n in needles {
                assert!(
                    s.message().contains(n),
                    "status message {:?} does not mention {n:?}",
                    s.message()
                );
            }
        }
    }
}

fn absent(r: &pb::GetResponse) -> bool {
    !r.found && r.value.is_empty() && r.version == 0
}

// ---------------------------------------------------------------------------------------
// versions

#[tokio::test]
async fn versions_start_at_one_and_increase_and_delete_gets_a_version() {
    let (_d, _s, mut c) = start().await;
    let v1 = put(&mut c, "a", "1").await;
    assert_eq!(v1, 1, "the first write of a fresh store gets version 1");
    let v2 = put(&mut c, "b", "2").await;
    assert!(v2 > v1);
    let v3 = put(&mut c, "a", "3").await;
    assert!(v3 > v2);
    let d = delete(&mut c, "a", None).await.unwrap();
    assert!(d.found, "deleting a live key reports found");
    assert!(
        d.version > v3,
        "a delete writes a tombstone with its own, newer version"
    );
    let v5 = put(&mut c, "a", "5").await;
    assert!(v5 > d.version);
    let d2 = delete(&mut c, "never-written", None).await.unwrap();
    assert!(
        d2.version > v5,
        "a delete of an absent key still writes a tombstone version"
    );
}

#[tokio::test]
async fn get_returns_the_version_the_last_write_returned() {
    let (_d, _s, mut c) = start().await;
    let mut last = 0;
    for i in 0..20 {
        let v = put(&mut c, "k", format!("value-{i}")).await;
        assert!(v > last);
        last = v;
        let g = get(&mut c, "k").await;
        assert!(g.found);
        assert_eq!(g.value, b(format!("value-{i}")));
        assert_eq!(g.version, v);
    }
    // Interleaved writes to other keys don't change this key's version.
    put(&mut c, "other", "x").await;
    assert_eq!(get(&mut c, "k").await.version, last);
    // After a delete the key is absent, with version 0.
    delete(&mut c, "k", None).await.unwrap();
    assert!(absent(&get(&mut c, "k").await));
    // Empty values are values.
    let v = put(&mut c, "empty", "").await;
    let g = get(&mut c, "empty").await;
    assert!(g.found && g.value.is_empty() && g.version == v);
}

#[tokio::test]
async fn eventual_and_strong_reads_agree_on_a_single_node() {
    let (_d, _s, mut c) = start().await;
    let v = put(&mut c, "k", "v").await;
    for consistency in [pb::Consistency::Strong, pb::Consistency::Eventual] {
        let g = c
            .get(pb::GetRequest {
                key: b("k"),
                consistency: consistency as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            g.found && g.value == b("v") && g.version == v,
            "{consistency:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// conditions

#[tokio::test]
async fn put_if_absent_fails_on_existing_key_and_changes_nothing() {
    let (_d, _s, mut c) = start().await;
    let v1 = put_if_absent(&mut c, "k", "first")
        .await
        .expect("if_absent on a new key");
    assert_status(
        put_if_absent(&mut c, "k", "second").await,
        Code::FailedPrecondition,
        &[],
    );
    let g = get(&mut c, "k").await;
    assert_eq!(
        (g.value, g.version),
        (b("first"), v1),
        "a failed condition changes nothing"
    );
    // After a delete the key is absent again, so if_absent holds.
    delete(&mut c, "k", None).await.unwrap();
    let v3 = put_if_absent(&mut c, "k", "third")
        .await
        .expect("if_absent after delete");
    assert!(v3 > v1);
    assert_eq!(get(&mut c, "k").await.value, b("third"));
}

#[tokio::test]
async fn put_if_version_is_compare_and_set() {
    let (_d, _s, mut c) = start().await;
    // On an absent key no version matches.
    assert_status(
        put_if_version(&mut c, "k", "x", 1).await,
        Code::FailedPrecondition,
        &[],
    );
    assert!(
        absent(&get(&mut c, "k").await),
        "failed CAS on absent key must not create it"
    );
    let v1 = put(&mut c, "k", "a").await;
    assert_status(
        put_if_version(&mut c, "k", "b", v1 + 1).await,
        Code::FailedPrecondition,
        &[],
    );
    assert_status(
        put_if_version(&mut c, "k", "b", v1 - 1).await,
        Code::FailedPrecondition,
        &[],
    );
    assert_status(
        put_if_version(&mut c, "k", "b", 0).await,
        Code::FailedPrecondition,
        &[],
    );
    let g = get(&mut c, "k").await;
    assert_eq!((g.value, g.version), (b("a"), v1));
    let v2 = put_if_version(&mut c, "k", "b", v1)
        .await
        .expect("CAS with the current version");
    assert!(v2 > v1);
    // The old version no longer matches.
    assert_status(
        put_if_version(&mut c, "k", "c", v1).await,
        Code::FailedPrecondition,
        &[],
    );
    let g = get(&mut c, "k").await;
    assert_eq!((g.value, g.version), (b("b"), v2));
    // A deleted key has no version to match (not even the tombstone's).
    let d = delete(&mut c, "k", None).await.unwrap();
    assert_status(
        put_if_version(&mut c, "k", "d", d.version).await,
        Code::FailedPrecondition,
        &[],
    );
    assert_status(
        put_if_version(&mut c, "k", "d", v2).await,
        Code::FailedPrecondition,
        &[],
    );
    assert!(absent(&get(&mut c, "k").await));
}

#[tokio::test]
async fn delete_if_version_deletes_only_on_match() {
    let (_d, _s, mut c) = start().await;
    let v1 = put(&mut c, "k", "a").await;
    assert_status(
        delete(&mut c, "k", Some(v1 + 1)).await,
        Code::FailedPrecondition,
        &[],
    );
    assert_status(
        delete(&mut c, "k", Some(0)).await,
        Code::FailedPrecondition,
        &[],
    );
    let g = get(&mut c, "k").await;
    assert_eq!(
        (g.value, g.version),
        (b("a"), v1),
        "failed conditional delete changes nothing"
    );
    let d = delete(&mut c, "k", Some(v1))
        .await
        .expect("delete with matching version");
    assert!(d.found && d.version > v1);
    assert!(absent(&get(&mut c, "k").await));
    // Conditional delete of an absent key: no version to match.
    assert_status(
        delete(&mut c, "k", Some(d.version)).await,
        Code::FailedPrecondition,
        &[],
    );
    assert_status(
        delete(&mut c, "never", Some(1)).await,
        Code::FailedPrecondition,
        &[],
    );
}

#[tokio::test]
async fn delete_of_absent_key_succeeds_with_found_false() {
    let (_d, _s, mut c) = start().await;
    let d = delete(&mut c, "nope", None)
        .await
        .expect("unconditional delete of absent key");
    assert!(!d.found);
    assert!(d.version >= 1);
    put(&mut c, "k", "v").await;
    assert!(delete(&mut c, "k", None).await.unwrap().found);
    let again = delete(&mut c, "k", None).await.unwrap();
    assert!(
        !again.found,
        "deleting an already deleted key finds nothing"
    );
}

// ---------------------------------------------------------------------------------------
// TTL

#[tokio::test]
async fn ttl_key_expires_in_get_batch_get_scan_and_conditions() {
    let (_d, _s, mut c) = start().await;
    let mut r = put_req("ttl/short", "soon gone");
    r.ttl_ms = 300;
    let vt = c.put(r).await.unwrap().into_inner().version;
    let mut r = put_req("ttl/long", "stays");
    r.ttl_ms = 3_600_000;
    let vl = c.put(r).await.unwrap().into_inner().version;
    let vp = put(&mut c, "ttl/plain", "forever").await;

    // Visible right away.
    let g = get(&mut c, "ttl/short").await;
    assert!(g.found && g.version == vt && g.value == b("soon gone"));
    assert_status(
        put_if_absent(&mut c, "ttl/short", "x").await,
        Code::FailedPrecondition,
        &[],
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;

    assert!(
        absent(&get(&mut c, "ttl/short").await),
        "expired key must read as absent"
    );
    let bg = batch_get(&mut c, &[b"ttl/long", b"ttl/short", b"ttl/plain"]).await;
    assert_eq!(bg.len(), 3);
    assert!(bg[0].found && bg[0].version == vl);
    assert!(absent(&bg[1]), "expired key in batch get: {:?}", bg[1]);
    assert!(bg[2].found && bg[2].version == vp);
    let (entries, _) = scan(&mut c, scan_req(b"", b"", b"ttl/", 0)).await;
    assert_eq!(
        keys_of(&entries),
        vec![b"ttl/long".to_vec(), b"ttl/plain".to_vec()]
    );
    // An expired key has no version to match.
    assert_status(
        put_if_version(&mut c, "ttl/short", "y", vt).await,
        Code::FailedPrecondition,
        &[],
    );
    assert_status(
        delete(&mut c, "ttl/short", Some(vt)).await,
        Code::FailedPrecondition,
        &[],
    );
    // And if_absent holds on it.
    let v = put_if_absent(&mut c, "ttl/short", "reborn")
        .await
        .expect("if_absent on expired key");
    assert!(v > vp);
    let g = get(&mut c, "ttl/short").await;
    assert!(g.found && g.version == v && g.value == b("reborn"));
    // The new value has no TTL: still there a bit later.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(get(&mut c, "ttl/short").await.found);
}

#[tokio::test]
async fn overwriting_a_ttl_key_without_ttl_makes_it_permanent() {
    let (_d, _s, mut c) = start().await;
    let mut r = put_req("k", "temp");
    r.ttl_ms = 300;
    c.put(r).await.unwrap();
    let v = put(&mut c, "k", "perm").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let g = get(&mut c, "k").await;
    assert!(g.found && g.version == v && g.value == b("perm"));
}

// ---------------------------------------------------------------------------------------
// batches

#[tokio::test]
async fn batch_get_returns_results_in_request_order_including_missing_keys() {
    let (_d, _s, mut c) = start().await;
    let va = put(&mut c, "a", "A").await;
    let vc = put(&mut c, "c", "C").await;
    let ve = put(&mut c, "e", "E").await;
    let r = batch_get(&mut c, &[b"e", b"missing1", b"a", b"c", b"missing2", b"a"]).await;
    assert_eq!(r.len(), 6);
    assert!(r[0].found && r[0].value == b("E") && r[0].version == ve);
    assert!(absent(&r[1]));
    assert!(r[2].found && r[2].value == b("A") && r[2].version == va);
    assert!(r[3].found && r[3].value == b("C") && r[3].version == vc);
    assert!(absent(&r[4]));
    assert!(
        r[5].found && r[5].value == b("A") && r[5].version == va,
        "duplicates answered too"
    );
    // An empty batch is empty.
    assert!(batch_get(&mut c, &[]).await.is_empty());
}

#[tokio::test]
async fn batch_write_applies_all_ops_with_one_version_each_in_order() {
    let (_d, _s, mut c) = start().await;
    let v0 = put(&mut c, "gone", "x").await;
    let ops = vec![
        op_put(put_req("b1", "one")),
        op_put(put_req("b2", "two")),
        op_delete("gone", Some(v0)),
        op_put(put_req("b3", "three")),
    ];
    let versions = batch_write(&mut c, ops, pb::Durability::Durable)
        .await
        .unwrap();
    assert_eq!(versions.len(), 4, "one version per op");
    assert!(versions.iter().all(|&v| v > v0));
    let r = batch_get(&mut c, &[b"b1", b"b2", b"gone", b"b3"]).await;
    assert_eq!((r[0].value.clone(), r[0].version), (b("one"), versions[0]));
    assert_eq!((r[1].value.clone(), r[1].version), (b("two"), versions[1]));
    assert!(absent(&r[2]));
    assert_eq!(
        (r[3].value.clone(), r[3].version),
        (b("three"), versions[3])
    );
    // Later writes get higher versions than the whole batch.
    let v = put(&mut c, "after", "x").await;
    assert!(v > *versions.iter().max().unwrap());
}

#[tokio::test]
async fn batch_write_with_one_failed_condition_applies_nothing() {
    let (_d, _s, mut c) = start().await;
    let vx = put(&mut c, "x", "old-x").await;
    let vy = put(&mut c, "y", "old-y").await;
    let ops = vec![
        op_put(put_req("new1", "n1")),
        op_put(put_req("x", "new-x")),
        op_delete("y", None),
        op_put(pb::PutRequest {
            condition: Some(pb::put_request::Condition::IfVersion(vy + 1000)),
            ..put_req("y", "cas")
        }),
        op_put(put_req("new2", "n2")),
    ];
    assert_status(
        batch_write(&mut c, ops, pb::Durability::Durable).await,
        Code::FailedPrecondition,
        &[],
    );
    let r = batch_get(&mut c, &[b"new1", b"x", b"y", b"new2"]).await;
    assert!(
        absent(&r[0]),
        "no op of a failed batch is applied: {:?}",
        r[0]
    );
    assert_eq!((r[1].value.clone(), r[1].version), (b("old-x"), vx));
    assert_eq!((r[2].value.clone(), r[2].version), (b("old-y"), vy));
    assert!(absent(&r[3]));

    // Same with a failing if_absent, and with a failing conditional delete.
    let ops = vec![
        op_put(put_req("new1", "n1")),
        op_put(pb::PutRequest {
            condition: Some(pb::put_request::Condition::IfAbsent(true)),
            ..put_req("x", "x2")
        }),
    ];
    assert_status(
        batch_write(&mut c, ops, pb::Durability::Durable).await,
        Code::FailedPrecondition,
        &[],
    );
    let ops = vec![op_put(put_req("new1", "n1")), op_delete("x", Some(vx + 1))];
    assert_status(
        batch_write(&mut c, ops, pb::Durability::Buffered).await,
        Code::FailedPrecondition,
        &[],
    );
    let r = batch_get(&mut c, &[b"new1", b"x"]).await;
    assert!(absent(&r[0]));
    assert_eq!((r[1].value.clone(), r[1].version), (b("old-x"), vx));
    // The failed batches consumed nothing visible: the next write's version is above all.
    let v = put(&mut c, "z", "z").await;
    assert!(v > vy);
}

#[tokio::test]
async fn batch_write_with_one_invalid_op_is_rejected_and_applies_nothing() {
    let (_d, _s, mut c) = start().await;
    let vx = put(&mut c, "x", "old-x").await;
    let cases: Vec<(Vec<pb::WriteOp>, &[&str])> = vec![
        (
            vec![
                op_put(put_req("ok1", "v")),
                op_put(put_req("x", "new")),
                op_put(put_req("", "empty key")),
            ],
            &["key", "4096"],
        ),
        (
            vec![
                op_put(put_req("ok1", "v")),
                op_put(put_req("x", vec![0u8; 1_048_577])),
            ],
            &["value", "1048576"],
        ),
        (
            vec![
                op_put(put_req("ok1", "v")),
                op_delete(vec![b'k'; 4097], None),
            ],
            &["key", "4096"],
        ),
        (
            vec![op_put(put_req("ok1", "v")), pb::WriteOp { op: None }],
            &[],
        ),
    ];
    for (ops, needles) in cases {
        assert_status(
            batch_write(&mut c, ops, pb::Durability::Durable).await,
            Code::InvalidArgument,
            needles,
        );
        let r = batch_get(&mut c, &[b"ok1", b"x"]).await;
        assert!(absent(&r[0]), "nothing of an invalid batch is applied");
        assert_eq!((r[1].value.clone(), r[1].version), (b("old-x"), vx));
    }
}

#[tokio::test]
async fn batch_write_conditions_are_checked_against_the_state_before_the_batch() {
    let (_d, _s, mut c) = start().await;
    let va = put(&mut c, "a", "a0").await;
    // `n` is absent before the batch: a put followed by an if_absent put of the same key both
    // see "absent" (the state before the batch), so the batch succeeds.
    let ops = vec![
        op_put(put_req("n", "first")),
        op_put(pb::PutRequest {
            condition: Some(pb::put_request::Condition::IfAbsent(true)),
            ..put_req("n", "second")
        }),
        // `a` had version va before the batch; an earlier op in the batch writing `a` does not
        // change what the condition is checked against.
        op_put(put_req("a", "a1")),
        op_put(pb::PutRequest {
            condition: Some(pb::put_request::Condition::IfVersion(va)),
            ..put_req("a", "a2")
        }),
    ];
    let versions = batch_write(&mut c, ops, pb::Durability::Durable)
        .await
        .expect("conditions hold against the pre-batch state");
    assert_eq!(versions.len(), 4);
    // The last op on a key wins.
    let r = batch_get(&mut c, &[b"n", b"a"]).await;
    assert_eq!(
        (r[0].value.clone(), r[0].version),
        (b("second"), versions[1])
    );
    assert_eq!((r[1].value.clone(), r[1].version), (b("a2"), versions[3]));

    // Conversely, a condition that only the batch's own earlier op would satisfy fails:
    // `m` is absent before the batch, so if_version of the version the first op will get
    // cannot hold.
    let next_guess = versions[3] + 1;
    let ops = vec![
        op_put(put_req("m", "m1")),
        op_put(pb::PutRequest {
            condition: Some(pb::put_request::Condition::IfVersion(next_guess)),
            ..put_req("m", "m2")
        }),
    ];
    assert_status(
        batch_write(&mut c, ops, pb::Durability::Durable).await,
        Code::FailedPrecondition,
        &[],
    );
    assert!(absent(&get(&mut c, "m").await));
}

// Multi-threaded: `terminate`/`kill9` block the test thread, and the client connection
// must keep answering the server's graceful-shutdown PING meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_write_ignores_per_op_durability_buffered_inside_durable_batch() {
    // The batch is DURABLE while every op says BUFFERED: the batch's durability applies, so
    // once acknowledged the ops survive kill -9.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path());
    let mut c = s.client().await;
    let ops: Vec<_> = (0..10)
        .map(|i| {
            op_put(pb::PutRequest {
                durability: pb::Durability::Buffered as i32,
                ..put_req(format!("k{i}"), format!("v{i}"))
            })
        })
        .collect();
    let versions = batch_write(&mut c, ops, pb::Durability::Durable)
        .await
        .unwrap();
    drop(c);
    s.kill9();
    let s2 = Server::start(dir.path());
    let mut c = s2.client().await;
    assert_eq!(versions.len(), 10);
    for (i, version) in versions.iter().enumerate() {
        let g = get(&mut c, format!("k{i}")).await;
        assert!(
            g.found,
            "op {i} of an acknowledged durable batch lost after kill -9"
        );
        assert_eq!((g.value, g.version), (b(format!("v{i}")), *version));
    }
}

#[tokio::test]
async fn batch_write_of_40_values_of_1_mib_is_accepted() {
    let (_d, _s, mut c) = start().await;
    let value = |i: usize| -> Vec<u8> {
        let mut v = vec![(i as u8).wrapping_mul(7); 1_048_576];
        v[0] = i as u8;
        v[1_048_575] = !(i as u8);
        v
    };
    let ops: Vec<_> = (0..40)
        .map(|i| op_put(put_req(format!("big{i:02}"), value(i))))
        .collect();
    let versions = batch_write(&mut c, ops, pb::Durability::Durable)
        .await
        .expect("a ~40 MiB batch must be accepted");
    assert_eq!(versions.len(), 40);
    let keys: Vec<String> = (0..40).map(|i| format!("big{i:02}")).collect();
    let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let r = batch_get(&mut c, &key_refs).await;
    assert_eq!(r.len(), 40);
    for (i, g) in r.iter().enumerate() {
        assert!(g.found, "big{i:02} missing");
        assert_eq!(g.version, versions[i]);
        assert!(
            g.value.as_ref() == value(i).as_slice(),
            "big{i:02} value differs"
        );
    }
}

// ---------------------------------------------------------------------------------------
// scans

/// Writes `n` keys `{prefix}{i:05}` with value `v{i}`; returns their versions.
async fn fill(c: &mut Kv, prefix: &str, n: usize) -> Vec<u64> {
    let mut versions = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| op_put(put_req(format!("{prefix}{i:05}"), format!("v{i}"))))
            .collect();
        versions.extend(batch_write(c, ops, pb::Durability::Durable).await.unwrap());
    }
    versions
}

#[tokio::test]
async fn scan_returns_every_key_in_ascending_order_across_several_chunks() {
    let (_d, _s, mut c) = start().await;
    // Write in a shuffled order, so the store has to sort.
    let n = 1000usize;
    let mut order: Vec<usize> = (0..n).collect();
    use rand::seq::SliceRandom;
    order.shuffle(&mut rand::rng());
    let mut versions = vec![0u64; n];
    for chunk in order.chunks(250) {
        let ops = chunk
            .iter()
            .map(|i| op_put(put_req(format!("s/{i:05}"), format!("v{i}"))))
            .collect();
        let vs = batch_write(&mut c, ops, pb::Durability::Durable)
            .await
            .unwrap();
        for (i, v) in chunk.iter().zip(vs) {
            versions[*i] = v;
        }
    }
    // Keys outside the range of interest on both sides.
    put(&mut c, "r", "before").await;
    put(&mut c, "t", "after").await;
    let (entries, chunks) = scan(&mut c, scan_req(b"", b"", b"s/", 0)).await;
    assert!(
        chunks > 1,
        "a scan of {n} entries should span several chunks (got {chunks})"
    );
    assert_eq!(entries.len(), n);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.key, b(format!("s/{i:05}")));
        assert_eq!(e.value, b(format!("v{i}")));
        assert_eq!(e.version, versions[i]);
    }
    // Empty bounds = unbounded: everything, in order.
    let (all, _) = scan(&mut c, scan_req(b"", b"", b"", 0)).await;
    assert_eq!(all.len(), n + 2);
    assert_eq!(all.first().unwrap().key, b("r"));
    assert_eq!(all.last().unwrap().key, b("t"));
    assert!(
        all.windows(2).all(|w| w[0].key < w[1].key),
        "strictly ascending"
    );
}

#[tokio::test]
async fn scan_limit_counts_entries_across_the_whole_stream() {
    let (_d, _s, mut c) = start().await;
    let versions = fill(&mut c, "l/", 1000).await;
    for limit in [1u32, 255, 256, 257, 300, 600, 999, 1000, 1001, 5000] {
        let (entries, _) = scan(&mut c, scan_req(b"", b"", b"", limit)).await;
        let want = (limit as usize).min(1000);
        assert_eq!(entries.len(), want, "limit {limit}");
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.key,
                b(format!("l/{i:05}")),
                "limit {limit}: the first N in order"
            );
            assert_eq!(e.version, versions[i]);
        }
    }
    // Limit together with a start bound.
    let (entries, _) = scan(&mut c, scan_req(b"l/00500", b"", b"", 300)).await;
    assert_eq!(entries.len(), 300);
    assert_eq!(entries[0].key, b("l/00500"));
    assert_eq!(entries[299].key, b("l/00799"));
}

#[tokio::test]
async fn scan_intersects_prefix_with_start_end_range() {
    let (_d, _s, mut c) = start().await;
    for p in ["a/", "b/", "c/"] {
        fill(&mut c, p, 50).await;
    }
    let k = |p: &str, i: usize| format!("{p}{i:05}").into_bytes();
    // Range inside the prefix.
    let (e, _) = scan(&mut c, scan_req(&k("b/", 10), &k("b/", 20), b"b/", 0)).await;
    assert_eq!(
        keys_of(&e),
        (10..20).map(|i| k("b/", i)).collect::<Vec<_>>()
    );
    // Range wider than the prefix: the prefix bounds it.
    let (e, _) = scan(&mut c, scan_req(b"a/00040", b"c/00005", b"b/", 0)).await;
    assert_eq!(keys_of(&e), (0..50).map(|i| k("b/", i)).collect::<Vec<_>>());
    // Range overlapping the prefix's start.
    let (e, _) = scan(&mut c, scan_req(b"a/00040", b"b/00003", b"b/", 0)).await;
    assert_eq!(keys_of(&e), (0..3).map(|i| k("b/", i)).collect::<Vec<_>>());
    // Range overlapping the prefix's end.
    let (e, _) = scan(&mut c, scan_req(b"b/00047", b"c/00003", b"b/", 0)).await;
    assert_eq!(
        keys_of(&e),
        (47..50).map(|i| k("b/", i)).collect::<Vec<_>>()
    );
    // Start only / end only.
    let (e, _) = scan(&mut c, scan_req(b"c/00045", b"", b"", 0)).await;
    assert_eq!(
        keys_of(&e),
        (45..50).map(|i| k("c/", i)).collect::<Vec<_>>()
    );
    let (e, _) = scan(&mut c, scan_req(b"", b"a/00003", b"", 0)).await;
    assert_eq!(keys_of(&e), (0..3).map(|i| k("a/", i)).collect::<Vec<_>>());
    // Disjoint range and prefix: empty.
    let (e, _) = scan(&mut c, scan_req(b"c/", b"", b"b/", 0)).await;
    assert!(e.is_empty(), "{:?}", keys_of(&e));
    let (e, _) = scan(&mut c, scan_req(b"", b"b/", b"b/", 0)).await;
    assert!(e.is_empty(), "{:?}", keys_of(&e));
    // A prefix nobody has.
    let (e, _) = scan(&mut c, scan_req(b"", b"", b"zz", 0)).await;
    assert!(e.is_empty());
    // Prefix + limit.
    let (e, _) = scan(&mut c, scan_req(b"", b"", b"c/", 7)).await;
    assert_eq!(keys_of(&e), (0..7).map(|i| k("c/", i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn scan_with_start_not_below_end_is_empty() {
    let (_d, _s, mut c) = start().await;
    fill(&mut c, "e/", 20).await;
    let (e, _) = scan(&mut c, scan_req(b"e/00010", b"e/00010", b"", 0)).await;
    assert!(e.is_empty(), "start == end: {:?}", keys_of(&e));
    let (e, _) = scan(&mut c, scan_req(b"e/00015", b"e/00005", b"", 0)).await;
    assert!(e.is_empty(), "start > end: {:?}", keys_of(&e));
    let (e, _) = scan(&mut c, scan_req(b"e/00015", b"e/00005", b"e/", 0)).await;
    assert!(e.is_empty(), "start > end with prefix: {:?}", keys_of(&e));
}

#[tokio::test]
async fn scan_skips_deleted_keys_and_returns_latest_versions() {
    let (_d, _s, mut c) = start().await;
    let vs = fill(&mut c, "d/", 10).await;
    delete(&mut c, "d/00003", None).await.unwrap();
    delete(&mut c, "d/00007", None).await.unwrap();
    let v5 = put(&mut c, "d/00005", "new5").await;
    let (e, _) = scan(&mut c, scan_req(b"", b"", b"d/", 0)).await;
    let want: Vec<usize> = vec![0, 1, 2, 4, 5, 6, 8, 9];
    assert_eq!(
        keys_of(&e),
        want.iter()
            .map(|i| format!("d/{i:05}").into_bytes())
            .collect::<Vec<_>>()
    );
    for kv in &e {
        if kv.key == b("d/00005") {
            assert_eq!((kv.value.clone(), kv.version), (b("new5"), v5));
        } else {
            let i: usize = std::str::from_utf8(&kv.key[2..]).unwrap().parse().unwrap();
            assert_eq!(kv.version, vs[i]);
        }
    }
}

#[tokio::test]
async fn scan_with_all_ff_prefix_and_binary_keys() {
    let (_d, _s, mut c) = start().await;
    let keys: Vec<Vec<u8>> = vec![
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x7f, 0xff],
        vec![0xfe, 0xff],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0xff],
    ];
    for k in keys.iter().rev() {
        put(&mut c, k, b"x").await;
    }
    let (e, _) = scan(&mut c, scan_req(b"", b"", &[0xff], 0)).await;
    assert_eq!(keys_of(&e), keys[4..].to_vec());
    let (e, _) = scan(&mut c, scan_req(b"", b"", &[0xff, 0xff], 0)).await;
    assert_eq!(keys_of(&e), keys[6..].to_vec());
    let (e, _) = scan(&mut c, scan_req(b"", b"", b"", 0)).await;
    assert_eq!(keys_of(&e), keys, "bytewise ascending order");
}

// ---------------------------------------------------------------------------------------
// limits and bad input

#[tokio::test]
async fn value_of_exactly_1_mib_round_trips_and_one_byte_more_is_rejected() {
    let (_d, _s, mut c) = start().await;
    let value: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let v = put(&mut c, "max", &value).await;
    let g = get(&mut c, "max").await;
    assert!(g.found && g.version == v);
    assert!(
        g.value.as_ref() == value.as_slice(),
        "1 MiB value did not round-trip"
    );

    let mut too_big = value.clone();
    too_big.push(0);
    assert_status(
        c.put(put_req("too-big", &too_big)).await,
        Code::InvalidArgument,
        &["value", "1048576"],
    );
    assert!(absent(&get(&mut c, "too-big").await));
    // Nor may it overwrite an existing key.
    assert_status(
        c.put(put_req("max", &too_big)).await,
        Code::InvalidArgument,
        &["value", "1048576"],
    );
    assert_eq!(get(&mut c, "max").await.version, v);
}

#[tokio::test]
async fn key_of_4096_bytes_is_accepted_and_4097_or_empty_is_rejected() {
    let (_d, _s, mut c) = start().await;
    let max_key = vec![b'k'; 4096];
    let v = put(&mut c, &max_key, "v").await;
    let g = get(&mut c, &max_key).await;
    assert!(g.found && g.version == v && g.value == b("v"));
    let (e, _) = scan(&mut c, scan_req(b"", b"", b"", 0)).await;
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key.len(), 4096);

    let long_key = vec![b'k'; 4097];
    for key in [long_key.clone(), Vec::new()] {
        let n = key.len();
        assert_status(
            c.put(put_req(&key, "v")).await,
            Code::InvalidArgument,
            &["key", "4096"],
        );
        assert_status(
            c.get(pb::GetRequest {
                key: b(&key),
                consistency: 0,
            })
            .await,
            Code::InvalidArgument,
            &["key", "4096"],
        );
        assert_status(
            delete(&mut c, &key, None).await,
            Code::InvalidArgument,
            &["key", "4096"],
        );
        assert_status(
            c.batch_get(pb::BatchGetRequest {
                keys: vec![b("fine"), b(&key)],
                consistency: 0,
            })
            .await,
            Code::InvalidArgument,
            &["key", "4096"],
        );
        let _ = n;
    }
    let (e, _) = scan(&mut c, scan_req(b"", b"", b"", 0)).await;
    assert_eq!(e.len(), 1, "rejected writes must not land");
}

#[tokio::test]
async fn unknown_enum_values_are_invalid_argument() {
    let (_d, _s, mut c) = start().await;
    assert_status(
        c.get(pb::GetRequest {
            key: b("k"),
            consistency: 99,
        })
        .await,
        Code::InvalidArgument,
        &["consistency"],
    );
    assert_status(
        c.put(pb::PutRequest {
            durability: 99,
            ..put_req("k", "v")
        })
        .await,
        Code::InvalidArgument,
        &["durability"],
    );
    let r = c
        .batch_write(pb::BatchWriteRequest {
            ops: vec![op_put(put_req("k2", "v"))],
            durability: 99,
        })
        .await;
    assert_status(r, Code::InvalidArgument, &["durability"]);
    assert!(absent(&get(&mut c, "k2").await));
}

// ---------------------------------------------------------------------------------------
// durability modes

#[tokio::test]
async fn buffered_writes_are_readable() {
    let (_d, _s, mut c) = start().await;
    let mut last = 0;
    for i in 0..50 {
        let v = c
            .put(pb::PutRequest {
                durability: pb::Durability::Buffered as i32,
                ..put_req(format!("buf{i:03}"), format!("v{i}"))
            })
            .await
            .unwrap()
            .into_inner()
            .version;
        assert!(v > last);
        last = v;
        let g = get(&mut c, format!("buf{i:03}")).await;
        assert!(g.found && g.version == v && g.value == b(format!("v{i}")));
    }
    let d = c
        .delete(pb::DeleteRequest {
            key: b("buf000"),
            if_version: None,
            durability: pb::Durability::Buffered as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.found && d.version > last);
    assert!(absent(&get(&mut c, "buf000").await));
    let vs = batch_write(
        &mut c,
        vec![op_put(put_req("bb1", "1")), op_put(put_req("bb2", "2"))],
        pb::Durability::Buffered,
    )
    .await
    .unwrap();
    let r = batch_get(&mut c, &[b"bb1", b"bb2"]).await;
    assert_eq!(r[0].version, vs[0]);
    assert_eq!(r[1].version, vs[1]);
    let (e, _) = scan(&mut c, scan_req(b"", b"", b"buf", 0)).await;
    assert_eq!(e.len(), 49);
}

// ---------------------------------------------------------------------------------------
// health and reflection

#[tokio::test]
async fn health_reports_serving_for_overall_and_kv_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let ch = Channel::from_shared(s.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch);
    for service in ["", "strata.v1.KV"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health check of {service:?}: {e}"))
            .into_inner();
        assert_eq!(
            r.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let unknown = h
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_status(unknown, Code::NotFound, &[]);
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_kv_service() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let ch = Channel::from_shared(s.url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // v1
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut rc = ServerReflectionClient::new(ch.clone());
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol("strata.v1.KV".into())),
            },
        ];
        let mut stream = rc
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .expect("reflection v1")
            .into_inner();
        let first = stream
            .message()
            .await
            .unwrap()
            .expect("list services response");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("unexpected reflection response {first:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.iter().any(|n| n == "strata.v1.KV"),
            "services: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "services: {names:?}"
        );
        let second = stream
            .message()
            .await
            .unwrap()
            .expect("file containing symbol");
        let Some(MessageResponse::FileDescriptorResponse(fd)) = second.message_response else {
            panic!("unexpected reflection response {second:?}");
        };
        assert!(!fd.file_descriptor_proto.is_empty());
        let joined: Vec<u8> = fd.file_descriptor_proto.concat();
        assert!(
            joined
                .windows(b"PutRequest".len())
                .any(|w| w == b"PutRequest"),
            "descriptor of strata.v1.KV lacks PutRequest"
        );
    }
    // v1alpha
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut rc = ServerReflectionClient::new(ch);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = rc
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        let first = stream
            .message()
            .await
            .unwrap()
            .expect("list services response");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("unexpected reflection response {first:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.iter().any(|n| n == "strata.v1.KV"),
            "services: {names:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// restart

// Multi-threaded: `terminate`/`kill9` block the test thread, and the client connection
// must keep answering the server's graceful-shutdown PING meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigterm_reads_everything_back_with_same_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path());
    let mut c = s.client().await;
    let mut expect: Vec<(String, Option<(Bytes, u64)>)> = Vec::new();
    for i in 0..300 {
        let k = format!("r/{i:04}");
        let val = format!("value {i} {}", "x".repeat(i % 50));
        let v = put(&mut c, &k, &val).await;
        expect.push((k, Some((b(val), v))));
    }
    // Overwrites, deletes, a buffered write, a batch.
    for i in (0..300).step_by(7) {
        let v = put(&mut c, &expect[i].0.clone(), "overwritten").await;
        expect[i].1 = Some((b("overwritten"), v));
    }
    for i in (3..300).step_by(11) {
        delete(&mut c, &expect[i].0.clone(), None).await.unwrap();
        expect[i].1 = None;
    }
    let vb = c
        .put(pb::PutRequest {
            durability: pb::Durability::Buffered as i32,
            ..put_req("r/buffered", "b")
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    expect.push(("r/buffered".into(), Some((b("b"), vb))));
    let vs = batch_write(
        &mut c,
        vec![
            op_put(put_req("r/batch1", "1")),
            op_put(put_req("r/batch2", "2")),
        ],
        pb::Durability::Durable,
    )
    .await
    .unwrap();
    expect.push(("r/batch1".into(), Some((b("1"), vs[0]))));
    expect.push(("r/batch2".into(), Some((b("2"), vs[1]))));
    let max_version = *vs.iter().max().unwrap();
    drop(c);

    let t = Instant::now();
    assert!(
        s.terminate(),
        "SIGTERM must exit cleanly (code 0); log:\n{}",
        s.log_text()
    );
    eprintln!("clean shutdown took {:?}", t.elapsed());

    let s2 = Server::start(dir.path());
    let mut c = s2.client().await;
    for (k, want) in &expect {
        let g = get(&mut c, k).await;
        match want {
            Some((val, v)) => {
                assert!(g.found, "{k} lost across restart");
                assert_eq!((&g.value, g.version), (val, *v), "{k}");
            }
            None => assert!(absent(&g), "{k} was deleted but reads {g:?}"),
        }
    }
    let (e, _) = scan(&mut c, scan_req(b"", b"", b"r/", 0)).await;
    assert_eq!(e.len(), expect.iter().filter(|(_, w)| w.is_some()).count());
    // New versions continue above the old ones.
    let v = put(&mut c, "r/new", "n").await;
    assert!(
        v > max_version,
        "version {v} after restart is not above {max_version}"
    );
    let d = delete(&mut c, "r/0001", None).await.unwrap();
    assert!(d.version > v);
    // And a second restart keeps that too.
    drop(c);
    let mut s2 = s2;
    assert!(s2.terminate(), "second SIGTERM; log:\n{}", s2.log_text());
    let s3 = Server::start(dir.path());
    let mut c = s3.client().await;
    let g = get(&mut c, "r/new").await;
    assert!(g.found && g.version == v);
    assert!(absent(&get(&mut c, "r/0001").await));
    assert!(put(&mut c, "r/newer", "n").await > d.version);
}

/// Every error answer carries a machine-readable reason in `strata-error-reason`, so clients
/// branch on it instead of parsing messages; the codes stay what they were.
#[tokio::test]
async fn error_answers_carry_a_machine_readable_reason() {
    use strata_proto::reason;
    let (_d, _s, mut c) = start().await;
    #[track_caller]
    fn reason_is(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, want: &str) {
        let s = r.expect_err("an error answer");
        assert_eq!(s.code(), code, "{}", s.message());
        assert_eq!(reason::reason_of(&s), Some(want), "{s:?}");
    }
    reason_is(
        c.put(put_req(vec![b'k'; 5000], "v")).await,
        Code::InvalidArgument,
        reason::KEY_TOO_LARGE,
    );
    reason_is(
        c.put(put_req("k", vec![0u8; (1 << 20) + 1])).await,
        Code::InvalidArgument,
        reason::VALUE_TOO_LARGE,
    );
    reason_is(
        c.put(put_req(&b"\xff\xffstrata/x"[..], "v")).await,
        Code::InvalidArgument,
        reason::RESERVED_KEY,
    );
    reason_is(
        c.get(pb::GetRequest {
            key: b("k"),
            consistency: 99,
        })
        .await,
        Code::InvalidArgument,
        reason::INVALID_ARGUMENT,
    );
    let keys = (0..10_001).map(|i| b(format!("k{i}"))).collect();
    reason_is(
        c.batch_get(pb::BatchGetRequest {
            keys,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        reason::BATCH_TOO_LARGE,
    );
    put(&mut c, "exists", "v").await;
    reason_is(
        put_if_absent(&mut c, "exists", "again").await,
        Code::FailedPrecondition,
        reason::CONDITION_FAILED,
    );
    // Over the message limit: tests/resources.rs; a write stall and a full disk there too.
}

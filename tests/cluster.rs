//! Strata as a cluster: several real `strata serve` nodes on loopback sharing one real etcd
//! (infra/etcd.sh) and one real S3-compatible server (infra/s3-server).
//!
//! - `kill -9` of a partition owner in the middle of concurrent writes through every node:
//!   every acknowledged write reads back from every surviving node; the time from the kill to
//!   the first successful write on a moved partition is printed;
//! - a node frozen with SIGSTOP past its lease and resumed serves no stale read, acknowledges
//!   nothing it should not, and steps down by itself;
//! - a linearizability check of single-key reads, writes and compare-and-sets across a failover;
//! - adding a node and draining a node under load: the client library sees no error;
//! - etcd and the S3 server restarting under load: `UNAVAILABLE` while down (never a hang
//!   past the deadline), nothing acknowledged lost, service back by itself;
//! - `BatchWrite`s spanning partitions stay all-or-nothing (and never seen half-applied)
//!   across a `kill -9`, and a coordinator that dies after preparing or after deciding leaves
//!   neither half a transaction nor a locked key.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_compute::pb;
use strata_compute::pb::kv_client::KvClient;
use strata_testkit::cluster::{infra, key_in, owned_by};
use strata_testkit::infra::BUCKET;
use strata_testkit::kv::{try_get, try_put, Kv};
use strata_testkit::{bin, linearize, Acked, Cluster, Server, ServerOpts};
use tonic::transport::Channel;

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Writes unique keys through node `first` (moving to the next live node when a node stops
/// answering) until `stop`; records every acknowledged write.
async fn writer(
    id: usize,
    addrs: Vec<String>,
    first: usize,
    acked: Arc<Acked>,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let mut which = first;
    let connect = |a: &str| {
        let ch = Channel::from_shared(format!("http://{a}"))
            .expect("url")
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        KvClient::new(ch)
    };
    let mut c = connect(&addrs[which]);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = Bytes::from(format!("w{id}-{n:06}"));
        let value = Bytes::from(format!("value of w{id}-{n} {}", "x".repeat(n % 200)));
        match try_put(&mut c, key.clone(), value.clone(), Duration::from_secs(15)).await {
            Ok(_) => {
                ok += 1;
                acked.record_value(key, value);
            }
            Err(_) => {
                failed += 1;
                which = (which + 1) % addrs.len();
                c = connect(&addrs[which]);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_an_owner_mid_load_loses_no_acknowledged_write() {
    let Some((s3, etcd)) = infra() else { return };
    let mut c = Cluster::start(&s3, &etcd, 3, "kill9");
    let m = c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let partitions = m.partitions;
    // The victim: the node owning the most partitions.
    let victim = (0..3)
        .max_by_key(|&i| owned_by(&m, &c.ids[i]).len())
        .expect("three nodes");
    let moved = owned_by(&m, &c.ids[victim]);
    assert!(!moved.is_empty());
    let addrs: Vec<String> = (0..3).map(|i| c.node(i).addr.clone()).collect();
    let acked = Arc::new(Acked::new());
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = strata_testkit::StopOnDrop(stop.clone());
    let writers: Vec<_> = (0..6)
        .map(|w| tokio::spawn(writer(w, addrs.clone(), w % 3, acked.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let survivor = (victim + 1) % 3;
    let before_kill = acked.len();
    c.kill9(victim);
    let killed_at = Instant::now();
    // First successful write to a partition that lived on the victim, through a survivor.
    let mut probe = c.client(survivor).await;
    let mut n = 0;
    let failover = loop {
        n += 1;
        let k = key_in(moved[n % moved.len()], partitions, "probe", n);
        match try_put(
            &mut probe,
            k,
            Bytes::from_static(b"p"),
            Duration::from_secs(15),
        )
        .await
        {
            Ok(_) => break killed_at.elapsed(),
            Err(e) => {
                assert!(
                    killed_at.elapsed() < Duration::from_secs(30),
                    "no failover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    println!(
        "FAILOVER: first write to a moved partition succeeded {:.0} ms after kill -9 \
         ({} partitions moved)",
        failover.as_secs_f64() * 1000.0,
        moved.len()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in writers {
        let (o, f) = w.await.expect("writer");
        ok += o;
        failed += f;
    }
    println!("writers: {ok} acknowledged ({before_kill} before the kill), {failed} failed");
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    assert!(
        acked.len() > before_kill,
        "no write acknowledged after the kill"
    );
    for i in c.live() {
        c.verify_acked(i, &acked).await;
    }
    // Ownership converged on the survivors.
    let m = c
        .wait_settled(survivor, Duration::from_secs(10), |_| true)
        .await;
    assert!(owned_by(&m, &c.ids[victim]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_node_past_its_lease_serves_nothing_stale_and_steps_down() {
    let Some((s3, etcd)) = infra() else { return };
    let c = Cluster::start(&s3, &etcd, 3, "zombie");
    let m = c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let partitions = m.partitions;
    let zombie = (0..3)
        .max_by_key(|&i| owned_by(&m, &c.ids[i]).len())
        .expect("nodes");
    let other = (zombie + 1) % 3;
    let p = owned_by(&m, &c.ids[zombie])[0];
    let key = key_in(p, partitions, "register", 0);
    let mut via_zombie = c.client(zombie).await;
    let mut via_other = c.client(other).await;
    try_put(
        &mut via_zombie,
        key.clone(),
        Bytes::from_static(b"old"),
        Duration::from_secs(10),
    )
    .await
    .expect("first write");
    // Make sure the zombie serves `key` from memory: it has the value cached in its memtable.
    assert_eq!(
        try_get(&mut via_zombie, &key)
            .await
            .expect("read")
            .map(|g| g.0),
        Some(Bytes::from_static(b"old"))
    );

    signal(c.pid(zombie), "STOP");
    let frozen_at = Instant::now();
    // Writes sent to the frozen node while it is stopped: they queue in its socket.
    let stuck: Vec<_> = (0..4)
        .map(|n| {
            let mut cl = via_zombie.clone();
            let k = key_in(p, partitions, "stuck", n);
            tokio::spawn(async move {
                let r = try_put(
                    &mut cl,
                    k.clone(),
                    Bytes::from_static(b"s"),
                    Duration::from_secs(30),
                )
                .await;
                (k, r)
            })
        })
        .collect();
    // The others take the partition over and write a new value.
    let m2 = c
        .wait_settled(other, Duration::from_secs(20), |m| {
            owned_by(m, &c.ids[zombie]).is_empty()
        })
        .await;
    let new_owner = m2.owners[p as usize].node_id.clone();
    try_put(
        &mut via_other,
        key.clone(),
        Bytes::from_static(b"new"),
        Duration::from_secs(15),
    )
    .await
    .expect("write on the new owner");
    println!(
        "zombie {} frozen {:.1} s; partition {p} now on {new_owner}",
        c.ids[zombie],
        frozen_at.elapsed().as_secs_f64()
    );
    signal(c.pid(zombie), "CONT");

    // Its first answers after waking: never the stale value it still holds in memory.
    let got = try_get(&mut via_zombie, &key)
        .await
        .expect("read via the woken node");
    assert_eq!(
        got.map(|g| g.0),
        Some(Bytes::from_static(b"new")),
        "stale read from a zombie"
    );
    // Writes queued while it was frozen either failed or were applied by the new owner:
    // whatever was acknowledged is there.
    for s in stuck {
        let (k, r) = s.await.expect("stuck writer");
        if r.is_ok() {
            assert_eq!(
                try_get(&mut via_other, &k)
                    .await
                    .expect("read")
                    .map(|g| g.0),
                Some(Bytes::from_static(b"s")),
                "a write acknowledged after the freeze is missing"
            );
        }
    }
    // It stepped down by itself, rejoined, and serves again through the normal path.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.node(zombie).log_text().contains("stepping down") {
        assert!(
            Instant::now() < deadline,
            "the woken node never stepped down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = c.node(zombie).log_text();
    assert!(
        log.contains("rejoined the cluster") || log.contains("ownership moved without us"),
        "no rejoin in the log"
    );
    try_put(
        &mut via_zombie,
        key.clone(),
        Bytes::from_static(b"after"),
        Duration::from_secs(15),
    )
    .await
    .expect("write through the rejoined node");
    assert_eq!(
        try_get(&mut via_other, &key)
            .await
            .expect("read")
            .map(|g| g.0),
        Some(Bytes::from_static(b"after"))
    );
}

/// Writes and reads through the client library until `stop`; counts errors it surfaced.
async fn library_load(
    client: strata_client::Client,
    id: usize,
    acked: Arc<Acked>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = Bytes::from(format!("lib{id}-{n:06}"));
        let value = Bytes::from(format!("v{n}"));
        match client.put(key.clone(), value.clone()).await {
            Ok(_) => {
                acked.record_value(&key, &value);
            }
            Err(e) => errors.lock().unwrap().push(format!("put {key:?}: {e}")),
        }
        match client.get(key.clone()).await {
            Ok(Some((v, _))) if v == value => {}
            Ok(other) if acked.contains(&key) => errors
                .lock()
                .unwrap()
                .push(format!("get {key:?}: wrong answer {other:?}")),
            Ok(_) => {}
            Err(e) => errors.lock().unwrap().push(format!("get {key:?}: {e}")),
        }
        // Eventually consistent, through any node, yet it reads its own write (session).
        match client.get_eventual(key.clone()).await {
            Ok(Some((v, _))) if v == value => {}
            Ok(other) if acked.contains(&key) => errors.lock().unwrap().push(format!(
                "eventual get {key:?}: missed our own write: {other:?}"
            )),
            Ok(_) => {}
            Err(e) => errors
                .lock()
                .unwrap()
                .push(format!("eventual get {key:?}: {e}")),
        }
        ops.fetch_add(3, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_and_draining_nodes_under_load_surfaces_no_error() {
    let Some((s3, etcd)) = infra() else { return };
    let mut c = Cluster::start(&s3, &etcd, 2, "rebalance");
    c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let seeds = [c.node(0).addr.clone()];
    let client = strata_client::Client::connect(&[seeds[0].as_str()])
        .await
        .expect("client");
    let acked = Arc::new(Acked::new());
    let errors: Arc<Mutex<Vec<String>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = strata_testkit::StopOnDrop(stop.clone());
    let ops = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(library_load(
                client.clone(),
                i,
                acked.clone(),
                errors.clone(),
                stop.clone(),
                ops.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A third node joins: it gets about a third of the partitions.
    let added = c.add_node();
    let t = Instant::now();
    let m = c
        .wait_settled(0, Duration::from_secs(30), |m| {
            !owned_by(m, &c.ids[added]).is_empty()
        })
        .await;
    println!(
        "node {} joined and owns {} of {} partitions after {:.1} s",
        c.ids[added],
        owned_by(&m, &c.ids[added]).len(),
        m.partitions,
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Drain the first node: its partitions move away, it keeps running.
    let drained = c.ids[0].clone();
    c.ctl(&["drain", &drained]);
    let t = Instant::now();
    let m = c
        .wait_settled(1, Duration::from_secs(30), |m| {
            owned_by(m, &drained).is_empty()
        })
        .await;
    println!("{drained} drained after {:.1} s", t.elapsed().as_secs_f64());
    let status = c.ctl(&["status"]);
    assert!(
        status.contains("draining"),
        "status does not show the drain:\n{status}"
    );
    println!("{status}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let errors = errors.lock().unwrap().clone();
    println!(
        "{} ops through the client library, {} writes acknowledged, {} errors",
        ops.load(Ordering::Relaxed),
        acked.len(),
        errors.len()
    );
    assert!(errors.is_empty(), "errors reached the client: {errors:#?}");
    assert!(m.owners.iter().all(|o| o.node_id != drained));
    for i in c.live() {
        c.verify_acked(i, &acked).await;
    }
}

/// Writes unique keys through node 0 with a deadline, recording outcomes and how long each
/// failure took.
async fn deadline_writer(
    addr: String,
    id: usize,
    acked: Arc<Acked>,
    failures: Arc<Mutex<Vec<(tonic::Code, Duration)>>>,
    stop: Arc<AtomicBool>,
) {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_lazy();
    let mut c = KvClient::new(ch);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = Bytes::from(format!("d{id}-{n:06}"));
        let t = Instant::now();
        match try_put(
            &mut c,
            key.clone(),
            Bytes::from_static(b"v"),
            Duration::from_secs(4),
        )
        .await
        {
            Ok(_) => {
                acked.record_value(key, b"v");
            }
            Err(e) => {
                failures.lock().unwrap().push((e.code(), t.elapsed()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_and_s3_restarts_under_load_lose_nothing() {
    let Some((mut s3, mut etcd)) = infra() else {
        return;
    };
    let c = Cluster::start(&s3, &etcd, 2, "restarts");
    c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let addr = c.node(0).addr.clone();
    let acked = Arc::new(Acked::new());
    let failures: Arc<Mutex<Vec<(tonic::Code, Duration)>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = strata_testkit::StopOnDrop(stop.clone());
    let load: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(deadline_writer(
                addr.clone(),
                i,
                acked.clone(),
                failures.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let count = |a: &Acked| a.len();
    tokio::time::sleep(Duration::from_secs(1)).await;

    for round in ["etcd", "s3"] {
        let before = count(&acked);
        match round {
            "etcd" => etcd.kill9(),
            _ => s3.stop(),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        match round {
            "etcd" => etcd.restart(),
            _ => s3.restart(),
        }
        let back = Instant::now();
        let during = count(&acked);
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&acked) < during + 20 {
            assert!(
                Instant::now() < deadline,
                "writes did not resume after the {round} restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "{round} down 5 s: {} writes acknowledged before, writes resumed {:.1} s after it came back",
            before,
            back.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("writer");
    }
    let failures = failures.lock().unwrap().clone();
    let mut by_code: HashMap<String, usize> = HashMap::new();
    for (code, took) in &failures {
        *by_code.entry(format!("{code:?}")).or_default() += 1;
        assert!(
            *took < Duration::from_secs(6),
            "a request hung {took:?} past its 4 s deadline"
        );
        assert!(
            matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ),
            "unexpected failure code {code:?}"
        );
    }
    println!("failures while down: {by_code:?}");
    assert!(
        failures.iter().any(|(c, _)| *c == tonic::Code::Unavailable),
        "no UNAVAILABLE while etcd or S3 was down"
    );
    for i in c.live() {
        c.verify_acked(i, &acked).await;
    }
}

/// One client of the linearizability test: random reads, writes and compare-and-sets on a
/// few keys, through one node (the next one when it stops answering), every op recorded.
async fn register_client(
    id: usize,
    addrs: Vec<String>,
    keys: Vec<Bytes>,
    rec: linearize::Recorder,
    stop: Arc<AtomicBool>,
) {
    use linearize::OpKind;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64 * 7919 + 1);
    let connect = |a: &str| {
        let ch = Channel::from_shared(format!("http://{a}"))
            .expect("url")
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        KvClient::new(ch)
    };
    let mut which = id % addrs.len();
    let mut c = connect(&addrs[which]);
    let mut seen: HashMap<Bytes, u64> = HashMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = keys[rng.random_range(0..keys.len())].clone();
        let roll: u32 = rng.random_range(0..10);
        let failed = if roll < 4 {
            let p = rec.invoke(id, &key, OpKind::read());
            let mut req = tonic::Request::new(pb::GetRequest {
                key: key.clone(),
                consistency: pb::Consistency::Strong as i32,
            });
            req.set_timeout(Duration::from_secs(5));
            match c.get(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.found {
                        seen.insert(key.clone(), r.version);
                    }
                    p.read(r.found.then(|| (r.value.to_vec(), r.version)));
                    false
                }
                Err(_) => {
                    p.unknown();
                    true
                }
            }
        } else {
            let value = format!("c{id}-{n}").into_bytes();
            let expected = seen.get(&key).copied().filter(|_| roll >= 7);
            let (kind, condition) = match expected {
                Some(e) => (
                    OpKind::cas(e, &value),
                    Some(pb::put_request::Condition::IfVersion(e)),
                ),
                None => (OpKind::write(&value), None),
            };
            let p = rec.invoke(id, &key, kind);
            let mut req = tonic::Request::new(pb::PutRequest {
                key: key.clone(),
                value: Bytes::from(value),
                condition,
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(5));
            match c.put(req).await {
                Ok(r) => {
                    let v = r.into_inner().version;
                    seen.insert(key.clone(), v);
                    p.written(v);
                    false
                }
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    p.precondition_failed();
                    seen.remove(&key);
                    false
                }
                Err(s) if strata_compute::is_retry_safe(&s) => {
                    p.rejected();
                    true
                }
                Err(_) => {
                    p.unknown();
                    true
                }
            }
        };
        if failed {
            which = (which + 1) % addrs.len();
            c = connect(&addrs[which]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_key_histories_across_a_failover_are_linearizable() {
    let Some((s3, etcd)) = infra() else { return };
    let mut c = Cluster::start(&s3, &etcd, 3, "linearizable");
    let m = c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let victim = (0..3)
        .max_by_key(|&i| owned_by(&m, &c.ids[i]).len())
        .expect("nodes");
    let moved = owned_by(&m, &c.ids[victim]);
    let others: Vec<u32> = (0..m.partitions).filter(|p| !moved.contains(p)).collect();
    // Three registers on the partitions that fail over, two that stay.
    let mut keys: Vec<Bytes> = (0..3)
        .map(|i| key_in(moved[i % moved.len()], m.partitions, "reg", i))
        .collect();
    keys.extend((0..2).map(|i| key_in(others[i % others.len()], m.partitions, "reg", 10 + i)));
    let addrs: Vec<String> = (0..3).map(|i| c.node(i).addr.clone()).collect();
    let rec = linearize::Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = strata_testkit::StopOnDrop(stop.clone());
    let clients: Vec<_> = (0..6)
        .map(|id| {
            tokio::spawn(register_client(
                id,
                addrs.clone(),
                keys.clone(),
                rec.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.kill9(victim);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.expect("client");
    }
    let history = rec.history();
    match history.check() {
        Ok(stats) => println!("LINEARIZABLE across the failover: {stats:?}"),
        Err(v) => panic!("not linearizable: {v}"),
    }
    let ops = history.ops();
    let after_kill_writes = ops
        .iter()
        .filter(|o| matches!(o.outcome, linearize::Outcome::Written(_)))
        .count();
    assert!(
        ops.len() > 200,
        "too few ops to mean anything: {}",
        ops.len()
    );
    assert!(
        after_kill_writes > 50,
        "too few successful writes: {after_kill_writes}"
    );
}

async fn eventual_get(
    c: &mut Kv,
    key: &Bytes,
    session: Option<&str>,
) -> (Option<Bytes>, tonic::metadata::MetadataMap) {
    let mut req = tonic::Request::new(pb::GetRequest {
        key: key.clone(),
        consistency: pb::Consistency::Eventual as i32,
    });
    if let Some(s) = session {
        req.metadata_mut()
            .insert("x-strata-session", s.parse().expect("token"));
    }
    let resp = c.get(req).await.expect("eventual get");
    let md = resp.metadata().clone();
    let r = resp.into_inner();
    (r.found.then_some(r.value), md)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eventual_reads_on_any_node_are_bounded_and_sessions_read_their_writes() {
    let Some((s3, etcd)) = infra() else { return };
    let c = Cluster::start(&s3, &etcd, 2, "eventual");
    let m = c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let p = owned_by(&m, &c.ids[0])[0];
    let key = key_in(p, m.partitions, "ev", 0);
    let mut owner = c.client(0).await;
    let mut other = c.client(1).await;
    let resp = owner
        .put(pb::PutRequest {
            key: key.clone(),
            value: Bytes::from_static(b"v1"),
            ..Default::default()
        })
        .await
        .expect("put");
    let token = resp
        .metadata()
        .get("x-strata-session")
        .expect("a write returns a session token")
        .to_str()
        .expect("ascii")
        .to_string();
    let version = resp.into_inner().version;
    assert_eq!(token, format!("{p}:{version}"));

    // Another node answers from flushed data and says how far that goes.
    let (v, md) = eventual_get(&mut other, &key, None).await;
    let flushed: u64 = md
        .get("x-strata-flushed-seq")
        .expect("eventual reads say what they reflect")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(md.get("x-strata-stale-ms").is_some());
    if flushed < version {
        assert_eq!(
            v, None,
            "a replica read returned a write beyond its flushed data"
        );
    }
    // With the session token it reads its own write (the owner answers).
    let (v, _) = eventual_get(&mut other, &key, Some(&token)).await;
    assert_eq!(v, Some(Bytes::from_static(b"v1")));

    // Once the owner flushes (memtables of 4 MiB), the other node serves the write itself.
    let big = Bytes::from(vec![7u8; 100 << 10]);
    for n in 0..60 {
        let k = key_in(p, m.partitions, "filler", n);
        try_put(&mut owner, k, big.clone(), Duration::from_secs(10))
            .await
            .expect("filler write");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (v, md) = eventual_get(&mut other, &key, None).await;
        if v.as_deref() == Some(b"v1") {
            assert!(
                md.get("x-strata-flushed-seq").is_some(),
                "answered by the owner"
            );
            println!(
                "replica read after the flush: flushed seq {:?}, stale seqs {:?}",
                md.get("x-strata-flushed-seq"),
                md.get("x-strata-stale-seqs")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flushed write never visible on the other node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // BatchGet and Scan with EVENTUAL on the other node: its flushed replicas of every
    // partition (and the owners' data for what it owns) merged as usual.
    let got = other
        .batch_get(pb::BatchGetRequest {
            keys: vec![key.clone(), Bytes::from_static(b"ev-missing")],
            consistency: pb::Consistency::Eventual as i32,
        })
        .await
        .expect("eventual batch get")
        .into_inner()
        .results;
    assert_eq!(got.len(), 2);
    assert!(got[0].found && got[0].value == Bytes::from_static(b"v1"));
    assert!(!got[1].found);
    let mut st = other
        .scan(pb::ScanRequest {
            prefix: Bytes::from_static(b"ev-"),
            consistency: pb::Consistency::Eventual as i32,
            ..Default::default()
        })
        .await
        .expect("eventual scan")
        .into_inner();
    let mut keys = Vec::new();
    while let Some(chunk) = st.message().await.expect("scan chunk") {
        keys.extend(chunk.entries.into_iter().map(|e| e.key));
    }
    assert_eq!(keys, vec![key.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_with_sigterm_hands_its_partitions_off_quickly() {
    let Some((s3, etcd)) = infra() else { return };
    let mut c = Cluster::start(&s3, &etcd, 3, "sigterm");
    let m = c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let leaving = (0..3)
        .max_by_key(|&i| owned_by(&m, &c.ids[i]).len())
        .expect("nodes");
    let moved = owned_by(&m, &c.ids[leaving]);
    let survivor = (leaving + 1) % 3;
    let mut kv = c.client(survivor).await;
    // Acknowledged writes on the partitions that will move, some still only in memtables.
    let acked = Acked::new();
    for (n, &p) in moved.iter().enumerate() {
        let k = key_in(p, m.partitions, "handoff", n);
        let v = Bytes::from(format!("v{n}"));
        try_put(&mut kv, k.clone(), v.clone(), Duration::from_secs(10))
            .await
            .expect("write before the stop");
        acked.record_value(k, v);
    }
    let t = Instant::now();
    let mut leaving_node = c.nodes[leaving].take().expect("running");
    assert!(
        leaving_node.terminate(),
        "the node did not exit cleanly on SIGTERM"
    );
    let stopped = t.elapsed();
    // Its partitions were handed off (flushed, released, lease revoked): no lease to wait out.
    let k = key_in(moved[0], m.partitions, "after", 0);
    try_put(
        &mut kv,
        k,
        Bytes::from_static(b"x"),
        Duration::from_secs(10),
    )
    .await
    .expect("write after the hand-off");
    println!(
        "HANDOFF: SIGTERM to exit {:.0} ms, first write on a moved partition {:.0} ms after SIGTERM",
        stopped.as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert!(
        leaving_node.log_text().contains("partition handed off"),
        "no hand-off in the log"
    );
    for i in c.live() {
        c.verify_acked(i, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skewed_workload_shows_its_hot_partition_in_ctl_status() {
    let Some((s3, etcd)) = infra() else { return };
    let c = Cluster::start(&s3, &etcd, 2, "hot");
    let m = c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let hot = 5u32 % m.partitions;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = strata_testkit::StopOnDrop(stop.clone());
    // Eight writers on one partition, one writer spread over all of them.
    let mut tasks = Vec::new();
    for w in 0..9 {
        let mut kv = c.client(w % 2).await;
        let stop = stop.clone();
        let partitions = m.partitions;
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let p = if w < 8 {
                    hot
                } else {
                    (n % partitions as usize) as u32
                };
                let k = key_in(p, partitions, &format!("skew{w}"), n);
                let _ = try_put(
                    &mut kv,
                    k,
                    Bytes::from_static(b"v"),
                    Duration::from_secs(10),
                )
                .await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let json: serde_json::Value =
            serde_json::from_str(&c.ctl(&["status", "--json"])).expect("status json");
        let flagged: Vec<u64> = json["partition_table"]
            .as_array()
            .expect("table")
            .iter()
            .filter(|r| r["hot"].as_bool() == Some(true))
            .filter_map(|r| r["partition"].as_u64())
            .collect();
        if flagged == vec![u64::from(hot)] {
            break c.ctl(&["status"]);
        }
        assert!(
            Instant::now() < deadline,
            "partition {hot} never flagged alone as hot: {flagged:?}"
        );
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    println!("{status}");
    assert!(status.contains("HOT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_while_etcd_is_down_joins_when_it_comes_back() {
    let Some((s3, mut etcd)) = infra() else {
        return;
    };
    etcd.kill9();
    let opts = ServerOpts {
        extra_args: vec![
            "--etcd".into(),
            etcd.endpoint.clone(),
            "--object-store".into(),
            format!("s3://{BUCKET}/late-etcd"),
            "--node-id".into(),
            "late".into(),
        ],
        env: s3.env(),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let starting = tokio::task::spawn_blocking(move || Server::try_start_with(&path, opts));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !starting.is_finished(),
        "the node gave up or served without etcd"
    );
    etcd.restart();
    let node = starting
        .await
        .expect("join task")
        .expect("the node joined once etcd was back");
    assert!(node.log_text().contains("cannot join the cluster yet"));
    let mut kv = node.client().await;
    let k = Bytes::from_static(b"late-key");
    try_put(
        &mut kv,
        k.clone(),
        Bytes::from_static(b"v"),
        Duration::from_secs(15),
    )
    .await
    .expect("write once joined");
    assert_eq!(
        try_get(&mut kv, &k).await.expect("read").map(|g| g.0),
        Some(Bytes::from_static(b"v"))
    );
}

/// A cross-partition batch writing `value` to every key.
async fn batch_put(
    c: &mut Kv,
    keys: &[Bytes],
    value: &str,
    timeout: Duration,
) -> Result<Vec<u64>, tonic::Status> {
    let mut req = tonic::Request::new(pb::BatchWriteRequest {
        ops: keys
            .iter()
            .map(|k| pb::WriteOp {
                op: Some(pb::write_op::Op::Put(pb::PutRequest {
                    key: k.clone(),
                    value: Bytes::copy_from_slice(value.as_bytes()),
                    ..Default::default()
                })),
            })
            .collect(),
        durability: 0,
    });
    req.set_timeout(timeout);
    c.batch_write(req).await.map(|r| r.into_inner().versions)
}

/// The integer a transaction test key holds (0 when absent).
fn counter(v: Option<(Bytes, u64)>) -> u64 {
    v.map(|(b, _)| {
        std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX)
    })
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_partition_batches_stay_atomic_across_a_kill9() {
    let Some((s3, etcd)) = infra() else {
        return;
    };
    let mut c = Cluster::start(&s3, &etcd, 3, "txn-kill9");
    let m = c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let parts = m.partitions;
    // Pair j: two keys in different partitions, each pair written by one writer with an
    // increasing counter, so a reader that sees counter n in one key must see >= n in the
    // other afterwards (the transaction that wrote n was decided before the first read).
    const PAIRS: usize = 6;
    let pairs: Vec<[Bytes; 2]> = (0..PAIRS)
        .map(|j| {
            let pa = (j as u32 * 5) % parts;
            let pb = (pa + 1 + j as u32 * 3) % parts;
            [key_in(pa, parts, "txa", j), key_in(pb, parts, "txb", j)]
        })
        .collect();
    let addrs: Vec<String> = c.live().iter().map(|&i| c.node(i).addr.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = strata_testkit::StopOnDrop(stop.clone());
    let acked: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; PAIRS]));
    let connect = |a: &str| {
        KvClient::new(
            Channel::from_shared(format!("http://{a}"))
                .expect("url")
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy(),
        )
    };
    let mut writers = Vec::new();
    for (j, keys) in pairs.iter().cloned().enumerate() {
        let (addrs, stop, acked) = (addrs.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut which = j % addrs.len();
            let mut kv = connect(&addrs[which]);
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = Instant::now();
                match batch_put(&mut kv, &keys, &n.to_string(), Duration::from_secs(15)).await {
                    Ok(v) => {
                        assert_eq!(v.len(), 2);
                        assert!(v.iter().all(|&v| v > 0), "versions {v:?}");
                        ok += 1;
                        lat.push(t.elapsed());
                        acked.lock().unwrap()[j] = n;
                    }
                    Err(_) => {
                        failed += 1;
                        which = (which + 1) % addrs.len();
                        kv = connect(&addrs[which]);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (ok, failed, lat)
        }));
    }
    let violations: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let reads_checked = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..3usize {
        let (addrs, stop, pairs, violations, checked) = (
            addrs.clone(),
            stop.clone(),
            pairs.clone(),
            violations.clone(),
            reads_checked.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let j = (i * 7 + r) % PAIRS;
                let (first, second) = if i.is_multiple_of(2) { (0, 1) } else { (1, 0) };
                let mut kv = connect(&addrs[(i + r) % addrs.len()]);
                let Ok(x) = try_get(&mut kv, &pairs[j][first]).await else {
                    continue;
                };
                let mut kv = connect(&addrs[(i + r + 1) % addrs.len()]);
                let Ok(y) = try_get(&mut kv, &pairs[j][second]).await else {
                    continue;
                };
                let (x, y) = (counter(x), counter(y));
                checked.fetch_add(1, Ordering::Relaxed);
                if y < x {
                    violations.lock().unwrap().push(format!(
                        "pair {j}: read {x} from key {first}, then {y} from key {second}"
                    ));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let victim = 1;
    c.kill9(victim);
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut lat) = (0, 0, Vec::new());
    for w in writers {
        let (o, f, l) = w.await.expect("writer");
        ok += o;
        failed += f;
        lat.extend(l);
    }
    for r in readers {
        r.await.expect("reader");
    }
    lat.sort();
    let pct = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)));
    println!(
        "cross-partition batches: {ok} committed, {failed} failed; latency p50 {:?} p99 {:?}; \
         {} read pairs checked; kill at +4 s, run ended {:?} after it",
        pct(0.5),
        pct(0.99),
        reads_checked.load(Ordering::Relaxed),
        killed.elapsed()
    );
    assert!(ok > 20, "too few transactions committed: {ok}");
    let checked = reads_checked.load(Ordering::Relaxed);
    assert!(checked > 50, "too few read pairs checked: {checked}");
    let v = violations.lock().unwrap().clone();
    assert!(v.is_empty(), "half-applied transactions observed: {v:?}");
    c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    // Every pair is whole (both keys from one transaction) and holds at least the last
    // acknowledged one, read through every survivor. Intents of transactions the dead node
    // coordinated are resolved by the owners within the transaction timeout.
    let acked = acked.lock().unwrap().clone();
    for i in c.live() {
        let mut kv = c.client(i).await;
        for (j, keys) in pairs.iter().enumerate() {
            let a = counter(try_get(&mut kv, &keys[0]).await.expect("read a"));
            let b = counter(try_get(&mut kv, &keys[1]).await.expect("read b"));
            assert_eq!(a, b, "pair {j} half-applied (via node {})", c.ids[i]);
            assert!(
                a >= acked[j],
                "pair {j}: acknowledged {} lost, have {a}",
                acked[j]
            );
        }
    }
}

/// Sends a batch writing `value` to `keys` through node `dying` (whose failpoint kills it
/// mid-transaction), then reads every key through `kv`: each must hold `expect`, and the read
/// must have waited for the owners to settle the transaction (its keys were locked).
async fn crash_coordinator_then_read(
    c: &Cluster,
    dying: usize,
    kv: &mut Kv,
    keys: &[Bytes],
    value: &str,
    expect: &[u8],
    outcome: &str,
) {
    let mut d = c.client(dying).await;
    let err = batch_put(&mut d, keys, value, Duration::from_secs(10))
        .await
        .expect_err("the coordinator dies");
    println!("coordinator {} died: {err}", c.ids[dying]);
    let t = Instant::now();
    for k in keys {
        let mut req = tonic::Request::new(pb::GetRequest {
            key: k.clone(),
            consistency: 0,
        });
        req.set_timeout(Duration::from_secs(15));
        let got = kv
            .get(req)
            .await
            .expect("read after the crash")
            .into_inner();
        assert_eq!(&got.value[..], expect, "the transaction was not {outcome}");
    }
    println!(
        "the transaction was {outcome} by the owners after {:?}",
        t.elapsed()
    );
    // The read waited for the owners to settle it (it did not read past the locked keys).
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "the read did not wait for the transaction: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs the crash points: run with --features strata/failpoints (./test.sh does)"
)]
async fn a_coordinator_dying_mid_transaction_leaves_no_half_and_no_lock() {
    let Some((s3, etcd)) = infra() else {
        return;
    };
    let mut c = Cluster::start(&s3, &etcd, 2, "txn-coord");
    let fp = |name: &str| vec![("FAILPOINTS".to_string(), format!("{name}=return"))];
    let after_prepare = c.add_node_with(fp("txn-after-prepare"));
    let after_decide = c.add_node_with(fp("txn-after-decide"));
    // The crashing coordinators own nothing: only their coordination dies with them.
    for i in [after_prepare, after_decide] {
        c.ctl(&["drain", &c.ids[i]]);
    }
    let (np, nd) = (c.ids[after_prepare].clone(), c.ids[after_decide].clone());
    let m = c
        .wait_settled(0, Duration::from_secs(30), |m| {
            owned_by(m, &np).is_empty() && owned_by(m, &nd).is_empty()
        })
        .await;
    let parts = m.partitions;
    let keys = [key_in(3, parts, "coord", 0), key_in(11, parts, "coord", 1)];
    let mut kv = c.client(0).await;
    batch_put(&mut kv, &keys, "0", Duration::from_secs(10))
        .await
        .expect("initial batch");

    // Crash after every partition prepared, before the decision: the owners abort it.
    crash_coordinator_then_read(&c, after_prepare, &mut kv, &keys, "1", b"0", "aborted").await;
    // Crash right after the decision to commit: the owners apply it.
    crash_coordinator_then_read(&c, after_decide, &mut kv, &keys, "2", b"2", "applied").await;
    // No key stays locked: plain writes and another transaction go through at once.
    let t = Instant::now();
    try_put(
        &mut kv,
        keys[0].clone(),
        Bytes::from_static(b"3"),
        Duration::from_secs(5),
    )
    .await
    .expect("plain write");
    batch_put(&mut kv, &keys, "4", Duration::from_secs(5))
        .await
        .expect("next transaction");
    assert!(t.elapsed() < Duration::from_secs(3), "keys stayed locked");
    // A condition failing in one partition applies nothing in the other.
    let mut req = tonic::Request::new(pb::BatchWriteRequest {
        ops: vec![
            pb::WriteOp {
                op: Some(pb::write_op::Op::Put(pb::PutRequest {
                    key: keys[0].clone(),
                    value: Bytes::from_static(b"5"),
                    ..Default::default()
                })),
            },
            pb::WriteOp {
                op: Some(pb::write_op::Op::Put(pb::PutRequest {
                    key: keys[1].clone(),
                    value: Bytes::from_static(b"5"),
                    condition: Some(pb::put_request::Condition::IfAbsent(true)),
                    ..Default::default()
                })),
            },
        ],
        durability: 0,
    });
    req.set_timeout(Duration::from_secs(5));
    let err = kv.batch_write(req).await.expect_err("condition fails");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    for k in &keys {
        let got = try_get(&mut kv, k).await.expect("read").map(|g| g.0);
        assert_eq!(got.as_deref(), Some(&b"4"[..]));
    }
    // Reserved keys are refused, naming the field.
    let err = try_put(
        &mut kv,
        Bytes::from_static(b"\xff\xffstrata/txn/x"),
        Bytes::new(),
        Duration::from_secs(5),
    )
    .await
    .expect_err("reserved key");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_partition_splits_under_load_and_loses_nothing() {
    let Some((s3, etcd)) = infra() else { return };
    let c = Cluster::start_with_args(
        &s3,
        &etcd,
        2,
        "split",
        &[
            "--split-writes-per-sec",
            "50",
            "--split-after-secs",
            "2",
            "--split-max-partitions",
            "17",
        ],
    );
    let m = c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let parts = m.partitions;
    let hot = 5u32 % parts;
    // Keys of every partition first (some of them will change partition with the split).
    let mut kv = c.client(0).await;
    let mut before: BTreeMap<Bytes, u64> = BTreeMap::new();
    for i in 0..(parts as usize * 6) {
        let k = key_in(i as u32 % parts, parts, "pre", i);
        let v = try_put(&mut kv, k.clone(), k.clone(), Duration::from_secs(15))
            .await
            .expect("preload");
        before.insert(k, v);
    }
    // Six writers on the hot partition (through both nodes), one spread over the others, and
    // one committing batches that span the hot partition and another (transactions), while a
    // reader checks BatchGets of keys across partitions.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = strata_testkit::StopOnDrop(stop.clone());
    let acked = Arc::new(Acked::new());
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..7usize {
        let mut kv = c.client(w % 2).await;
        let (stop, acked, failures) = (stop.clone(), acked.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let p = if w < 6 {
                    hot
                } else {
                    (n % parts as usize) as u32
                };
                let k = key_in(p, parts, &format!("hot{w}"), n);
                match try_put(&mut kv, k.clone(), k.clone(), Duration::from_secs(15)).await {
                    Ok(_) => {
                        acked.record_value(&k, &k);
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("write failed: {e}");
                        // A failure fails the test; do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    let batches = Arc::new(AtomicU64::new(0));
    {
        let mut kv = c.client(1).await;
        let (stop, acked, failures, batches) = (
            stop.clone(),
            acked.clone(),
            failures.clone(),
            batches.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let keys = [
                    key_in(hot, parts, "txhot", n),
                    key_in((hot + 3) % parts, parts, "txcold", n),
                ];
                match batch_put(&mut kv, &keys, "b", Duration::from_secs(15)).await {
                    Ok(_) => {
                        batches.fetch_add(1, Ordering::Relaxed);
                        for k in keys {
                            acked.record_value(k, b"b");
                        }
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("batch failed: {e}");
                        // A failure fails the test; do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    {
        let mut kv = c.client(0).await;
        let (stop, failures) = (stop.clone(), failures.clone());
        let keys: Vec<Bytes> = before.keys().take(24).cloned().collect();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut req = tonic::Request::new(pb::BatchGetRequest {
                    keys: keys.clone(),
                    consistency: 0,
                });
                req.set_timeout(Duration::from_secs(15));
                match kv.batch_get(req).await {
                    Ok(r) => assert!(
                        r.into_inner().results.iter().all(|g| g.found),
                        "a preloaded key went missing from a BatchGet"
                    ),
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("batch get failed: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let started = Instant::now();
    let split_map = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let m = c.map(0).await;
        if !m.ranges.is_empty() {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "partition {hot} never split"
        );
    };
    println!(
        "partition {hot} split {:?} into the load; map: {:?}",
        started.elapsed(),
        split_map.ranges
    );
    // Keep writing across the split for a while, then check everything.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "the split surfaced errors to clients"
    );
    assert!(
        batches.load(Ordering::Relaxed) > 5,
        "too few cross-partition batches"
    );
    let m = c
        .wait_settled(0, Duration::from_secs(30), |m| {
            m.owners.len() > parts as usize
        })
        .await;
    assert_eq!(
        m.owners.len(),
        17,
        "exactly one split (the cap is 17 partitions)"
    );
    let new_ids: Vec<u32> = m
        .owners
        .iter()
        .map(|o| o.partition)
        .filter(|&p| p >= parts)
        .collect();
    assert!(!new_ids.is_empty(), "no new partition: {m:?}");
    let map = strata_format::PartitionMap::from_ranges(
        m.ranges.iter().map(|r| (r.start, r.partition)).collect(),
    )
    .expect("a valid partition map");
    // The recorder checks the read-backs; `acked` is what it holds: key -> value.
    let recorded = acked;
    let acked = recorded.values();
    let moved = acked
        .keys()
        .chain(before.keys())
        .filter(|k| new_ids.contains(&map.partition_of(k)))
        .count();
    assert!(moved > 0, "no written key belongs to the new partition");
    println!(
        "{} acknowledged writes during the run, {moved} keys now served by new partitions {new_ids:?}",
        acked.len()
    );
    // Every write, before and during the split, reads back through both nodes.
    for i in c.live() {
        c.verify_acked(i, &recorded).await;
        let mut kv = c.client(i).await;
        for (k, v) in &before {
            let got = try_get(&mut kv, k).await.expect("read").expect("present");
            assert_eq!(got.1, *v, "version of {k:?} changed");
        }
    }
    // A full scan sees each key exactly once: the split partition's copy of the moved half
    // stays hidden.
    let mut kv = c.client(1).await;
    let mut st = kv
        .scan(pb::ScanRequest::default())
        .await
        .expect("scan")
        .into_inner();
    let mut seen: Vec<Bytes> = Vec::new();
    while let Some(r) = st.message().await.expect("scan chunk") {
        seen.extend(r.entries.into_iter().map(|e| e.key));
    }
    let mut want: Vec<Bytes> = acked.keys().chain(before.keys()).cloned().collect();
    want.sort();
    assert_eq!(seen.len(), want.len(), "scan saw duplicates or missed keys");
    assert_eq!(seen, want);
    // An export of the cluster (S3 + etcd, while it serves) holds each key exactly once with
    // its value: the split partition's old copy of the moved half is left out. Read back by
    // pyarrow and DuckDB.
    let out = tempfile::tempdir().expect("temp dir");
    let export_out = std::process::Command::new(bin())
        .args(["export", "--etcd", &c.etcd_url, "--object-store"])
        .arg(format!("s3://{BUCKET}/{}", c.prefix))
        .arg("--to")
        .arg(format!("file://{}", out.path().join("x").display()))
        .arg("--no-progress")
        .envs(c.s3_env.iter().cloned())
        .output()
        .expect("run strata export");
    assert!(
        export_out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&export_out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&export_out.stdout).trim());
    let expected: serde_json::Map<String, serde_json::Value> = acked
        .iter()
        .chain(before.keys().map(|k| (k, k)))
        .map(|(k, v)| {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            (
                hex(k),
                serde_json::json!({"value": hex(v), "version": null, "deleted": false}),
            )
        })
        .collect();
    let exp_path = out.path().join("expected.json");
    std::fs::write(&exp_path, serde_json::to_vec(&expected).expect("json")).expect("write");
    let check = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/check_export.py"
        ))
        .arg(out.path().join("x"))
        .arg(&exp_path)
        .output()
        .expect("run python3 (infra/setup.sh installs pyarrow and duckdb)");
    assert!(
        check.status.success(),
        "the cluster export does not read back: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    println!("{}", String::from_utf8_lossy(&check.stdout).trim());
    // Versions keep growing on a moved key, and ctl status shows the new partitions.
    let moved_key = before
        .keys()
        .find(|k| new_ids.contains(&map.partition_of(k)))
        .or_else(|| {
            acked
                .keys()
                .find(|k| new_ids.contains(&map.partition_of(k)))
        })
        .cloned()
        .expect("a moved key");
    let old = try_get(&mut kv, &moved_key)
        .await
        .expect("read")
        .expect("present")
        .1;
    let new = try_put(
        &mut kv,
        moved_key.clone(),
        Bytes::from_static(b"after"),
        Duration::from_secs(15),
    )
    .await
    .expect("write a moved key");
    assert!(new > old, "version went from {old} to {new}");
    let status = c.ctl(&["status"]);
    println!("{status}");
    assert!(status.contains("split off hot ones"), "{status}");
    for i in c.live() {
        for l in c.node(i).log_text().lines() {
            if l.contains("split transaction") {
                println!("{}: {l}", c.ids[i]);
            }
        }
    }
    // A snapshot taken after the split restores with its partition map: a node on the
    // restored keyspace serves every key once, the moved half from the new partition.
    let src = format!("s3://{BUCKET}/{}", c.prefix);
    let out = c.ctl(&["snapshot", "create", "--object-store", &src]);
    let id = out
        .split("created snapshot ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {out:?}"))
        .to_string();
    let out = c.ctl(&[
        "restore",
        "--snapshot",
        &id,
        "--object-store",
        &src,
        "--to",
        &format!("s3://{BUCKET}/splitrestored"),
        "--to-etcd-prefix",
        "/splitrestored",
    ]);
    println!("{}", out.trim());
    assert!(out.contains("17 partitions"), "{out}");
    let r = Cluster::start_with_args(
        &s3,
        &etcd,
        1,
        "splitrestored",
        &["--etcd-prefix", "/splitrestored"],
    );
    let rm = r
        .wait_settled(0, Duration::from_secs(30), |m| m.owners.len() == 17)
        .await;
    assert_eq!(
        rm.ranges
            .iter()
            .map(|x| (x.start, x.partition))
            .collect::<Vec<_>>(),
        m.ranges
            .iter()
            .map(|x| (x.start, x.partition))
            .collect::<Vec<_>>(),
        "the restored keyspace has the source's partition map"
    );
    let expect = Acked::clone(&recorded);
    expect.record_value(&moved_key, b"after");
    r.verify_acked(0, &expect).await;
    let mut rkv = r.client(0).await;
    let mut st = rkv
        .scan(pb::ScanRequest::default())
        .await
        .expect("scan")
        .into_inner();
    let mut seen_restored: Vec<Bytes> = Vec::new();
    while let Some(chunk) = st.message().await.expect("scan chunk") {
        seen_restored.extend(chunk.entries.into_iter().map(|e| e.key));
    }
    assert_eq!(seen_restored, want, "the restored scan sees each key once");
}

/// A `strata compactor` worker process, killed when dropped.
struct Worker {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Worker {
    fn start(c: &Cluster, id: &str, dir: &std::path::Path) -> Worker {
        Worker::start_with(c, id, dir, &[])
    }

    fn start_with(c: &Cluster, id: &str, dir: &std::path::Path, args: &[&str]) -> Worker {
        let log = dir.join(format!("{id}.log"));
        let child = std::process::Command::new(bin())
            .args(["compactor", "--etcd", &c.etcd_url, "--object-store"])
            .arg(format!("s3://{BUCKET}/{}", c.prefix))
            .args(["--worker-id", id, "--lease-ttl-secs", "2"])
            .args(args)
            .envs(c.s3_env.iter().cloned())
            .env("STRATA_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("worker log"))
            .spawn()
            .expect("start strata compactor");
        Worker { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- last lines of {}:", self.log.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `strata ctl status --json` document.
fn status_json(c: &Cluster) -> serde_json::Value {
    serde_json::from_str(&c.ctl(&["status", "--json"])).expect("status json")
}

/// Waits until `pred` holds for the status document.
async fn wait_status(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status_json(c);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Writes `n` values of `size` bytes per writer through the nodes; returns what was acked.
async fn bulk_write(c: &Cluster, tag: &str, writers: usize, n: usize, size: usize) -> Acked {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut kv = c.client(c.live()[w % c.live().len()]).await;
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let acked = Acked::new();
            for i in 0..n {
                let k = Bytes::from(format!("{tag}-{w}-{i:05}"));
                let v = Bytes::from(format!("{i:08}").repeat(size / 8));
                try_put(&mut kv, k.clone(), v.clone(), Duration::from_secs(15))
                    .await
                    .expect("bulk write");
                acked.record_value(k, v);
            }
            acked
        }));
    }
    let all = Acked::new();
    for t in tasks {
        all.extend(&t.await.expect("writer"));
    }
    all
}

fn partitions_of(s: &serde_json::Value) -> Vec<serde_json::Value> {
    s["partition_table"].as_array().cloned().unwrap_or_default()
}

/// Every partition has files below L0 and fewer than the L0 trigger in L0: compaction ran.
fn compacted(s: &serde_json::Value) -> bool {
    let parts = partitions_of(s);
    !parts.is_empty()
        && parts.iter().all(|p| {
            p["l0_files"].as_u64().unwrap_or(99) < 4
                && p["level_files"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|n| n.as_u64().unwrap_or(0) > 0))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compactor_fleet_takes_over_compaction_and_survives_a_kill9() {
    let Some((s3, etcd)) = infra() else { return };
    // Four partitions with 1 MiB memtables: a few MB of writes fill L0.
    let c = Cluster::start_with_args(
        &s3,
        &etcd,
        2,
        "fleet",
        &["--partitions", "4", "--memtable-mb", "1"],
    );
    c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut w1 = Some(Worker::start(&c, "w1", dir.path()));
    let w2 = Worker::start(&c, "w2", dir.path());
    // Both workers register and share the four partitions' compaction.
    wait_status(
        &c,
        "two workers claiming every partition",
        Duration::from_secs(30),
        |s| {
            let claims: Vec<String> = partitions_of(s)
                .iter()
                .filter_map(|p| p["compactor"].as_str().map(str::to_string))
                .collect();
            s["compactors"].as_array().is_some_and(|a| a.len() == 2)
                && claims.len() == 4
                && claims.iter().any(|w| w == "w1")
                && claims.iter().any(|w| w == "w2")
        },
    )
    .await;
    // The nodes hand compaction over.
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in c.live() {
        while !c.node(i).log_text().contains("leaving compaction to them") {
            assert!(
                Instant::now() < deadline,
                "node {} still compacts in-process",
                c.ids[i]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let t = Instant::now();
    let acked = bulk_write(&c, "fleet1", 8, 400, 8 << 10).await;
    // The workers publish their job counts every poll, the nodes their trees on their own
    // schedule: wait for both (asserting the count the moment the trees look compacted
    // raced the workers' next publication).
    let fleet_jobs = |s: &serde_json::Value| -> u64 {
        s["compactors"]
            .as_array()
            .map(|a| a.iter().map(|w| w["jobs"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0)
    };
    let s = wait_status(
        &c,
        "every partition compacted by the fleet, and at least 4 jobs reported",
        Duration::from_secs(60),
        |s| compacted(s) && fleet_jobs(s) >= 4,
    )
    .await;
    println!(
        "round 1: {} writes of 8 KiB, compacted after {:?} ({} jobs)",
        acked.len(),
        t.elapsed(),
        fleet_jobs(&s)
    );
    println!("{}", c.ctl(&["status"]));

    // kill -9 one worker: the other takes every partition over and keeps compacting.
    if let Some(mut w) = w1.take() {
        w.child.kill().expect("kill -9 w1");
        let _ = w.child.wait();
    }
    let killed = Instant::now();
    wait_status(
        &c,
        "w2 claiming every partition",
        Duration::from_secs(30),
        |s| {
            let parts = partitions_of(s);
            !parts.is_empty() && parts.iter().all(|p| p["compactor"].as_str() == Some("w2"))
        },
    )
    .await;
    println!(
        "w2 took over every partition {:?} after the kill",
        killed.elapsed()
    );
    let before: Vec<u64> = partitions_of(&status_json(&c))
        .iter()
        .map(|p| p["manifest_version"].as_u64().unwrap_or(0))
        .collect();
    acked.extend(&bulk_write(&c, "fleet2", 8, 400, 8 << 10).await);
    wait_status(
        &c,
        "every partition compacted again",
        Duration::from_secs(60),
        |s| {
            compacted(s)
                && partitions_of(s)
                    .iter()
                    .zip(&before)
                    .all(|(p, b)| p["manifest_version"].as_u64().unwrap_or(0) > *b)
        },
    )
    .await;
    assert!(w2.log_text().contains("claimed the partition's compaction"));
    // Nothing was lost to compaction or to the kill.
    for i in c.live() {
        c.verify_acked(i, &acked).await;
    }
}

/// A snapshot of a live 2-node cluster (writes still only in WALs included), restored into a
/// new keyspace (new bucket prefix, new etcd prefix) without copying an SST: a node started on
/// it serves every key with its value as of the snapshot, while the source, changed since,
/// keeps its newer values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_snapshot_restores_into_a_new_keyspace() {
    let Some((s3, etcd)) = infra() else { return };
    let c = Cluster::start_with_args(&s3, &etcd, 2, "snapsrc", &["--partitions", "4"]);
    c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    // 4 MiB memtables: some partitions flush SSTs, the rest is only in their WALs.
    let then = bulk_write(&c, "s", 4, 400, 4096).await;
    let src = format!("s3://{BUCKET}/snapsrc");
    let out = c.ctl(&["snapshot", "create", "--object-store", &src]);
    let id = out
        .split("created snapshot ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {out:?}"))
        .to_string();
    let later = bulk_write(&c, "s", 4, 400, 16).await;
    let out = c.ctl(&[
        "restore",
        "--snapshot",
        &id,
        "--object-store",
        &src,
        "--to",
        &format!("s3://{BUCKET}/snaprestored"),
        "--to-etcd-prefix",
        "/restored",
    ]);
    println!("{}", out.trim());
    assert!(out.contains("nothing copied"), "{out}");
    let census = s3.census("snaprestored").await;
    assert!(
        !census.contains_key("sst"),
        "the restore wrote SSTs: {census:?}"
    );
    let r = Cluster::start_with_args(
        &s3,
        &etcd,
        1,
        "snaprestored",
        &["--partitions", "4", "--etcd-prefix", "/restored"],
    );
    r.wait_settled(0, Duration::from_secs(30), |_| true).await;
    r.verify_acked(0, &then).await;
    c.verify_acked(1, &later).await;
    // Restoring again into a used place is refused.
    let again = std::process::Command::new(bin())
        .args(["ctl", "--etcd", &c.etcd_url, "restore", "--snapshot", &id])
        .args(["--object-store", &src, "--to-etcd-prefix", "/restored"])
        .args(["--to", &format!("s3://{BUCKET}/snaprestored2")])
        .envs(c.s3_env.iter().cloned())
        .output()
        .expect("run strata ctl");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("in use"));
}

/// The fleet's cluster-wide tasks: one worker at a time runs the snapshot schedule (scheduled
/// snapshots appear every second and age out after their retention), `ctl restore --at T`
/// brings back the keyspace as of T (writes after T absent), and `strata export --fleet` runs
/// on a worker and reports the rows of every live key.
#[tokio::test]
async fn the_fleet_schedules_snapshots_restores_a_point_in_time_and_exports() {
    let Some((s3, etcd)) = infra() else { return };
    let c = Cluster::start_with_args(&s3, &etcd, 1, "fleettasks", &["--partitions", "4"]);
    c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let dir = tempfile::tempdir().unwrap();
    let sched = ["--snapshot-every-secs", "1", "--snapshot-keep-secs", "10"];
    let w1 = Worker::start_with(&c, "w1", dir.path(), &sched);
    let w2 = Worker::start_with(&c, "w2", dir.path(), &sched);
    let before = bulk_write(&c, "a", 2, 100, 64).await;
    // Wait for a scheduled snapshot begun after those writes (under load the interval can
    // stretch): every snapshot finished after it, and before t1, holds them.
    let src = format!("s3://{BUCKET}/fleettasks");
    let written = strata_manifest::now_ms();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&c.ctl(&["snapshot", "list", "--json", "--object-store", &src]))
                .unwrap();
        let later = list.as_array().unwrap().iter().any(|s| {
            s["record"]["created_ms"]
                .as_u64()
                .is_some_and(|t| t > written)
        });
        if later {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled snapshot after the writes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t1 = strata_manifest::now_ms();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = bulk_write(&c, "b", 2, 100, 64).await;

    // The store as of t1: `before` is there, `after` is not.
    let out = c.ctl(&[
        "restore",
        "--at",
        &t1.to_string(),
        "--object-store",
        &src,
        "--to",
        &format!("s3://{BUCKET}/pitr"),
        "--to-etcd-prefix",
        "/pitr",
    ]);
    println!("{}", out.trim());
    assert!(
        out.contains("restoring snapshot") && out.contains("-auto"),
        "{out}"
    );
    let r = Cluster::start_with_args(
        &s3,
        &etcd,
        1,
        "pitr",
        &["--partitions", "4", "--etcd-prefix", "/pitr"],
    );
    r.wait_settled(0, Duration::from_secs(30), |_| true).await;
    r.verify_acked(0, &before).await;
    let mut kv = r.client(0).await;
    for k in &after.keys() {
        assert_eq!(
            try_get(&mut kv, k).await.unwrap(),
            None,
            "{k:?} was written after t1"
        );
    }

    // Retention: scheduled snapshots older than 10 s go (the one restored from stays).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let list: serde_json::Value =
        serde_json::from_str(&c.ctl(&["snapshot", "list", "--json", "--object-store", &src]))
            .unwrap();
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["complete"].as_bool() == Some(true))
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    println!("scheduled snapshots: {ids:?}");
    assert!(ids.iter().all(|id| id.ends_with("-auto")), "{ids:?}");
    assert!(
        (5..=14).contains(&ids.len()),
        "expected about 10 s worth of snapshots, got {ids:?}"
    );
    let ran = [&w1, &w2]
        .iter()
        .filter(|w| w.log_text().contains("scheduled snapshot created"))
        .count();
    assert!(ran >= 1, "no worker ran the schedule");
    // A time before any kept snapshot is refused, naming the retention.
    let err = std::process::Command::new(bin())
        .args(["ctl", "--etcd", &c.etcd_url, "restore", "--at", "1000"])
        .args(["--object-store", &src, "--to-etcd-prefix", "/pitr-old"])
        .args(["--to", &format!("s3://{BUCKET}/pitr-old")])
        .envs(c.s3_env.iter().cloned())
        .output()
        .expect("run strata ctl");
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("oldest kept"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );

    // Export on the fleet.
    let out_dir = tempfile::tempdir().unwrap();
    let to = format!("file://{}/x", out_dir.path().display());
    let out = std::process::Command::new(bin())
        .args(["export", "--fleet", "--etcd", &c.etcd_url])
        .args(["--object-store", &src, "--to", &to, "--no-progress"])
        .envs(c.s3_env.iter().cloned())
        .output()
        .expect("run strata export");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "export --fleet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", stdout.trim());
    let want = before.len() + after.len();
    assert!(
        stdout.contains(&format!("exported {want} rows")),
        "{stdout}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("x/_manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["rows"].as_u64(), Some(want as u64));
    let logs = w1.log_text() + &w2.log_text();
    assert!(logs.contains("export job done"), "no worker ran the export");
    // A second export into the same place is refused before anything is queued.
    let again = std::process::Command::new(bin())
        .args(["export", "--fleet", "--etcd", &c.etcd_url])
        .args(["--object-store", &src, "--to", &to, "--no-progress"])
        .envs(c.s3_env.iter().cloned())
        .output()
        .expect("run strata export");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

/// An export job whose worker died mid-run (its record says running, its claim is gone, and
/// it left a stray Parquet file) is run again by a live worker, which clears the partial
/// output first: the finished export lists exactly its own files.
#[tokio::test]
async fn an_interrupted_fleet_export_runs_again_from_a_clean_place() {
    use strata_compactor::fleet_tasks::{ExportJob, ExportRequest, JobState, EXPORT_JOBS};
    let Some((s3, etcd)) = infra() else { return };
    let c = Cluster::start_with_args(&s3, &etcd, 1, "fleetexport", &["--partitions", "2"]);
    c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let acked = bulk_write(&c, "e", 2, 50, 64).await;
    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("x");
    std::fs::create_dir_all(&dest).unwrap();
    // What a dead worker's first run left: a file no run of this export writes.
    std::fs::write(dest.join("part-00001-0042.parquet"), b"partial").unwrap();
    let mut job = ExportJob::new(ExportRequest {
        to: format!("file://{}", dest.display()),
        snapshot: None,
        since: None,
        file_mb: 128,
        namespace: None,
    });
    job.state = JobState::Running;
    job.attempts = 1;
    job.worker = Some("dead".into());
    let keys = strata_manifest::etcd::Etcd::connect(&strata_manifest::EtcdSettings::new(vec![c
        .etcd_url
        .clone()]))
    .await
    .unwrap();
    keys.job_create(EXPORT_JOBS, &job.id, job.encode().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _w = Worker::start(&c, "w1", dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let body = keys.job_get(EXPORT_JOBS, &job.id).await.unwrap().unwrap();
        let j = ExportJob::decode(&body).unwrap();
        if matches!(j.state, JobState::Done | JobState::Failed) {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job still {:?}",
            j.state
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(done.attempts, 2);
    assert_eq!(done.worker.as_deref(), Some("w1"));
    let m = done.result.expect("the export's manifest");
    assert_eq!(m.rows, acked.len() as u64);
    let mut on_disk: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = m.files.iter().map(|f| f.path.clone()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "the partial file of the first run was cleared"
    );
}

/// Cluster-wide compaction settings (`ctl compaction set`) reach every worker without new
/// flags: its partitions' compaction restarts with the new strategy, and the snapshot
/// schedule starts; a setting no worker could apply is refused before anything is written.
#[tokio::test]
async fn compaction_settings_in_etcd_reach_the_workers() {
    let Some((s3, etcd)) = infra() else { return };
    let c = Cluster::start_with_args(&s3, &etcd, 1, "settings", &["--partitions", "2"]);
    c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let dir = tempfile::tempdir().unwrap();
    let w = Worker::start(&c, "w1", dir.path());
    let src = format!("s3://{BUCKET}/settings");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.log_text().contains("claimed the partition's compaction") {
        assert!(Instant::now() < deadline, "the worker claimed nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(c.ctl(&["compaction", "show"]).contains("no cluster-wide"));
    let out = c.ctl(&[
        "compaction",
        "set",
        "--strategy",
        "size-tiered",
        "--snapshot-every-secs",
        "1",
    ]);
    println!("{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = w.log_text();
        let restarted = log.contains("strategy=SizeTiered");
        let snapshots = c.ctl(&["snapshot", "list", "--object-store", &src]);
        if restarted && snapshots.contains("-auto") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "settings not applied (restarted: {restarted}); snapshots:\n{snapshots}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = c.ctl(&["status"]);
    assert!(
        status.contains("compaction settings") && status.contains("size-tiered"),
        "{status}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&c.ctl(&["compaction", "show", "--json"])).unwrap();
    assert_eq!(shown["strategy"], "size-tiered");
    assert_eq!(shown["snapshot_every_secs"], 1);
    // Refused by the command, nothing written.
    let bad = std::process::Command::new(bin())
        .args(["ctl", "--etcd", &c.etcd_url, "compaction", "set"])
        .args(["--strategy-for", "1=fastest"])
        .output()
        .expect("run strata ctl");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("fastest"));
    let shown: serde_json::Value =
        serde_json::from_str(&c.ctl(&["compaction", "show", "--json"])).unwrap();
    assert!(shown.get("strategy_for").is_none(), "{shown}");
    c.ctl(&["compaction", "clear"]);
    assert!(c.ctl(&["compaction", "show"]).contains("no cluster-wide"));
}

/// One partition whose objects are corrupt is reported and answers `DATA_LOSS`, while its
/// node serves every other partition (it used to stop the node from serving at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_partition_is_reported_while_its_node_serves_the_others() {
    let Some((s3, etcd)) = infra() else { return };
    let mut c = Cluster::start(&s3, &etcd, 1, "corrupt");
    let m = c.wait_settled(0, Duration::from_secs(30), |_| true).await;
    let bad = 3 % m.partitions;
    let mut kv = c.client(0).await;
    let mut keys = Vec::new();
    for p in 0..m.partitions {
        let k = key_in(p, m.partitions, "corrupt", p as usize);
        try_put(
            &mut kv,
            k.clone(),
            Bytes::from_static(b"v"),
            Duration::from_secs(10),
        )
        .await
        .expect("write before the corruption");
        keys.push((p, k));
    }
    // A clean stop flushes every partition and hands it off; then every manifest of `bad` is
    // damaged in the bucket (one byte flipped in the middle).
    let mut first = c.nodes[0].take().expect("running");
    assert!(
        first.terminate(),
        "the node did not exit cleanly on SIGTERM"
    );
    let store = s3.store("corrupt");
    let manifests = store
        .list(&strata_manifest::layout::manifest_prefix(bad))
        .await
        .expect("list manifests");
    assert!(!manifests.is_empty(), "partition {bad} has no manifest");
    for o in &manifests {
        let mut b = store.get(&o.path).await.expect("get manifest").to_vec();
        let i = b.len() / 2;
        b[i] ^= 0xff;
        store
            .put(&o.path, b.into(), strata_objstore::PutMode::Overwrite)
            .await
            .expect("put damaged manifest");
    }

    let i = c.add_node();
    let mut kv = c.client(i).await;
    // Every other partition serves its data.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (p, k) in keys.iter().filter(|(p, _)| *p != bad) {
        loop {
            match try_get(&mut kv, k).await {
                Ok(v) => {
                    assert_eq!(
                        v.map(|v| v.0),
                        Some(Bytes::from_static(b"v")),
                        "partition {p}"
                    );
                    break;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "partition {p} not served within 30 s: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    // The corrupt one answers DATA_LOSS naming what failed, for reads and for writes.
    let bad_key = &keys[bad as usize].1;
    let err = try_get(&mut kv, bad_key)
        .await
        .expect_err("a corrupt partition serves nothing");
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert!(err.message().contains("corrupt"), "{err:?}");
    let err = try_put(
        &mut kv,
        bad_key.clone(),
        Bytes::from_static(b"w"),
        Duration::from_secs(10),
    )
    .await
    .expect_err("no write lands on a corrupt partition");
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    // Reported: a log line, and `ctl status` (JSON and text).
    assert!(
        c.node(i).log_text().contains("partition is corrupt"),
        "{}",
        c.node(i).log_text()
    );
    let status = wait_status(
        &c,
        "the corrupt partition in ctl status",
        Duration::from_secs(20),
        |s| {
            s["partition_table"].as_array().is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["partition"].as_u64() == Some(u64::from(bad)) && r["corrupt"].is_string()
                })
            })
        },
    )
    .await;
    let flagged: Vec<u64> = status["partition_table"]
        .as_array()
        .expect("table")
        .iter()
        .filter(|r| r["corrupt"].is_string())
        .filter_map(|r| r["partition"].as_u64())
        .collect();
    assert_eq!(flagged, vec![u64::from(bad)]);
    let text = c.ctl(&["status"]);
    assert!(text.contains("CORRUPT"), "{text}");
}

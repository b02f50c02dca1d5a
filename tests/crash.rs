//! Crash safety of the real `strata serve` binary: `kill -9` in the middle of a concurrent
//! durable write load (with flushes and compaction running) loses no acknowledged write, and
//! buffered writes survive a clean SIGTERM shutdown.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_compute::pb;
use strata_testkit::kv::Kv;
use strata_testkit::{Acked, Server, ServerOpts};

const WRITERS: usize = 16;
const LOAD_SECS: f64 = 4.0;

fn hash_bytes(v: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// A value of a random size: mostly small, some up to 64 KiB; half random bytes, half
/// compressible. The first 8 bytes are a nonce so every value is distinct.
fn make_value(rng: &mut StdRng) -> Vec<u8> {
    let size = match rng.random_range(0..100) {
        0..60 => rng.random_range(8..1024),
        60..90 => rng.random_range(1024..16 << 10),
        _ => rng.random_range(16 << 10..=64 << 10),
    };
    let mut v = vec![0u8; size];
    if rng.random_bool(0.5) {
        rng.fill_bytes(&mut v);
    } else {
        let b = rng.random::<u8>();
        for (i, x) in v.iter_mut().enumerate() {
            *x = b.wrapping_add((i / 64) as u8);
        }
    }
    v[..8].copy_from_slice(&rng.random::<u64>().to_le_bytes());
    v
}

/// What the clients know about one key.
#[derive(Default, Clone, Debug)]
struct KeyState {
    /// The newest acknowledged write: (version, value hash).
    acked: Option<(u64, u64)>,
    /// Hashes of writes attempted after the acknowledged one whose outcome is unknown.
    pending: Vec<u64>,
    /// How many writes of this key were acknowledged (over all rounds).
    acks: u32,
}

/// A writer's record of one round.
#[derive(Default)]
struct WriterLog {
    keys: HashMap<String, KeyState>,
    /// The batch in flight when the server died, if any: (key, value hash) per op.
    inflight_batch: Vec<(String, u64)>,
    acked_puts: u64,
    acked_batches: u64,
    /// Versions of this writer's acknowledged writes, in acknowledgement order.
    versions: Vec<u64>,
    /// An error seen while the server was supposed to be up.
    early_error: Option<String>,
}

/// One writer: sequential durable writes to its own key space `w{id}/k{n}`, half fresh
/// keys and half overwrites, with one in eight requests a BatchWrite of 2–6 puts.
async fn writer(
    id: usize,
    mut client: Kv,
    mut log: WriterLog,
    seed: u64,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> WriterLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut names: Vec<String> = log.keys.keys().cloned().collect();
    names.sort();
    let mut fresh = names.len();
    let mut pick = |rng: &mut StdRng, names: &mut Vec<String>| -> String {
        if names.is_empty() || rng.random_bool(0.5) {
            let k = format!("w{id:02}/k{fresh:06}");
            fresh += 1;
            names.push(k.clone());
            k
        } else {
            names[rng.random_range(0..names.len())].clone()
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if rng.random_range(0..8) == 0 {
            let n = rng.random_range(2..=6);
            let mut ops = Vec::with_capacity(n);
            let mut batch: Vec<(String, u64)> = Vec::with_capacity(n);
            while batch.len() < n {
                let k = pick(&mut rng, &mut names);
                if batch.iter().any(|(b, _)| *b == k) {
                    continue;
                }
                let v = make_value(&mut rng);
                batch.push((k.clone(), hash_bytes(&v)));
                ops.push(pb::WriteOp {
                    op: Some(pb::write_op::Op::Put(pb::PutRequest {
                        key: Bytes::from(k.into_bytes()),
                        value: Bytes::from(v),
                        ..Default::default()
                    })),
                });
            }
            for (k, h) in &batch {
                log.keys.entry(k.clone()).or_default().pending.push(*h);
            }
            let r = client
                .batch_write(pb::BatchWriteRequest {
                    ops,
                    durability: pb::Durability::Durable as i32,
                })
                .await;
            match r {
                Ok(resp) => {
                    let versions = resp.into_inner().versions;
                    assert_eq!(versions.len(), batch.len(), "one version per op");
                    for ((k, h), v) in batch.iter().zip(&versions) {
                        let st = log.keys.get_mut(k).unwrap();
                        st.acked = Some((*v, *h));
                        st.pending.clear();
                        st.acks += 1;
                    }
                    log.versions.push(*versions.iter().max().unwrap());
                    log.acked_batches += 1;
                }
                Err(e) => {
                    if !killed.load(Ordering::SeqCst) {
                        log.early_error = Some(format!("batch_write: {e}"));
                    }
                    log.inflight_batch = batch;
                    return log;
                }
            }
        } else {
            let k = pick(&mut rng, &mut names);
            let v = make_value(&mut rng);
            let h = hash_bytes(&v);
            log.keys.entry(k.clone()).or_default().pending.push(h);
            let r = client
                .put(pb::PutRequest {
                    key: Bytes::from(k.clone().into_bytes()),
                    value: Bytes::from(v),
                    durability: pb::Durability::Durable as i32,
                    ..Default::default()
                })
                .await;
            match r {
                Ok(resp) => {
                    let version = resp.into_inner().version;
                    let st = log.keys.get_mut(&k).unwrap();
                    st.acked = Some((version, h));
                    st.pending.clear();
                    st.acks += 1;
                    log.versions.push(version);
                    log.acked_puts += 1;
                }
                Err(e) => {
                    if !killed.load(Ordering::SeqCst) {
                        log.early_error = Some(format!("put {k}: {e}"));
                    }
                    return log;
                }
            }
        }
    }
    log
}

/// Reads every key (BatchGet, 64 at a time): key -> (found, value hash, version).
async fn read_all(c: &mut Kv, keys: &[String]) -> HashMap<String, (bool, u64, u64)> {
    let mut out = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(64) {
        let r = c
            .batch_get(pb::BatchGetRequest {
                keys: chunk
                    .iter()
                    .map(|k| Bytes::from(k.clone().into_bytes()))
                    .collect(),
                consistency: 0,
            })
            .await
            .expect("batch_get after restart")
            .into_inner()
            .results;
        assert_eq!(r.len(), chunk.len());
        for (k, g) in chunk.iter().zip(r) {
            out.insert(k.clone(), (g.found, hash_bytes(&g.value), g.version));
        }
    }
    out
}

/// Checks every key against what the writers know, then resets the logs to what was read
/// (the new baseline). Returns the largest version read.
fn verify_and_rebase(logs: &mut [WriterLog], read: &HashMap<String, (bool, u64, u64)>) -> u64 {
    let mut failures = Vec::new();
    let mut max_version = 0;
    let mut checked = (0usize, 0usize, 0usize); // (acked keys, exact once-written, unknown-only)
    for log in logs.iter_mut() {
        // A batch in flight at the crash is atomic: all of its ops landed or none did.
        if !log.inflight_batch.is_empty() {
            let landed = log
                .inflight_batch
                .iter()
                .filter(|(k, h)| {
                    let (found, rh, _) = read[k];
                    found && rh == *h
                })
                .count();
            if landed != 0 && landed != log.inflight_batch.len() {
                failures.push(format!(
                    "unacknowledged batch half applied: {landed} of {} ops visible ({:?})",
                    log.inflight_batch.len(),
                    log.inflight_batch
                        .iter()
                        .map(|(k, _)| k)
                        .collect::<Vec<_>>()
                ));
            }
        }
        for (k, st) in log.keys.iter_mut() {
            let (found, rh, rv) = read[k];
            max_version = max_version.max(rv);
            match st.acked {
                Some((av, ah)) => {
                    checked.0 += 1;
                    if !found {
                        failures.push(format!(
                            "{k}: acknowledged version {av} LOST (reads absent)"
                        ));
                    } else if rv < av {
                        failures.push(format!(
                            "{k}: reads version {rv}, older than acknowledged {av}"
                        ));
                    } else if rv == av && rh != ah {
                        failures.push(format!(
                            "{k}: version {rv} has a different value than acknowledged"
                        ));
                    } else if rv > av && !st.pending.contains(&rh) {
                        failures.push(format!(
                            "{k}: reads version {rv} > acknowledged {av} with a value nobody wrote after it"
                        ));
                    } else if st.pending.is_empty() && (rv, rh) != (av, ah) {
                        failures.push(format!(
                            "{k}: reads ({rv}) but acknowledged ({av}) and nothing after"
                        ));
                    }
                    if st.acks == 1 && st.pending.is_empty() {
                        checked.1 += 1;
                    }
                }
                None => {
                    checked.2 += 1;
                    if found && !st.pending.contains(&rh) {
                        failures.push(format!(
                            "{k}: never acknowledged, reads a value nobody wrote"
                        ));
                    }
                }
            }
            // New baseline: what the store holds now.
            st.acked = found.then_some((rv, rh));
            st.pending.clear();
        }
        log.inflight_batch.clear();
    }
    eprintln!(
        "verified: {} acknowledged keys ({} written exactly once), {} keys with only unacknowledged writes",
        checked.0, checked.1, checked.2
    );
    assert!(
        failures.is_empty(),
        "{} keys violate durability, e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    max_version
}

fn opts() -> ServerOpts {
    ServerOpts {
        extra_args: vec!["--memtable-mb".into(), "1".into()],
        ..Default::default()
    }
}

/// Runs the load for `LOAD_SECS`, kills the server with SIGKILL while writers are mid-request,
/// and returns the writers' logs.
async fn load_then_kill9(server: &mut Server, logs: Vec<WriterLog>, round: u64) -> Vec<WriterLog> {
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = strata_testkit::StopOnDrop(stop.clone());
    let mut tasks = Vec::new();
    for (i, log) in logs.into_iter().enumerate() {
        let client = server.client().await;
        tasks.push(tokio::spawn(writer(
            i,
            client,
            log,
            round * 1000 + i as u64,
            killed.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs_f64(LOAD_SECS)).await;
    // Writers are still running: kill without warning.
    killed.store(true, Ordering::SeqCst);
    server.kill9();
    stop.store(true, Ordering::SeqCst);
    let mut out = Vec::new();
    for t in tasks {
        let log = tokio::time::timeout(Duration::from_secs(40), t)
            .await
            .expect("writer did not notice the dead server")
            .expect("writer panicked");
        if let Some(e) = &log.early_error {
            panic!(
                "a write failed while the server was up: {e}\nserver log:\n{}",
                server.log_text()
            );
        }
        out.push(log);
    }
    let puts: u64 = out.iter().map(|l| l.acked_puts).sum();
    let batches: u64 = out.iter().map(|l| l.acked_batches).sum();
    let inflight = out.iter().filter(|l| !l.inflight_batch.is_empty()).count();
    eprintln!(
        "round {round}: {puts} puts and {batches} batches acknowledged in {LOAD_SECS} s, \
         {inflight} batches in flight at the kill"
    );
    assert!(puts > 100, "load too small to mean anything ({puts} puts)");
    out
}

fn count_objects(dir: &Path, kind: &str) -> usize {
    let mut n = 0;
    let objects = dir.join("objects");
    if let Ok(parts) = std::fs::read_dir(&objects) {
        for p in parts.flatten() {
            if let Ok(files) = std::fs::read_dir(p.path().join(kind)) {
                n += files.count();
            }
        }
    }
    n
}

fn all_keys(logs: &[WriterLog]) -> Vec<String> {
    let mut keys: Vec<String> = logs.iter().flat_map(|l| l.keys.keys().cloned()).collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_mid_load_loses_no_acknowledged_write_over_two_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut logs: Vec<WriterLog> = (0..WRITERS).map(|_| WriterLog::default()).collect();
    let mut server = Server::start_with(dir.path(), opts());
    let mut prev_max = 0u64;
    for round in 1..=2u64 {
        let t = Instant::now();
        logs = load_then_kill9(&mut server, logs, round).await;
        // Per writer, versions of sequential acknowledged writes increase.
        for (i, l) in logs.iter().enumerate() {
            assert!(
                l.versions.windows(2).all(|w| w[0] < w[1]),
                "writer {i}: versions of sequential writes do not increase"
            );
            if let Some(first) = l.versions.first() {
                assert!(
                    *first > prev_max,
                    "writer {i} in round {round}: version {first} not above {prev_max} from before the restart"
                );
            }
        }
        eprintln!(
            "round {round}: {} SSTs, {} WAL segments on disk after the kill",
            count_objects(dir.path(), "sst"),
            count_objects(dir.path(), "wal")
        );
        let started = Instant::now();
        server = Server::start_with(dir.path(), opts());
        eprintln!("round {round}: restart took {:?}", started.elapsed());
        let mut c = server.client().await;
        let keys = all_keys(&logs);
        let read = read_all(&mut c, &keys).await;
        prev_max = verify_and_rebase(&mut logs, &read);
        for l in logs.iter_mut() {
            l.versions.clear();
            l.acked_puts = 0;
            l.acked_batches = 0;
        }
        eprintln!("round {round} took {:?}", t.elapsed());
    }
    // Finally, a write after the second restart continues above every version read.
    let mut c = server.client().await;
    let v = c
        .put(pb::PutRequest {
            key: Bytes::from_static(b"after"),
            value: Bytes::from_static(b"x"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(
        v > prev_max,
        "version {v} after restart not above {prev_max}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_durable_writes_survive_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path());
    let mut c = s.client().await;
    let acked = Acked::new();
    for i in 0..100u32 {
        let k = format!("k{i:03}");
        let v = format!("v{i}").repeat(i as usize + 1);
        let version = c
            .put(pb::PutRequest {
                key: Bytes::from(k.clone()),
                value: Bytes::from(v.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .version;
        acked.record(&k, &v, version);
    }
    let d = c
        .delete(pb::DeleteRequest {
            key: Bytes::from_static(b"k000"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.found);
    acked.record_delete("k000");
    s.kill9();
    let s2 = Server::start(dir.path());
    let mut c = s2.client().await;
    // Every put reads back with its value and version, and the deleted key is absent.
    acked.verify(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_writes_survive_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // A small memtable, so buffered data also crosses flushes before the shutdown.
    let mut s = Server::start_with(dir.path(), opts());
    let mut c = s.client().await;
    let mut rng = StdRng::seed_from_u64(7);
    let t0 = Instant::now();
    let mut want: HashMap<String, Option<(u64, u64)>> = HashMap::new();
    let buffered = pb::Durability::Buffered as i32;
    for i in 0..400 {
        let k = format!("b{i:04}");
        let v = make_value(&mut rng);
        let h = hash_bytes(&v);
        let version = c
            .put(pb::PutRequest {
                key: Bytes::from(k.clone()),
                value: Bytes::from(v),
                durability: buffered,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .version;
        want.insert(k, Some((version, h)));
    }
    for i in (0..400).step_by(9) {
        let k = format!("b{i:04}");
        c.delete(pb::DeleteRequest {
            key: Bytes::from(k.clone()),
            if_version: None,
            durability: buffered,
        })
        .await
        .unwrap();
        want.insert(k, None);
    }
    let mut ops = Vec::new();
    let mut batch = Vec::new();
    for i in 0..20 {
        let k = format!("batch{i:02}");
        let v = make_value(&mut rng);
        batch.push((k.clone(), hash_bytes(&v)));
        ops.push(pb::WriteOp {
            op: Some(pb::write_op::Op::Put(pb::PutRequest {
                key: Bytes::from(k),
                value: Bytes::from(v),
                ..Default::default()
            })),
        });
    }
    let versions = c
        .batch_write(pb::BatchWriteRequest {
            ops,
            durability: buffered,
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    for ((k, h), v) in batch.into_iter().zip(versions) {
        want.insert(k, Some((v, h)));
    }
    eprintln!("buffered writes took {:?}", t0.elapsed());
    drop(c);
    let t = Instant::now();
    assert!(
        s.terminate(),
        "SIGTERM must exit with code 0; log:\n{}",
        s.log_text()
    );
    eprintln!("clean shutdown took {:?}", t.elapsed());

    let s2 = Server::start_with(dir.path(), opts());
    let mut c = s2.client().await;
    let mut keys: Vec<String> = want.keys().cloned().collect();
    keys.sort();
    let read = read_all(&mut c, &keys).await;
    let mut lost = Vec::new();
    for k in &keys {
        let (found, h, v) = read[k];
        match want[k] {
            Some((wv, wh)) => {
                if !found || (v, h) != (wv, wh) {
                    lost.push(format!(
                        "{k}: want version {wv}, read found={found} version={v}"
                    ));
                }
            }
            None => {
                if found {
                    lost.push(format!("{k}: deleted (buffered) but reads version {v}"));
                }
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} buffered writes lost across a clean shutdown:\n{}",
        lost.len(),
        lost.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

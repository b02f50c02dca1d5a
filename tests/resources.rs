//! Bounded resources (issue 11) against the real `strata serve` binary: replies bounded
//! before they are built, oversized requests refused as gRPC says, and write stalls that
//! refuse (with nothing applied) rather than let compaction debt grow without bound.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use bytes::Bytes;
use std::time::Duration;
use strata_compute::pb;
use strata_testkit::kv::{b, put_req};
use strata_testkit::{Acked, Server, ServerOpts};
use tonic::Code;

/// Peak resident memory of a process so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn a_batch_get_whose_reply_would_pass_the_limit_returns_what_fits_and_lists_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let mut c = s.client().await;
    let big = vec![7u8; 1_048_576];
    c.put(put_req("big", &big)).await.unwrap();
    c.put(put_req("small", "s")).await.unwrap();
    // 1,000 names of one 1 MiB value: a ~1 GB reply if it were built whole.
    let mut keys: Vec<Bytes> = vec![b("small")];
    keys.extend(std::iter::repeat_n(b("big"), 999));
    let r = c
        .batch_get(pb::BatchGetRequest {
            keys: keys.clone(),
            consistency: 0,
        })
        .await
        .expect("an oversized reply is cut, not refused")
        .into_inner();
    let n = r.results.len();
    assert!(
        (32..100).contains(&n),
        "about 64 MiB of 1 MiB values fit, got {n}"
    );
    assert_eq!(n + r.unprocessed_keys.len(), keys.len());
    // Results are the first keys in request order; the rest are listed in order.
    assert_eq!(r.results[0].value, b("s"));
    assert!(r.results[1..]
        .iter()
        .all(|g| g.found && g.value.len() == big.len()));
    assert_eq!(r.unprocessed_keys, keys[n..].to_vec());
    let rss = peak_rss(s.child.id());
    assert!(
        rss < 700 << 20,
        "the server's peak RSS was {} MiB: the reply was not bounded before it was built",
        rss >> 20
    );

    // The Rust client library asks for the rest until every key has its result.
    let cl = strata_client::Client::connect(&[s.addr.as_str()])
        .await
        .unwrap();
    let all = cl.batch_get(keys[..200].to_vec()).await.unwrap();
    assert_eq!(all.len(), 200);
    assert!(all[1..]
        .iter()
        .all(|g| g.found && g.value.len() == big.len()));
}

#[tokio::test]
async fn a_request_above_the_message_limit_is_resource_exhausted_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let mut c = s.client().await.max_encoding_message_size(128 << 20);
    // 70 values of 1 MiB: each valid, together past the 64 MiB message limit.
    let ops: Vec<pb::WriteOp> = (0..70)
        .map(|i| pb::WriteOp {
            op: Some(pb::write_op::Op::Put(put_req(
                format!("k{i:02}"),
                vec![1u8; 1_048_576],
            ))),
        })
        .collect();
    let err = c
        .batch_write(pb::BatchWriteRequest { ops, durability: 0 })
        .await
        .expect_err("a 70 MiB request must be refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("message limit"), "{}", err.message());
    assert_eq!(
        strata_proto::reason::reason_of(&err),
        Some(strata_proto::reason::MESSAGE_TOO_LARGE)
    );
    for i in [0, 69] {
        let g = c
            .get(pb::GetRequest {
                key: b(format!("k{i:02}")),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!g.found, "k{i:02} of a refused batch was applied");
    }
}

#[tokio::test]
async fn writes_stall_past_the_l0_stop_limit_and_resume_once_compaction_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let stall_args = |compaction: &str| ServerOpts {
        extra_args: [
            "--memtable-mb",
            "1",
            "--compaction",
            compaction,
            "--l0-slowdown-files",
            "2",
            "--l0-stop-files",
            "4",
            "--write-stall-max-wait-ms",
            "300",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Default::default()
    };
    // Without compaction, flushes pile up in L0 until writes are refused.
    let mut s = Server::start_with(dir.path(), stall_args("false"));
    let mut c = s.client().await;
    let value = vec![3u8; 64 << 10];
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2_000 {
        let key = format!("w{i:05}");
        match c.put(put_req(&key, &value)).await {
            Ok(_) => acked.push(key),
            Err(e) => {
                refused = Some((key, e));
                break;
            }
        }
    }
    let (key, err) = refused.expect("writes must stall once L0 reaches its stop limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().starts_with("write stall:"),
        "{}",
        err.message()
    );
    assert_eq!(
        strata_proto::reason::reason_of(&err),
        Some(strata_proto::reason::WRITE_STALL)
    );
    assert!(err.message().contains("L0 files"), "{}", err.message());
    assert!(err.metadata().get("retry-after-ms").is_some());
    assert!(
        acked.len() >= 40,
        "only {} writes before the stall",
        acked.len()
    );
    let g = c
        .get(pb::GetRequest {
            key: b(&key),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!g.found, "the refused write {key} was applied");
    // Reads keep working during the stall.
    let g = c
        .get(pb::GetRequest {
            key: b(&acked[0]),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(g.found);
    assert!(
        s.log_text().contains("write stall"),
        "the stall is logged with its reason"
    );
    assert!(s.terminate(), "clean shutdown");

    // With compaction, L0 drains and writes go through again; nothing acknowledged is lost.
    let s = Server::start_with(dir.path(), stall_args("true"));
    let mut c = s.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.put(put_req("after", "ok")).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < deadline, "still stalled: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    for key in &acked {
        let g = c
            .get(pb::GetRequest {
                key: b(key),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(g.found && g.value.len() == value.len(), "{key} lost");
    }
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallVolume {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallVolume {
    fn mount(mb: u64) -> SmallVolume {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (root, or a sandbox that allows it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallVolume { path, _dir: dir }
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_fast_keeps_reads_and_resumes_when_space_returns() {
    let vol = SmallVolume::mount(96);
    // Room to give back once the disk is full.
    let filler = vol.path.join("filler");
    std::fs::write(&filler, vec![0u8; 24 << 20]).unwrap();
    let data = vol.path.join("data");
    let args: Vec<String> = ["--memtable-mb", "4", "--cache-disk-mb", "1024"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let opts = ServerOpts {
        extra_args: args.clone(),
        ..Default::default()
    };
    let mut s = Server::start_with(&data, opts.clone());
    assert!(
        s.log_text().contains("disk cache shrunk to fit"),
        "a 1 GiB disk cache on a 96 MiB volume must shrink"
    );
    let mut c = s.client().await;
    let value = vec![5u8; 256 << 10];
    // Each acknowledged write must be present after the restart (its value is not checked).
    let acked = Acked::new();
    let mut exhausted = None;
    for i in 0..1_000 {
        let key = format!("f{i:04}");
        let started = std::time::Instant::now();
        let r = c.put(put_req(&key, &value)).await;
        let took = started.elapsed();
        match r {
            Ok(_) => acked.record_present(&key),
            Err(e) => {
                assert!(
                    took < Duration::from_secs(3),
                    "a write on a full disk took {took:?}: {e:?}"
                );
                match e.code() {
                    // Sequenced before the disk filled: outcome unknown, answered at once.
                    Code::Unavailable => assert!(e.message().contains("no space"), "{e:?}"),
                    Code::ResourceExhausted => {
                        exhausted = Some(e);
                        break;
                    }
                    _ => panic!("unexpected answer on a full disk: {e:?}"),
                }
            }
        }
    }
    let e =
        exhausted.expect("writes must be refused with RESOURCE_EXHAUSTED once the disk is full");
    assert!(e.message().contains("no space left"), "{}", e.message());
    assert_eq!(
        strata_proto::reason::reason_of(&e),
        Some(strata_proto::reason::NO_SPACE)
    );
    assert!(
        acked.len() > 10,
        "only {} writes before the disk filled",
        acked.len()
    );
    // Refusals stay fast, and reads keep working.
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = c.put(put_req("refused", "x")).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(r.unwrap_err().code(), Code::ResourceExhausted);
    }
    // The first acknowledged write (the keys sort in the order they were written).
    let g = c
        .get(pb::GetRequest {
            key: b(&acked.keys()[0]),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(g.found);

    // Space returns: writes resume by themselves.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match c.put(put_req("resumed", "yes")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "writes did not resume after space returned: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    acked.record_present("resumed");
    let started = std::time::Instant::now();
    assert!(s.terminate(), "SIGTERM must finish cleanly");
    assert!(started.elapsed() < Duration::from_secs(45));

    // Every acknowledged write is there after a restart.
    let s = Server::start_with(&data, opts);
    let mut c = s.client().await;
    acked.verify(&mut c).await;
}

fn walkdir_names(d: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir_names(&p));
        } else {
            out.push(format!(
                "{} {}",
                p.display(),
                p.metadata().map(|m| m.len()).unwrap_or(0)
            ));
        }
    }
    out
}

/// Bytes of the files under `dir` whose path contains `/sst/`.
fn sst_bytes(dir: &std::path::Path) -> u64 {
    fn walk(d: &std::path::Path, out: &mut u64) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&p, out),
                Ok(m) if p.to_string_lossy().contains("/sst/") => *out += m.len(),
                _ => {}
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flood_of_overwrites_the_ssts_settle_within_3x_the_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        ServerOpts {
            extra_args: ["--memtable-mb", "2"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Default::default()
        },
    );
    // 128 keys of 64 KiB (8 MiB live), each overwritten 12 times by 8 writers: 96 MiB
    // written, flushed every 2 MiB.
    // Incompressible values: SSTs are compressed.
    let value: Vec<u8> = {
        use rand::RngCore;
        let mut v = vec![0u8; 64 << 10];
        rand::rng().fill_bytes(&mut v);
        v
    };
    let live = 128 * value.len() as u64;
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let mut c = s.client().await;
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..12u64 {
                for k in (w * 16)..(w * 16 + 16) {
                    let mut v = value.clone();
                    v[0] = round as u8;
                    c.put(put_req(format!("k{k:03}"), v)).await.unwrap();
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let objects = dir.path().join("objects");
    // Compaction merges the flushed files and the embedded GC deletes the inputs as soon as
    // no reader holds them (after a 10 s grace), not five minutes later.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let n = sst_bytes(&objects);
        // Settled: at most 3x live, and the data is in SSTs (all but one memtable of it).
        if n <= 3 * live && n + (2 << 20) >= live {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SSTs still hold {} MiB for {} MiB of live data; objects: {:?}",
            n >> 20,
            live >> 20,
            walkdir_names(&objects)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut c = s.client().await;
    for k in 0..128 {
        let g = c
            .get(pb::GetRequest {
                key: b(format!("k{k:03}")),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(g.found && g.value[0] == 11, "k{k:03} is not its last write");
    }
}

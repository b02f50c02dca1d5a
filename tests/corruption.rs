//! Corrupt objects are detected as errors, never served as data: a damaged WAL segment or
//! manifest stops recovery with an error naming the object, a damaged SST data block makes
//! the read that touches it fail with DATA_LOSS. And the local cache is only a cache: wiping
//! it between restarts loses nothing.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use bytes::Bytes;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use strata_compute::pb;
use strata_format::{decode_wal_segment, DataBlock, SstFooter, SstIndex, SST_FOOTER_LEN};
use strata_testkit::kv::Kv;
use strata_testkit::{Server, ServerOpts};
use tonic::Code;

fn opts(args: &[&str]) -> ServerOpts {
    ServerOpts {
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Objects of one kind (`wal`, `sst`, `manifest`) of every partition, sorted by path (ids
/// are zero-padded, so that is numeric order within a partition).
fn objects(data_dir: &Path, kind: &str, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for part in std::fs::read_dir(data_dir.join("objects"))
        .unwrap()
        .flatten()
    {
        let dir = part.path().join(kind);
        if let Ok(files) = std::fs::read_dir(&dir) {
            for f in files.flatten() {
                if f.path().extension().is_some_and(|e| e == ext) {
                    out.push(f.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// Flips every bit of the byte at `offset` in place.
fn flip_byte(path: &Path, offset: u64) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    #[expect(
        clippy::permissions_set_readonly_false,
        reason = "the test makes a stored object writable to corrupt it"
    )]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn value_for(i: usize) -> Vec<u8> {
    // ~1 KiB, partly compressible, distinct per key.
    let mut v = format!("value-{i:06}-").into_bytes();
    while v.len() < 1000 {
        v.extend_from_slice(
            format!("{:x}", (i as u64).wrapping_mul(v.len() as u64 + 0x9e37)).as_bytes(),
        );
    }
    v
}

fn key_for(i: usize) -> String {
    format!("sst/{i:06}")
}

/// Writes `n` keys `sst/{i:06}` (each once) with ~1 KiB values, in batches of 100.
async fn write_keys(c: &mut Kv, n: usize) -> BTreeMap<String, (Vec<u8>, u64)> {
    let mut out = BTreeMap::new();
    for start in (0..n).step_by(100) {
        let idx: Vec<usize> = (start..(start + 100).min(n)).collect();
        let ops = idx
            .iter()
            .map(|&i| pb::WriteOp {
                op: Some(pb::write_op::Op::Put(pb::PutRequest {
                    key: Bytes::from(key_for(i)),
                    value: Bytes::from(value_for(i)),
                    ..Default::default()
                })),
            })
            .collect();
        let versions = c
            .batch_write(pb::BatchWriteRequest { ops, durability: 0 })
            .await
            .expect("batch_write")
            .into_inner()
            .versions;
        for (&i, v) in idx.iter().zip(versions) {
            out.insert(key_for(i), (value_for(i), v));
        }
    }
    out
}

async fn get(c: &mut Kv, key: &str) -> Result<pb::GetResponse, tonic::Status> {
    c.get(pb::GetRequest {
        key: Bytes::from(key.to_string()),
        consistency: 0,
    })
    .await
    .map(|r| r.into_inner())
}

/// Checks that every key reads back with its value and version.
async fn check_all(c: &mut Kv, want: &BTreeMap<String, (Vec<u8>, u64)>) {
    let keys: Vec<&String> = want.keys().collect();
    for chunk in keys.chunks(200) {
        let r = c
            .batch_get(pb::BatchGetRequest {
                keys: chunk.iter().map(|k| Bytes::from((*k).clone())).collect(),
                consistency: 0,
            })
            .await
            .expect("batch_get")
            .into_inner()
            .results;
        for (k, g) in chunk.iter().zip(r) {
            let (v, ver) = &want[*k];
            assert!(g.found, "{k} lost");
            assert_eq!(g.version, *ver, "{k}: version");
            assert!(g.value.as_ref() == v.as_slice(), "{k}: value differs");
        }
    }
    // And a full scan agrees.
    let mut stream = c
        .scan(pb::ScanRequest {
            prefix: Bytes::from_static(b"sst/"),
            ..Default::default()
        })
        .await
        .expect("scan")
        .into_inner();
    let mut n = 0;
    let mut it = want.iter();
    while let Some(msg) = stream.message().await.expect("scan stream") {
        for e in msg.entries {
            let (k, (v, ver)) = it.next().expect("scan returned more keys than written");
            assert_eq!(e.key.as_ref(), k.as_bytes());
            assert_eq!(e.version, *ver);
            assert!(e.value.as_ref() == v.as_slice());
            n += 1;
        }
    }
    assert_eq!(n, want.len(), "scan count");
}

#[track_caller]
fn assert_startup_fails(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    match Server::try_start_with(dir, opts(args)) {
        Ok(s) => panic!(
            "server started on a corrupt store; it must refuse. log:\n{}",
            s.log_text()
        ),
        Err(log) => {
            eprintln!("startup failed as expected:\n{log}");
            assert!(
                !log.contains("strata listening on"),
                "it served before failing"
            );
            assert!(
                !log.contains("exited with exit status: 0"),
                "a failed recovery must exit non-zero:\n{log}"
            );
            let lower = log.to_lowercase();
            for n in needles {
                assert!(
                    lower.contains(&n.to_lowercase()),
                    "startup error does not mention {n:?}:\n{log}"
                );
            }
            log
        }
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_wal_segment_fails_startup_naming_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_with(dir.path(), opts(&["--compaction", "false"]));
    let mut c = s.client().await;
    // A few groups of durable writes; the default 64 MiB memtable never flushes, so every
    // segment is still to be replayed.
    for i in 0..30 {
        c.put(pb::PutRequest {
            key: Bytes::from(format!("w{i:03}")),
            value: Bytes::from(vec![b'a' + (i % 26) as u8; 200 + i * 10]),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    drop(c);
    s.kill9();

    // The newest segment holding records (startup fences create empty ones).
    let segs = objects(dir.path(), "wal", "wal");
    let target = segs
        .iter()
        .rev()
        .find(|p| {
            let data = std::fs::read(p).unwrap();
            let (_, batches) = decode_wal_segment(&data).expect("intact segment before the flip");
            !batches.is_empty()
        })
        .expect("a non-empty WAL segment")
        .clone();
    let len = std::fs::metadata(&target).unwrap().len();
    flip_byte(&target, len / 2);
    assert!(decode_wal_segment(&std::fs::read(&target).unwrap()).is_err());

    let name = file_name(&target);
    assert_startup_fails(dir.path(), &["--compaction", "false"], &[&name, "corrupt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_sst_data_block_reads_as_data_loss_never_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--memtable-mb", "1", "--compaction", "false"];
    let mut s = Server::start_with(dir.path(), opts(&args));
    let mut c = s.client().await;
    let want = write_keys(&mut c, 3000).await;
    drop(c);
    assert!(s.terminate(), "clean shutdown; log:\n{}", s.log_text());

    let ssts = objects(dir.path(), "sst", "sst");
    assert!(
        !ssts.is_empty(),
        "1 MiB memtables and ~3 MiB of data should have flushed SSTs"
    );
    let target = ssts[0].clone();
    let data = std::fs::read(&target).unwrap();
    let footer = SstFooter::decode(&data[data.len() - SST_FOOTER_LEN..]).expect("footer");
    let index = SstIndex::decode(&data[footer.index.range()]).expect("index");
    assert!(index.blocks.len() >= 2, "want an SST with several blocks");
    let (_, h0) = index.blocks[0];
    let block0 = DataBlock::decode(&data[h0.range()]).expect("block 0");
    let hit_key = String::from_utf8(block0.entries()[block0.len() / 2].key.to_vec()).unwrap();
    // A key in a later block of the same SST, which must stay readable.
    let (_, h_last) = *index.blocks.last().unwrap();
    let last_block = DataBlock::decode(&data[h_last.range()]).expect("last block");
    let ok_key = String::from_utf8(last_block.entries()[0].key.to_vec()).unwrap();
    assert!(want.contains_key(&hit_key) && want.contains_key(&ok_key));
    eprintln!(
        "corrupting {} block 0 ({} bytes at {}, keys {:?}..{:?}); reading {hit_key}",
        target.display(),
        h0.len,
        h0.offset,
        block0.entries().first().map(|e| e.key.clone()),
        block0.entries().last().map(|e| e.key.clone()),
    );
    flip_byte(&target, h0.offset + h0.len / 2);

    // No cached copy may hide the damage. (The harness always passes --cache-disk-mb 64 and
    // the CLI rejects a second --cache-disk-mb, so wipe the disk tier instead.)
    let _ = std::fs::remove_dir_all(dir.path().join("cache"));
    let s = Server::start_with(dir.path(), opts(&args));
    let mut c = s.client().await;

    match get(&mut c, &hit_key).await {
        Ok(g) => panic!(
            "read of {hit_key} in a corrupt block answered found={} version={} value_ok={}; \
             expected DATA_LOSS",
            g.found,
            g.version,
            g.value.as_ref() == want[&hit_key].0.as_slice()
        ),
        Err(st) => {
            eprintln!("get {hit_key}: {:?} {}", st.code(), st.message());
            assert_eq!(st.code(), Code::DataLoss, "message: {}", st.message());
        }
    }
    // Again (the failure is not cached as an absent key or anything else).
    assert_eq!(
        get(&mut c, &hit_key).await.unwrap_err().code(),
        Code::DataLoss
    );
    // A batch get that touches the block fails as a whole.
    let r = c
        .batch_get(pb::BatchGetRequest {
            keys: vec![Bytes::from(ok_key.clone()), Bytes::from(hit_key.clone())],
            consistency: 0,
        })
        .await;
    assert_eq!(r.map(|_| ()).unwrap_err().code(), Code::DataLoss);
    // A scan across the block reports the loss instead of skipping the block.
    let mut stream = c
        .scan(pb::ScanRequest {
            prefix: Bytes::from_static(b"sst/"),
            ..Default::default()
        })
        .await
        .expect("scan starts")
        .into_inner();
    let mut got = Vec::new();
    let err = loop {
        match stream.message().await {
            Ok(Some(m)) => got.extend(m.entries),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let err = err.unwrap_or_else(|| {
        panic!(
            "scan over a corrupt block finished without error ({} entries, {} written)",
            got.len(),
            want.len()
        )
    });
    assert_eq!(err.code(), Code::DataLoss, "scan error: {}", err.message());
    for e in &got {
        let k = std::str::from_utf8(&e.key).unwrap();
        assert!(
            e.value.as_ref() == want[k].0.as_slice(),
            "scan returned wrong data for {k}"
        );
    }
    // The rest of the SST, and other SSTs, still read correctly.
    let g = get(&mut c, &ok_key)
        .await
        .expect("a key in an intact block");
    assert!(
        g.found && g.value.as_ref() == want[&ok_key].0.as_slice() && g.version == want[&ok_key].1
    );
    let other = want.keys().last().unwrap();
    let g = get(&mut c, other)
        .await
        .expect("a key in another SST or block");
    assert!(g.found && g.value.as_ref() == want[other].0.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_sst_footer_fails_startup_naming_the_sst() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--memtable-mb", "1", "--compaction", "false"];
    let mut s = Server::start_with(dir.path(), opts(&args));
    let mut c = s.client().await;
    write_keys(&mut c, 2500).await;
    drop(c);
    assert!(s.terminate(), "clean shutdown; log:\n{}", s.log_text());
    let ssts = objects(dir.path(), "sst", "sst");
    let target = ssts.last().expect("an SST").clone();
    let len = std::fs::metadata(&target).unwrap().len();
    // Inside the footer's block handles (the footer's crc covers them).
    flip_byte(&target, len - SST_FOOTER_LEN as u64 + 20);
    let _ = std::fs::remove_dir_all(dir.path().join("cache"));
    let stem = file_name(&target);
    assert_startup_fails(dir.path(), &args, &[stem.trim_end_matches(".sst")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_manifest_fails_startup() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--memtable-mb", "1", "--compaction", "false"];
    let mut s = Server::start_with(dir.path(), opts(&args));
    let mut c = s.client().await;
    write_keys(&mut c, 1500).await;
    drop(c);
    assert!(s.terminate(), "clean shutdown; log:\n{}", s.log_text());
    let manifests = objects(dir.path(), "manifest", "manifest");
    let newest = manifests.last().expect("a manifest").clone();
    let len = std::fs::metadata(&newest).unwrap().len();
    flip_byte(&newest, len / 2);
    let name = file_name(&newest);
    assert_startup_fails(dir.path(), &args, &[&name, "manifest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiping_the_cache_directory_between_restarts_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--memtable-mb", "1"];
    let mut s = Server::start_with(dir.path(), opts(&args));
    let mut c = s.client().await;
    let mut want = write_keys(&mut c, 3000).await;
    // Reads fill the cache (memory and disk tiers).
    check_all(&mut c, &want).await;
    drop(c);
    assert!(s.terminate(), "clean shutdown; log:\n{}", s.log_text());
    assert!(
        dir.path().join("cache").exists(),
        "expected a disk cache under the data dir"
    );
    assert!(!objects(dir.path(), "sst", "sst").is_empty());

    // 1. Clean shutdown, cache wiped.
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let mut s = Server::start_with(dir.path(), opts(&args));
    let mut c = s.client().await;
    check_all(&mut c, &want).await;
    // More writes (overwriting some keys), then kill -9.
    for i in (0..3000).step_by(10) {
        let k = key_for(i);
        let v = format!("second-{i}").into_bytes();
        let ver = c
            .put(pb::PutRequest {
                key: Bytes::from(k.clone()),
                value: Bytes::from(v.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .version;
        want.insert(k, (v, ver));
    }
    check_all(&mut c, &want).await;
    drop(c);
    s.kill9();

    // 2. Crash, cache wiped.
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let s = Server::start_with(dir.path(), opts(&args));
    let mut c = s.client().await;
    check_all(&mut c, &want).await;
}

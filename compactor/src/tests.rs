//! End-to-end tests of the compactor on an in-memory object store.
#![allow(
    clippy::disallowed_methods,
    reason = "these tests wait on the real clock where they drive real tasks"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_format::{read_all_entries, Entry, Kind, Manifest, SstBuilder, SstInfo, SstOptions};
use strata_manifest::layout::{new_sst_id, parse_sst_path, sst_path, sst_prefix};
use strata_manifest::{EmbeddedManifestStore, ManifestResult, ManifestStore};
use strata_objstore::{ObjectStoreBackend, PutMode, Store};
use tokio::sync::watch;

use crate::compactor::Committed;
use crate::{plan, CompactionOptions, Compactor, Strategy};
use strata_manifest::now_ms;

const P: u32 = 3;
const EPOCH: u64 = 7;
const FAR_FUTURE: u64 = u64::MAX / 2;

struct Env {
    store: Arc<dyn Store>,
    manifests: Arc<EmbeddedManifestStore>,
}

impl Env {
    /// A store with manifest version 1: empty tree, writer epoch 7.
    async fn new() -> Env {
        Env::with_store(Arc::new(ObjectStoreBackend::memory())).await
    }

    /// Like [`Env::new`], on `store`.
    async fn with_store(store: Arc<dyn Store>) -> Env {
        let manifests = Arc::new(EmbeddedManifestStore::new(store.clone()));
        let m = Manifest {
            version: 1,
            writer_epoch: EPOCH,
            last_flushed_seq: 0,
            wal_replay_from: 3,
            next_sst_id: 1,
            l0: vec![],
            levels: vec![],
            roots: Vec::new(),
            created_ms: 1,
            dropped_tombstone_seq: 0,
        };
        manifests.commit(P, &m).await.unwrap();
        Env { store, manifests }
    }

    fn compactor(&self, opts: CompactionOptions) -> Compactor {
        Compactor::new(self.store.clone(), self.manifests.clone(), P, opts)
    }

    /// Compacts until nothing is left to do, then collects garbage and sweeps orphans (twice:
    /// the first sweep only notes candidates) with no grace at all: whatever survives is kept
    /// by a reference or a pin. Returns the compactor, to sweep again later.
    async fn compact_all_and_collect_without_grace(&self) -> Compactor {
        let c = self.compactor(CompactionOptions {
            gc_grace: Duration::ZERO,
            orphan_grace: Duration::ZERO,
            ..small_opts()
        });
        while c.compact_once().await.unwrap().is_some() {}
        c.collect_garbage().await.unwrap();
        c.sweep_orphans().await.unwrap();
        c.sweep_orphans().await.unwrap();
        c
    }

    async fn latest(&self) -> Arc<Manifest> {
        self.manifests.load_latest(P).await.unwrap().unwrap()
    }

    /// Flushes `entries` as a new L0 file, the way the engine does.
    async fn flush(&self, entries: Vec<Entry>) -> u64 {
        let info = write_sst(&*self.store, entries, 0).await;
        let id = info.id;
        commit_change(&*self.manifests, move |m| {
            m.last_flushed_seq = m.last_flushed_seq.max(info.props.max_seq);
            m.wal_replay_from += 1;
            m.l0.insert(0, info);
        })
        .await;
        id
    }

    /// Places `entries` as one file in level `n` (1 = L1).
    async fn place(&self, n: usize, entries: Vec<Entry>) -> u64 {
        let info = write_sst(&*self.store, entries, n as u32).await;
        let id = info.id;
        commit_change(&*self.manifests, move |m| {
            // As if flushed and compacted down: the tree's replay point covers its seqs.
            m.last_flushed_seq = m.last_flushed_seq.max(info.props.max_seq);
            while m.levels.len() < n {
                m.levels.push(vec![]);
            }
            m.levels[n - 1].push(info);
            m.levels[n - 1].sort_by(|a, b| a.props.smallest_key.cmp(&b.props.smallest_key));
        })
        .await;
        id
    }

    /// Ids of the SST objects in the store.
    async fn sst_objects(&self) -> BTreeSet<u64> {
        self.store
            .list(&sst_prefix(P))
            .await
            .unwrap()
            .iter()
            .filter_map(|o| parse_sst_path(&o.path))
            .collect()
    }

    /// Every entry of every file of `m`, by id.
    async fn load_files(&self, m: &Manifest) -> HashMap<u64, Vec<Entry>> {
        let mut files = HashMap::new();
        for f in m.l0.iter().chain(m.levels.iter().flatten()) {
            let data = self.store.get(&sst_path(P, f.id)).await.unwrap();
            assert_eq!(data.len() as u64, f.props.file_size);
            files.insert(f.id, read_all_entries(&data).unwrap());
        }
        files
    }
}

async fn write_sst(store: &dyn Store, mut entries: Vec<Entry>, level: u32) -> SstInfo {
    entries.sort_by(|a, b| a.internal_cmp(b));
    let mut b = SstBuilder::new(SstOptions::default());
    for e in &entries {
        b.add(e).unwrap();
    }
    let (data, props) = b.finish().unwrap();
    let id = new_sst_id();
    store
        .put(&sst_path(P, id), data, PutMode::Create)
        .await
        .unwrap();
    SstInfo { id, level, props }
}

async fn commit_change(ms: &dyn ManifestStore, change: impl FnOnce(&mut Manifest)) {
    let latest = ms.load_latest(P).await.unwrap().unwrap();
    let mut next = (*latest).clone();
    next.version += 1;
    change(&mut next);
    ms.commit(P, &next).await.unwrap();
}

/// The read path of the engine: L0 newest first, then each level; the first file that holds
/// the key answers with its newest version there.
fn read(m: &Manifest, files: &HashMap<u64, Vec<Entry>>, key: &[u8]) -> Option<Entry> {
    let covers =
        |f: &SstInfo| f.props.smallest_key.as_ref() <= key && f.props.largest_key.as_ref() >= key;
    let candidates =
        m.l0.iter()
            .filter(|f| covers(f))
            .chain(m.levels.iter().filter_map(|l| l.iter().find(|f| covers(f))));
    for f in candidates {
        if let Some(e) = files[&f.id].iter().find(|e| e.key.as_ref() == key) {
            return Some(e.clone());
        }
    }
    None
}

/// The visible value of `key`: a live put.
fn visible(e: Option<Entry>) -> Option<Entry> {
    e.filter(|e| e.kind == Kind::Put && !e.is_expired(strata_manifest::now_ms()))
}

/// Checks the structural invariants of a manifest.
fn check_invariants(m: &Manifest) {
    assert_eq!(m.writer_epoch, EPOCH);
    for f in &m.l0 {
        assert_eq!(f.level, 0);
    }
    for (i, level) in m.levels.iter().enumerate() {
        for f in level {
            assert_eq!(f.level as usize, i + 1, "level field of SST {}", f.id);
            assert!(f.props.smallest_key <= f.props.largest_key);
        }
        for pair in level.windows(2) {
            assert!(
                pair[0].props.largest_key < pair[1].props.smallest_key,
                "L{} is not sorted and disjoint",
                i + 1
            );
        }
    }
    let mut ids: Vec<u64> =
        m.l0.iter()
            .chain(m.levels.iter().flatten())
            .map(|f| f.id)
            .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an SST is listed twice");
}

fn referenced(m: &Manifest) -> BTreeSet<u64> {
    m.l0.iter()
        .chain(m.levels.iter().flatten())
        .map(|f| f.id)
        .collect()
}

fn small_opts() -> CompactionOptions {
    CompactionOptions {
        l0_trigger: 4,
        l1_target_bytes: 1 << 30,
        gc_grace: Duration::ZERO,
        ..CompactionOptions::default()
    }
}

fn put(key: &str, seq: u64, value: &str) -> Entry {
    Entry::put(key.to_string(), seq, value.to_string())
}

fn put_ttl(key: &str, seq: u64, value: &str, expires_at_ms: u64) -> Entry {
    let mut e = put(key, seq, value);
    e.expires_at_ms = expires_at_ms;
    e
}

fn del(key: &str, seq: u64) -> Entry {
    Entry::delete(key.to_string(), seq)
}

#[tokio::test]
async fn nothing_to_do_on_a_small_tree() {
    let env = Env::new().await;
    let c = env.compactor(small_opts());
    assert!(c.compact_once().await.unwrap().is_none());
    env.flush(vec![put("a", 1, "x")]).await;
    assert!(c.compact_once().await.unwrap().is_none());
    assert_eq!(env.latest().await.version, 2);
    // A partition without any manifest has nothing to do either.
    let other = Compactor::new(
        env.store.clone(),
        env.manifests.clone(),
        P + 1,
        small_opts(),
    );
    assert!(other.compact_once().await.unwrap().is_none());
}

/// An output larger than a part is written in parts as it fills; a part that fails fails the
/// job and leaves no object behind (its reserved id is deleted), and the job runs again.
#[tokio::test]
async fn a_large_output_streams_in_parts_and_a_failed_part_leaves_nothing() {
    let faults = strata_objstore::Faults::default();
    let env = Env::with_store(Arc::new(strata_objstore::FaultInjecting::new(
        Arc::new(ObjectStoreBackend::memory()),
        faults.clone(),
    )))
    .await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut expected = BTreeMap::new();
    let mut seq = 0;
    for f in 0..4 {
        let mut entries = Vec::new();
        for i in 0..800 {
            seq += 1;
            // Incompressible values: 4 × 800 × 4 KiB ≈ 12.5 MiB out, more than one part.
            let value: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
            let key = format!("k{f}-{i:04}");
            expected.insert(key.clone(), value.clone());
            entries.push(Entry::put(key, seq, value));
        }
        env.flush(entries).await;
    }
    let inputs = env.sst_objects().await;
    let before = env.latest().await;
    let c = env.compactor(small_opts());

    faults.fail_upload_parts(true);
    assert!(
        c.compact_once().await.is_err(),
        "a failed part must fail the job"
    );
    assert_eq!(
        env.sst_objects().await,
        inputs,
        "the failed output's id is left behind"
    );
    assert_eq!(env.latest().await.version, before.version);

    faults.fail_upload_parts(false);
    let r = c.compact_once().await.unwrap().unwrap();
    assert_eq!(r.output_files, 1);
    assert!(
        r.output_bytes > crate::compactor::OUTPUT_PART_BYTES as u64,
        "{} bytes: not streamed in parts",
        r.output_bytes
    );
    let after = env.latest().await;
    let files = env.load_files(&after).await;
    let got: BTreeMap<String, Vec<u8>> = files
        .values()
        .flatten()
        .map(|e| (String::from_utf8(e.key.to_vec()).unwrap(), e.value.to_vec()))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn l0_compaction_merges_into_l1_and_keeps_the_header() {
    let env = Env::new().await;
    env.place(1, vec![put("a", 1, "a1"), put("m", 2, "m2")])
        .await;
    env.place(1, vec![put("x", 3, "x3"), put("y", 4, "y4")])
        .await;
    let mut seq = 10;
    for i in 0..4 {
        let mut entries = vec![];
        for k in ["a", "b", "c"] {
            seq += 1;
            entries.push(put(k, seq, &format!("{k}-{i}")));
        }
        env.flush(entries).await;
    }
    let before = env.latest().await;
    let c = env.compactor(small_opts());
    let r = c.compact_once().await.unwrap().unwrap();
    assert_eq!((r.input_level, r.output_level), (0, 1));
    assert_eq!(r.input_files, 5, "4 L0 files and the L1 file a..m");
    assert_eq!(r.entries_in, 14);
    assert_eq!(r.entries_out, 4);
    assert_eq!(r.output_files, 1);
    assert_eq!(r.partition, P);
    assert_eq!(r.manifest_version, before.version + 1);
    assert!(!r.trivial_move);
    let after = env.latest().await;
    check_invariants(&after);
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.writer_epoch, before.writer_epoch);
    assert_eq!(after.last_flushed_seq, before.last_flushed_seq);
    assert_eq!(after.wal_replay_from, before.wal_replay_from);
    assert_eq!(after.next_sst_id, before.next_sst_id);
    assert!(after.l0.is_empty());
    assert_eq!(after.levels[0].len(), 2);
    let files = env.load_files(&after).await;
    let get = |k: &str| read(&after, &files, k.as_bytes()).map(|e| e.value);
    assert_eq!(get("a"), Some(Bytes::from("a-3")));
    assert_eq!(get("b"), Some(Bytes::from("b-3")));
    assert_eq!(get("c"), Some(Bytes::from("c-3")));
    assert_eq!(get("m"), Some(Bytes::from("m2")));
    assert_eq!(get("y"), Some(Bytes::from("y4")));
    // Inputs are deleted once their (zero) grace has passed, and only them.
    assert_eq!(c.stats().pending_deletions, 5);
    assert_eq!(c.collect_garbage().await.unwrap(), 5);
    assert_eq!(env.sst_objects().await, referenced(&after));
    let s = c.stats();
    assert_eq!(s.jobs, 1);
    assert_eq!(s.files_deleted, 5);
    assert_eq!(s.pending_deletions, 0);
    assert!(s.write_amplification > 1.0);
    assert!(c.compact_once().await.unwrap().is_none());
}

#[tokio::test]
async fn inputs_wait_for_their_grace_period() {
    let env = Env::new().await;
    for i in 0..4 {
        env.flush(vec![put("k", i + 1, "v")]).await;
    }
    let opts = CompactionOptions {
        gc_grace: Duration::from_secs(3600),
        ..small_opts()
    };
    let c = env.compactor(opts);
    c.compact_once().await.unwrap().unwrap();
    assert_eq!(c.collect_garbage().await.unwrap(), 0);
    assert_eq!(c.stats().pending_deletions, 4);
    assert_eq!(env.sst_objects().await.len(), 5);
}

/// The grace runs on the monotonic clock, which a test pauses and moves forward: an hour's
/// grace is checked at both ends without waiting an hour.
#[tokio::test(start_paused = true)]
async fn inputs_are_deleted_once_their_grace_has_passed_on_the_clock() {
    let env = Env::new().await;
    for i in 0..4 {
        env.flush(vec![put("k", i + 1, "v")]).await;
    }
    let opts = CompactionOptions {
        gc_grace: Duration::from_secs(3600),
        ..small_opts()
    };
    let c = env.compactor(opts);
    c.compact_once().await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(3599)).await;
    assert_eq!(c.collect_garbage().await.unwrap(), 0, "a second early");
    assert_eq!(env.sst_objects().await.len(), 5);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        c.collect_garbage().await.unwrap(),
        4,
        "the grace has passed"
    );
    assert_eq!(c.stats().pending_deletions, 0);
    assert_eq!(env.sst_objects().await.len(), 1);
}

#[tokio::test]
async fn tombstone_is_kept_while_a_deeper_level_holds_the_key() {
    let env = Env::new().await;
    env.place(2, vec![put("k", 1, "old"), put("l", 2, "l-old")])
        .await;
    env.flush(vec![del("k", 10), del("z", 11)]).await;
    for i in 0..3 {
        env.flush(vec![put("q", 20 + i, "q")]).await;
    }
    let opts = CompactionOptions {
        l1_target_bytes: 1,
        level_multiplier: 1_000_000,
        ..small_opts()
    };
    let c = env.compactor(opts);
    let r = c.compact_once().await.unwrap().unwrap();
    assert_eq!((r.input_level, r.output_level), (0, 1));
    assert_eq!(r.dropped_tombstones, 1, "only the tombstone of z goes");
    let m = env.latest().await;
    check_invariants(&m);
    let files = env.load_files(&m).await;
    let k = read(&m, &files, b"k").unwrap();
    assert_eq!(
        (k.kind, k.seq),
        (Kind::Delete, 10),
        "the tombstone still shadows L2"
    );
    assert!(read(&m, &files, b"z").is_none());
    assert_eq!(read(&m, &files, b"l").unwrap().value, Bytes::from("l-old"));

    // L1 is over its (1 byte) target: L1 -> L2 meets the old value at the bottom, and both go.
    let r = c.compact_once().await.unwrap().unwrap();
    assert_eq!((r.input_level, r.output_level), (1, 2));
    assert_eq!(r.dropped_tombstones, 1);
    let m = env.latest().await;
    check_invariants(&m);
    let files = env.load_files(&m).await;
    assert!(files.values().flatten().all(|e| e.key.as_ref() != b"k"));
    assert_eq!(read(&m, &files, b"l").unwrap().value, Bytes::from("l-old"));
    assert_eq!(read(&m, &files, b"q").unwrap().seq, 22);
}

#[tokio::test]
async fn tombstone_is_dropped_when_nothing_deeper_overlaps() {
    let env = Env::new().await;
    // A deeper file exists, but not over "k".
    env.place(2, vec![put("x", 1, "x")]).await;
    env.flush(vec![put("k", 1, "v")]).await;
    env.flush(vec![del("k", 5)]).await;
    env.flush(vec![put("a", 6, "a")]).await;
    env.flush(vec![put("b", 7, "b")]).await;
    let c = env.compactor(small_opts());
    let r = c.compact_once().await.unwrap().unwrap();
    assert_eq!(r.dropped_tombstones, 1);
    assert_eq!(r.entries_in, 4);
    assert_eq!(r.entries_out, 2);
    let m = env.latest().await;
    let files = env.load_files(&m).await;
    assert!(read(&m, &files, b"k").is_none());
    // The manifest remembers that the deletion at seq 5 is no longer visible.
    assert_eq!(m.dropped_tombstone_seq, 5);
}

/// Over the deletion budget (shared by a process's compactors), jobs that write pause until
/// deletions catch up; the budget counts bytes queued, frees them on deletion, and forgets a
/// stopped compactor's queue.
#[tokio::test]
async fn the_deletion_budget_pauses_jobs_that_write() {
    let env = Env::new().await;
    let budget = crate::DeletionBudget::new(1);
    let opts = || CompactionOptions {
        gc_grace: Duration::from_secs(3600),
        deletion_budget: Some(budget.clone()),
        ..small_opts()
    };
    for i in 0..4u64 {
        env.flush(vec![put("a", 10 + i, "v"), put("b", 20 + i, "v")])
            .await;
    }
    let c = env.compactor(opts());
    let r = c.compact_once().await.unwrap().unwrap();
    let queued = budget.pending();
    assert_eq!(queued, r.input_bytes, "the inputs wait out their grace");
    for i in 0..4u64 {
        env.flush(vec![put("c", 30 + i, "v")]).await;
    }
    assert!(
        c.compact_once().await.unwrap().is_none(),
        "over the budget: no job that writes"
    );
    assert!(c.stats().budget_pauses >= 1);
    assert_eq!(c.stats().pending_deletion_bytes, queued);
    // A compactor holding none of it keeps going while the budget is spent; the one holding
    // it pauses.
    let idle = env.compactor(opts());
    assert!(budget.pending() > budget.limit);
    assert!(
        idle.compact_once().await.unwrap().is_some(),
        "below its share"
    );
    drop(idle);
    for i in 0..4u64 {
        env.flush(vec![put("d", 40 + i, "v")]).await;
    }
    // Another compactor of the process sees the same budget.
    drop(c);
    assert_eq!(
        budget.pending(),
        0,
        "a stopped compactor's queue is forgotten"
    );
    let c = env.compactor(CompactionOptions {
        gc_grace: Duration::ZERO,
        ..opts()
    });
    assert!(
        c.compact_once().await.unwrap().is_some(),
        "under the budget again"
    );
    assert!(budget.pending() > 0);
    c.collect_garbage().await.unwrap();
    assert_eq!(budget.pending(), 0, "deleted: freed");
}

/// The export streams a partition's SSTs through a merge: the newest version of every key
/// across overlapping files (deletions hiding older values), in key order, cut into files of
/// about the target size, every row read back from the Parquet it wrote.
#[tokio::test]
async fn an_export_streams_overlapping_files_into_files_of_the_target_size() {
    use crate::export::{export, ExportOptions, ExportPartition};
    use arrow_array::{Array, BinaryArray, BooleanArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let env = Env::new().await;
    let mut model: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut rng = StdRng::seed_from_u64(7);
    let mut seq = 0;
    for round in 0..9 {
        if round == 6 {
            // Levels too: the first six files compacted into L1 files of a few entries each
            // (read one after another by one stream), then three more L0 files over them.
            let c = env.compactor(CompactionOptions {
                target_file_bytes: 200,
                ..small_opts()
            });
            while c.compact_once().await.unwrap().is_some() {}
            let m = env.latest().await;
            assert!(m.levels.iter().any(|l| l.len() > 3), "{:?}", m.levels);
        }
        let mut batch = BTreeMap::new();
        for _ in 0..40 {
            let k = format!("k{:03}", rng.random_range(0..120));
            seq += 1;
            let e = if rng.random_bool(0.2) {
                del(&k, seq)
            } else {
                put(&k, seq, &format!("v{seq}"))
            };
            batch.insert(k, e);
        }
        for (k, e) in &batch {
            match e.kind {
                Kind::Put => model.insert(k.clone(), e.value.clone()),
                Kind::Delete => model.remove(k),
            };
        }
        env.flush(batch.into_values().collect()).await;
    }
    let parts = [ExportPartition {
        partition: P,
        hash_range: None,
    }];
    let dest: Arc<dyn Store> = Arc::new(ObjectStoreBackend::memory());
    let ms: Arc<dyn ManifestStore> = env.manifests.clone();
    let opts = ExportOptions {
        target_file_bytes: 300,
        ..ExportOptions::default()
    };
    let out = export(env.store.clone(), ms, &parts, dest.clone(), "", &opts, &())
        .await
        .unwrap();
    assert_eq!(out.rows, model.len() as u64);
    assert!(out.files.len() > 3, "cut by size: {:?}", out.files);
    let mut rows = Vec::new();
    for f in &out.files {
        let data = dest.get(&f.path).await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(data)
            .unwrap()
            .build()
            .unwrap();
        let mut n = 0;
        for batch in reader {
            let batch = batch.unwrap();
            let col = |name: &str| batch.column_by_name(name).unwrap().clone();
            let keys = col("key");
            let keys = keys.as_any().downcast_ref::<BinaryArray>().unwrap();
            let values = col("value");
            let values = values.as_any().downcast_ref::<BinaryArray>().unwrap();
            let deleted = col("deleted");
            let deleted = deleted.as_any().downcast_ref::<BooleanArray>().unwrap();
            for i in 0..batch.num_rows() {
                assert!(!deleted.value(i), "a full export has no deleted rows");
                let k = String::from_utf8(keys.value(i).to_vec()).unwrap();
                rows.push((k, Bytes::copy_from_slice(values.value(i))));
                n += 1;
            }
        }
        assert_eq!(n, f.rows, "{}", f.path);
    }
    let want: Vec<(String, Bytes)> = model.into_iter().collect();
    assert_eq!(
        rows, want,
        "newest versions, in key order, across the files"
    );
}

/// An incremental export is exact: while the deletions since the earlier export are still
/// tombstones it lists them as deleted rows; once compaction removed them it exports the
/// whole state instead, saying why (the deleted keys are simply absent).
#[tokio::test]
async fn an_incremental_export_turns_full_when_deletions_were_compacted_away() {
    use crate::export::{export, ExportOptions, ExportPartition};
    let env = Env::new().await;
    env.flush(vec![put("a", 1, "a"), put("b", 2, "b"), put("c", 3, "c")])
        .await;
    let parts = [ExportPartition {
        partition: P,
        hash_range: None,
    }];
    let ms: Arc<dyn ManifestStore> = env.manifests.clone();
    let run = |since, dest: Arc<dyn Store>| {
        let (store, ms, parts) = (env.store.clone(), ms.clone(), parts.clone());
        async move {
            let opts = ExportOptions {
                since,
                ..ExportOptions::default()
            };
            export(store, ms, &parts, dest, "", &opts, &())
                .await
                .unwrap()
        }
    };
    let mem = || -> Arc<dyn Store> { Arc::new(ObjectStoreBackend::memory()) };
    let first = run(None, mem()).await;
    assert_eq!(first.rows, 3);
    env.flush(vec![del("b", 10), put("d", 11, "d")]).await;
    // Still a tombstone: incremental, with the deletion as a row.
    let inc = run(Some(first.clone()), mem()).await;
    assert_eq!((inc.kind.as_str(), inc.rows), ("incremental", 2));
    assert!(inc.full_reason.is_none());
    // Compaction reaches the bottom and drops the tombstone of "b".
    env.flush(vec![put("e", 12, "e")]).await;
    env.flush(vec![put("f", 13, "f")]).await;
    let c = env.compactor(small_opts());
    let r = c.compact_once().await.unwrap().unwrap();
    assert_eq!(r.dropped_tombstones, 1);
    let dest = mem();
    let inc = run(Some(first.clone()), dest.clone()).await;
    assert_eq!(inc.kind, "full");
    assert!(
        inc.full_reason
            .as_deref()
            .is_some_and(|r| r.contains("seq 10")),
        "{inc:?}"
    );
    assert_eq!(inc.since_created_ms, Some(first.created_ms));
    assert_eq!(inc.rows, 5, "a c d e f, and no b");
    // The manifest on the destination says so too, and only the full run's files remain.
    let written = crate::export::read_export_manifest(&*dest, "")
        .await
        .unwrap();
    assert_eq!(written, inc);
    let parquet = dest
        .list("")
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.path.ends_with(".parquet"))
        .count();
    assert_eq!(parquet, inc.files.len());

    // A value that expired on its own and went whole hid nothing: still incremental (the
    // reader expires it from `expires_at`).
    env.flush(vec![put_ttl("zz", 20, "brief", 1)]).await;
    let r = c.compact_once().await.unwrap().unwrap();
    assert!(r.drop_expired, "{r:?}");
    assert_eq!(env.latest().await.dropped_tombstone_seq, 10);
    let next = run(Some(inc.clone()), mem()).await;
    assert_eq!(next.kind, "incremental");
    // An overwrite with a TTL that expired and was dropped with the value it hid is a
    // deletion the next increment could not see: in full again.
    env.flush(vec![put_ttl("a", 21, "brief", 1), put("g", 22, "g")])
        .await;
    env.flush(vec![put("h", 23, "h")]).await;
    env.flush(vec![put("i", 24, "i")]).await;
    env.flush(vec![put("j", 25, "j")]).await;
    while c.compact_once().await.unwrap().is_some() {}
    assert_eq!(env.latest().await.dropped_tombstone_seq, 21);
    let next = run(Some(inc.clone()), mem()).await;
    assert_eq!(next.kind, "full");
    assert_eq!(next.rows, 8, "c d e f g h i j");
    // And an export made before deletions were tracked cannot be a base.
    let mut old = first.clone();
    old.tracks_dropped_deletes = false;
    let next = run(Some(old), mem()).await;
    assert!(
        next.full_reason
            .as_deref()
            .is_some_and(|r| r.contains("before Strata tracked")),
        "{next:?}"
    );
}

#[tokio::test]
async fn expired_values_drop_at_the_bottom_only() {
    let env = Env::new().await;
    env.place(2, vec![put("deep", 1, "old")]).await;
    env.flush(vec![
        put_ttl("a", 10, "gone", 1),
        put_ttl("b", 11, "live", FAR_FUTURE),
    ])
    .await;
    env.flush(vec![put_ttl("deep", 12, "expired", 1)]).await;
    env.flush(vec![put("c", 13, "c")]).await;
    env.flush(vec![put("a", 2, "older a")]).await;
    let c = env.compactor(small_opts());
    let r = c.compact_once().await.unwrap().unwrap();
    assert_eq!(
        r.dropped_expired, 1,
        "a goes; deep stays because L2 holds it"
    );
    let m = env.latest().await;
    let files = env.load_files(&m).await;
    assert!(read(&m, &files, b"a").is_none());
    assert_eq!(
        read(&m, &files, b"b").unwrap(),
        put_ttl("b", 11, "live", FAR_FUTURE)
    );
    assert_eq!(
        read(&m, &files, b"deep").unwrap(),
        put_ttl("deep", 12, "expired", 1),
        "kept as is"
    );
    assert!(visible(read(&m, &files, b"deep")).is_none());
}

#[tokio::test]
async fn outputs_are_cut_at_the_target_size() {
    let env = Env::new().await;
    let mut seq = 0;
    for f in 0..4 {
        let mut entries = vec![];
        for i in 0..100 {
            seq += 1;
            entries.push(put(&format!("key{:04}", i * 4 + f), seq, &"v".repeat(200)));
        }
        env.flush(entries).await;
    }
    let opts = CompactionOptions {
        target_file_bytes: 8 << 10,
        sst: SstOptions {
            compression: strata_format::Compression::None,
            ..SstOptions::default()
        },
        ..small_opts()
    };
    let c = env.compactor(opts);
    let r = c.compact_once().await.unwrap().unwrap();
    assert!(r.output_files >= 8, "{} outputs", r.output_files);
    assert_eq!(r.entries_out, 400);
    let m = env.latest().await;
    check_invariants(&m);
    assert_eq!(m.levels[0].len(), r.output_files);
    for f in &m.levels[0] {
        assert!(f.props.file_size < (8 << 10) + 4096 + 1024);
    }
}

#[tokio::test]
async fn trivial_move_reuses_the_file() {
    let env = Env::new().await;
    let id = env.place(1, vec![put("a", 1, "a"), put("b", 2, "b")]).await;
    let opts = CompactionOptions {
        l1_target_bytes: 1,
        ..small_opts()
    };
    let c = env.compactor(opts);
    let r = c.compact_once().await.unwrap().unwrap();
    assert!(r.trivial_move);
    assert_eq!((r.input_level, r.output_level), (1, 2));
    let m = env.latest().await;
    check_invariants(&m);
    assert!(m.levels[0].is_empty());
    assert_eq!(m.levels[1][0].id, id);
    assert_eq!(c.stats().pending_deletions, 0);
    c.collect_garbage().await.unwrap();
    assert!(env.sst_objects().await.contains(&id));
    assert_eq!(c.stats().trivial_moves, 1);
}

#[tokio::test]
async fn corrupt_input_fails_the_job_and_changes_nothing() {
    let env = Env::new().await;
    for i in 0..4 {
        env.flush(vec![put("k", i + 1, "some value"), put("l", i + 100, "v")])
            .await;
    }
    let m = env.latest().await;
    let victim = sst_path(P, m.l0[2].id);
    let mut data = env.store.get(&victim).await.unwrap().to_vec();
    data[5] ^= 0x40;
    env.store
        .put(&victim, Bytes::from(data), PutMode::Overwrite)
        .await
        .unwrap();
    let c = env.compactor(small_opts());
    let err = c.compact_once().await.unwrap_err();
    let msg = err.report().to_string();
    assert!(msg.contains(&victim), "{msg}");
    assert_eq!(env.latest().await.version, m.version);
    assert_eq!(env.sst_objects().await, referenced(&m));
    assert_eq!(c.stats().failures, 1);
}

#[tokio::test]
async fn new_l0_files_flushed_during_the_job_stay_in_l0() {
    let env = Env::new().await;
    for i in 0..4 {
        env.flush(vec![put("k", i + 1, &format!("v{i}"))]).await;
    }
    let c = env.compactor(small_opts());
    let base = env.latest().await;
    let job = plan(&base, &small_opts()).unwrap();
    let (outputs, counts, _) = c.execute(&job).await.unwrap();
    assert_eq!(counts.entries_out, 1);
    // The engine flushes meanwhile.
    let fresh = env.flush(vec![put("k", 50, "newest")]).await;
    let Committed::Version(v) = c.commit(&job, &outputs).await.unwrap() else {
        panic!("abandoned")
    };
    let m = env.latest().await;
    assert_eq!(m.version, v);
    assert_eq!(v, base.version + 2);
    check_invariants(&m);
    assert_eq!(m.l0.len(), 1);
    assert_eq!(m.l0[0].id, fresh);
    assert_eq!(m.last_flushed_seq, 50);
    let files = env.load_files(&m).await;
    assert_eq!(read(&m, &files, b"k").unwrap().value, Bytes::from("newest"));
    assert_eq!(m.levels[0][0].id, outputs[0].id);
}

type Race = Box<dyn FnOnce(&mut Manifest) + Send>;

/// A manifest store where someone else commits (a change of `race`) just before the next
/// commit of the compactor, which then loses with a conflict.
struct Racing {
    inner: Arc<EmbeddedManifestStore>,
    race: Mutex<Option<Race>>,
}

impl std::fmt::Debug for Racing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Racing").finish_non_exhaustive()
    }
}

#[async_trait]
impl ManifestStore for Racing {
    async fn load_latest(&self, partition: u32) -> ManifestResult<Option<Arc<Manifest>>> {
        self.inner.load_latest(partition).await
    }

    async fn commit(&self, partition: u32, next: &Manifest) -> ManifestResult<()> {
        let race = self.race.lock().take();
        if let Some(change) = race {
            commit_change(&*self.inner, change).await;
        }
        self.inner.commit(partition, next).await
    }

    fn subscribe(&self, partition: u32) -> watch::Receiver<Option<Arc<Manifest>>> {
        self.inner.subscribe(partition)
    }
}

#[tokio::test]
async fn a_conflicting_flush_is_rebased_over() {
    let env = Env::new().await;
    for i in 0..4 {
        env.flush(vec![
            put("k", i + 1, "old"),
            put(&format!("o{i}"), i + 10, "o"),
        ])
        .await;
    }
    let fresh = write_sst(&*env.store, vec![put("k", 99, "raced")], 0).await;
    let fresh_id = fresh.id;
    let racing = Arc::new(Racing {
        inner: env.manifests.clone(),
        race: Mutex::new(Some(Box::new(move |m: &mut Manifest| {
            m.last_flushed_seq = 99;
            m.l0.insert(0, fresh);
        }))),
    });
    let before = env.latest().await;
    let c = Compactor::new(env.store.clone(), racing, P, small_opts());
    let r = c.compact_once().await.unwrap().unwrap();
    assert_eq!(r.manifest_version, before.version + 2);
    let m = env.latest().await;
    check_invariants(&m);
    assert_eq!(m.version, r.manifest_version);
    assert_eq!(m.last_flushed_seq, 99, "the racing flush's fields survive");
    assert_eq!(
        m.l0.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![fresh_id]
    );
    assert_eq!(c.stats().commit_conflicts, 1);
    let files = env.load_files(&m).await;
    assert_eq!(read(&m, &files, b"k").unwrap().value, Bytes::from("raced"));
    assert_eq!(read(&m, &files, b"o3").unwrap().seq, 13);
}

#[tokio::test]
async fn a_job_whose_inputs_vanish_is_abandoned_and_cleans_up() {
    let env = Env::new().await;
    for i in 0..4 {
        env.flush(vec![put("k", i + 1, "v")]).await;
    }
    let before = env.latest().await;
    let stolen = before.l0[3].id;
    let racing = Arc::new(Racing {
        inner: env.manifests.clone(),
        // Someone else compacted the oldest L0 file away.
        race: Mutex::new(Some(Box::new(move |m: &mut Manifest| {
            m.l0.retain(|f| f.id != stolen);
        }))),
    });
    let c = Compactor::new(env.store.clone(), racing, P, small_opts());
    assert!(c.compact_once().await.unwrap().is_none());
    let m = env.latest().await;
    assert_eq!(
        m.version,
        before.version + 1,
        "only the racing commit landed"
    );
    assert_eq!(m.l0.len(), 3);
    // The outputs were deleted; the inputs were not scheduled for deletion.
    let mut expected = referenced(&m);
    expected.insert(stolen);
    assert_eq!(env.sst_objects().await, expected);
    let s = c.stats();
    assert_eq!((s.abandoned, s.jobs, s.pending_deletions), (1, 0, 0));
}

#[tokio::test]
async fn run_compacts_on_manifest_changes_and_stops_on_shutdown() {
    let env = Env::new().await;
    let c = env.compactor(small_opts());
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(c.clone().run(stop_rx));
    let mut changes = env.manifests.subscribe(P);
    for i in 0..4 {
        env.flush(vec![put("k", i + 1, "v")]).await;
    }
    let compacted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(m) = changes.borrow_and_update().clone() {
                if m.l0.is_empty() && !m.levels.is_empty() {
                    return m;
                }
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("run() did not compact");
    // With a zero grace, the next loop iteration deletes the inputs.
    tokio::time::timeout(Duration::from_secs(10), async {
        while env.sst_objects().await != referenced(&compacted) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("inputs were not deleted");
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run() did not stop")
        .unwrap();
    assert_eq!(c.stats().jobs, 1);
}

/// Random puts, deletes and TTLs over a few hundred keys, flushed as many L0 files and
/// compacted through several levels: every key reads the same as in a model, after every
/// round, and the store ends up holding exactly the referenced SSTs.
#[tokio::test]
async fn random_workload_matches_the_model() {
    model_check(Strategy::Leveled, 1).await;
}

#[tokio::test]
async fn random_workload_matches_the_model_with_subcompactions() {
    model_check(Strategy::Leveled, 3).await;
}

#[tokio::test]
async fn random_workload_matches_the_model_size_tiered() {
    model_check(Strategy::SizeTiered, 2).await;
}

#[tokio::test]
async fn random_workload_matches_the_model_time_window() {
    model_check(Strategy::TimeWindow { window_ms: 1000 }, 2).await;
}

async fn model_check(strategy: Strategy, subcompactions: usize) {
    let env = Env::new().await;
    let opts = CompactionOptions {
        strategy,
        run_trigger: 3,
        tiered_levels: 6,
        subcompactions,
        subcompaction_min_bytes: 0,
        l0_trigger: 3,
        l1_target_bytes: 12 << 10,
        level_multiplier: 3,
        max_levels: 4,
        target_file_bytes: 4 << 10,
        sst: SstOptions {
            block_size: 1024,
            ..SstOptions::default()
        },
        gc_grace: Duration::ZERO,
        orphan_grace: Duration::from_secs(3600),
        hash_range: None,
        // The smallest read chunk: inputs stream through several reads each.
        memory_bytes: 1,
        ..CompactionOptions::default()
    };
    let c = env.compactor(opts);
    let mut rng = StdRng::seed_from_u64(0x5eed_c0de);
    let mut model: BTreeMap<Bytes, Entry> = BTreeMap::new();
    let mut seq = 0u64;
    let mut reports = vec![];
    let keys: Vec<Bytes> = (0..300)
        .map(|i| Bytes::from(format!("key{i:05}")))
        .collect();
    for round in 0..24 {
        // Several versions of a key may land in one file, as in a memtable.
        let mut batch = Vec::new();
        for _ in 0..rng.random_range(20..120) {
            seq += 1;
            let key = keys[rng.random_range(0..keys.len())].clone();
            let roll = rng.random_range(0..100);
            let e = if roll < 25 {
                Entry::delete(key.clone(), seq)
            } else {
                let len = rng.random_range(0..120);
                let value: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
                let mut e = Entry::put(key.clone(), seq, value);
                if roll < 35 {
                    e.expires_at_ms = 1; // long expired
                } else if roll < 40 {
                    e.expires_at_ms = FAR_FUTURE;
                }
                e
            };
            batch.push(e.clone());
            model.insert(key, e);
        }
        env.flush(batch).await;
        for _ in 0..50 {
            match c.compact_once().await.unwrap() {
                Some(r) => reports.push(r),
                None => break,
            }
        }
        c.collect_garbage().await.unwrap();
        let m = env.latest().await;
        check_invariants(&m);
        assert_eq!(m.last_flushed_seq, seq, "round {round}");
        let files = env.load_files(&m).await;
        for (key, expected) in &model {
            let got = visible(read(&m, &files, key));
            assert_eq!(
                got,
                visible(Some(expected.clone())),
                "round {round}, {key:?}"
            );
        }
        assert_eq!(env.sst_objects().await, referenced(&m), "round {round}");
    }
    let m = env.latest().await;
    assert!(m.levels.len() >= 2, "{} levels", m.levels.len());
    if strategy == Strategy::Leveled {
        assert!(reports
            .iter()
            .any(|r| r.input_level >= 1 && !r.trivial_move));
    } else {
        // Runs packed at the deepest of the 6 levels, merged in place.
        assert!(reports
            .iter()
            .any(|r| r.output_level == 6 && r.input_files > 1));
        assert!(!m.levels[5].is_empty());
    }
    if subcompactions > 1 {
        assert!(reports.iter().any(|r| r.subcompactions > 1));
    }
    assert!(reports.iter().any(|r| r.dropped_tombstones > 0));
    assert!(reports.iter().any(|r| r.dropped_expired > 0));
    let s = c.stats();
    assert_eq!(s.jobs as usize, reports.len());
    assert_eq!(s.pending_deletions, 0);
    assert!(s.write_amplification > 1.0);
}

#[tokio::test]
async fn orphan_sweep_deletes_only_old_unreferenced_ssts() {
    let env = Env::new().await;
    env.flush(vec![put("a", 1, "v")]).await;
    let live = env.sst_objects().await;
    assert_eq!(live.len(), 1);
    // An output whose commit never happened, written "two hours ago" (ids carry their
    // creation time), and a fresh one that may still be on its way to a commit.
    let store = env.store.clone();
    let two_hours_ago = (now_ms() - 2 * 3600 * 1000) << 20;
    let fresh = now_ms() << 20 | 7;
    for id in [two_hours_ago, fresh] {
        store
            .put(
                &sst_path(P, id),
                Bytes::from_static(b"orphan"),
                PutMode::Create,
            )
            .await
            .unwrap();
    }
    let c = env.compactor(small_opts());
    assert_eq!(c.sweep_orphans().await.unwrap(), 1);
    let left = env.sst_objects().await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&two_hours_ago));
    assert!(left.contains(&fresh));
}

#[tokio::test]
async fn keys_outside_the_partitions_hash_range_are_dropped() {
    let env = Env::new().await;
    // User keys, and the store's own records (transaction intents), whose hash says nothing.
    let keys: Vec<Bytes> = (0..40)
        .map(|i| Bytes::from(format!("key-{i}")))
        .chain((0..8).map(|i| {
            let mut k = strata_format::INTENT_PREFIX.to_vec();
            k.extend_from_slice(format!("t{i}").as_bytes());
            Bytes::from(k)
        }))
        .collect();
    let mut seq = 0;
    for chunk in keys.chunks(10) {
        let mut entries = Vec::new();
        for k in chunk {
            seq += 1;
            entries.push(Entry::put(k.clone(), seq, "v"));
        }
        env.flush(entries).await;
    }
    // The lower half of the hash space stays; the upper half was split off.
    let range = (0u64, Some(1u64 << 63));
    let inside = |k: &[u8]| strata_format::hash_in_range(strata_format::key_hash(k), range);
    let system = |k: &[u8]| strata_format::is_system_key(k);
    let opts = CompactionOptions {
        hash_range: Some(range),
        ..small_opts()
    };
    let c = env.compactor(opts);
    let r = c.compact_once().await.unwrap().unwrap();
    let expected = keys.iter().filter(|k| inside(k) || system(k)).count();
    assert!(expected < keys.len(), "some keys are outside the range");
    assert!(
        keys.iter().any(|k| system(k) && !inside(k)),
        "some system record hashes outside the range"
    );
    assert_eq!(r.entries_out as usize, expected);
    let after = env.latest().await;
    let files = env.load_files(&after).await;
    for k in &keys {
        let got = read(&after, &files, k);
        assert_eq!(got.is_some(), inside(k) || system(k), "{k:?}");
    }
}

#[tokio::test]
async fn an_old_unreferenced_sst_is_swept_only_after_being_seen_so_for_the_grace() {
    // An old SST that a compaction replaced a moment ago looks exactly like this: old by its
    // id, unreferenced. A compactor that just took over (its predecessor's deletion queue
    // lost) must still give readers of older versions the grace.
    let env = Env::new().await;
    env.flush(vec![put("a", 1, "v")]).await;
    let two_hours_ago = (now_ms() - 2 * 3600 * 1000) << 20;
    env.store
        .put(
            &sst_path(P, two_hours_ago),
            Bytes::from_static(b"replaced"),
            PutMode::Create,
        )
        .await
        .unwrap();
    let c = env.compactor(CompactionOptions {
        gc_grace: Duration::from_millis(300),
        ..small_opts()
    });
    assert_eq!(c.sweep_orphans().await.unwrap(), 0, "first seen: kept");
    assert!(env.sst_objects().await.contains(&two_hours_ago));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        c.sweep_orphans().await.unwrap(),
        1,
        "seen for the grace: swept"
    );
    assert!(!env.sst_objects().await.contains(&two_hours_ago));
}

#[tokio::test]
async fn old_manifest_versions_are_swept_after_the_grace_and_the_latest_stays() {
    let env = Env::new().await;
    for i in 0..30 {
        env.flush(vec![put(&format!("k{i}"), i + 1, "v")]).await;
    }
    let latest = env.latest().await;
    assert_eq!(latest.version, 31);
    let bodies = || async {
        env.store
            .list(&strata_manifest::layout::manifest_prefix(P))
            .await
            .unwrap()
            .len()
    };
    assert_eq!(bodies().await, 31);
    let c = env.compactor(CompactionOptions {
        gc_grace: Duration::from_millis(200),
        ..small_opts()
    });
    assert_eq!(c.sweep_manifests().await.unwrap(), 0, "first seen: kept");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Versions 1..=14 go; the 16 behind the latest and the latest stay.
    assert_eq!(c.sweep_manifests().await.unwrap(), 14);
    assert_eq!(bodies().await, 17);
    assert_eq!(env.latest().await.as_ref(), latest.as_ref());
    // And the store keeps working on top of it.
    env.flush(vec![put("after", 99, "v")]).await;
    assert_eq!(env.latest().await.version, 32);
}

#[tokio::test]
async fn with_a_reader_floor_inputs_wait_for_the_owner_to_adopt_the_commit() {
    let env = Env::new().await;
    for i in 0..4 {
        env.flush(vec![put("k", i + 1, "v")]).await;
    }
    let owner_reads = Arc::new(parking_lot::Mutex::new(Some(5u64)));
    let f = owner_reads.clone();
    let c = env
        .compactor(small_opts())
        .with_reader_floor(Arc::new(move |_| *f.lock()));
    let r = c.compact_once().await.unwrap().unwrap();
    // The grace (zero) has passed, but the owner still reads an older version: kept.
    assert_eq!(c.collect_garbage().await.unwrap(), 0);
    *owner_reads.lock() = None; // owner unknown (down): kept
    assert_eq!(c.collect_garbage().await.unwrap(), 0);
    *owner_reads.lock() = Some(r.manifest_version);
    assert_eq!(
        c.collect_garbage().await.unwrap(),
        4,
        "owner adopted: deleted"
    );
}

/// Archival snapshots pin their SSTs: compaction GC and the orphan sweep keep every file a
/// snapshot references (the snapshot still reads back whole), and once the snapshot is
/// deleted the orphan sweep collects them.
#[tokio::test]
async fn snapshot_pins_survive_gc_until_the_snapshot_is_deleted() {
    use crate::export::ExportPartition;
    use crate::snapshot::{create_snapshot, delete_snapshot, list_snapshots, SnapshotManifests};
    let env = Env::new().await;
    for i in 0..4u64 {
        env.flush(vec![put("a", 10 + i, "old"), put("b", 20 + i, "old")])
            .await;
    }
    let parts = [ExportPartition {
        partition: P,
        hash_range: None,
    }];
    let manifests: Arc<dyn ManifestStore> = env.manifests.clone();
    let snap = create_snapshot(
        env.store.clone(),
        manifests,
        &parts,
        0,
        Duration::from_secs(60),
        None,
        false,
    )
    .await
    .unwrap();
    let pinned = referenced(&*env.latest().await);
    assert_eq!(pinned.len(), 4);
    assert_eq!(snap.partitions[0].ssts, 4);
    let c = env.compact_all_and_collect_without_grace().await;
    let objects = env.sst_objects().await;
    assert!(pinned.is_subset(&objects), "{pinned:?} vs {objects:?}");
    // The snapshot reads back as it was, from its own manifest.
    let s = SnapshotManifests::load(&*env.store, &snap.id)
        .await
        .unwrap();
    let m = s.load_latest(P).await.unwrap().unwrap();
    assert_eq!(referenced(&m), pinned);
    let files = env.load_files(&m).await;
    assert_eq!(
        visible(read(&m, &files, b"a")).map(|e| e.value),
        Some(Bytes::from("old"))
    );
    assert_eq!(list_snapshots(&*env.store).await.unwrap().len(), 1);

    delete_snapshot(&*env.store, &snap.id, false).await.unwrap();
    assert!(list_snapshots(&*env.store).await.unwrap().is_empty());
    assert!(SnapshotManifests::load(&*env.store, &snap.id)
        .await
        .is_err());
    c.sweep_orphans().await.unwrap();
    c.sweep_orphans().await.unwrap();
    let live = referenced(&*env.latest().await);
    assert_eq!(env.sst_objects().await, live, "unpinned inputs collected");
    assert!(live.is_disjoint(&pinned));
}

/// A running export's pin keeps the SSTs of the version it reads through compaction and GC
/// (with no grace at all); an export removes its
/// pin when it ends; a pin older than its age limit (a crashed export's) is ignored and
/// removed.
#[tokio::test]
async fn an_exports_pin_keeps_its_version_through_gc_until_it_ends() {
    use crate::export::{export, ExportOptions, ExportPartition};
    use crate::snapshot::{pin_for_export, pinned_ssts, unpin_export, EXPORT_PINS_PREFIX};
    let env = Env::new().await;
    for i in 0..4u64 {
        env.flush(vec![put("a", 10 + i, "old"), put("b", 20 + i, "old")])
            .await;
    }
    let m = env.latest().await;
    let pinned = referenced(&m);
    assert_eq!(pinned.len(), 4);
    let pin = pin_for_export(&*env.store, P, &m, now_ms()).await.unwrap();
    let got: std::collections::BTreeSet<u64> = pinned_ssts(&*env.store, P, now_ms())
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(got, pinned);
    assert!(pinned_ssts(&*env.store, P + 1, now_ms())
        .await
        .unwrap()
        .is_empty());
    let c = env.compact_all_and_collect_without_grace().await;
    let objects = env.sst_objects().await;
    assert!(pinned.is_subset(&objects), "{pinned:?} vs {objects:?}");
    // The pinned version still reads whole.
    let files = env.load_files(&m).await;
    assert_eq!(
        visible(read(&m, &files, b"a")).map(|e| e.value),
        Some(Bytes::from("old"))
    );
    unpin_export(&*env.store, &pin).await;
    c.sweep_orphans().await.unwrap();
    c.sweep_orphans().await.unwrap();
    assert_eq!(env.sst_objects().await, referenced(&*env.latest().await));

    // A crashed export's pin, past the age limit: ignored, and removed.
    let stale = format!("{EXPORT_PINS_PREFIX}0000000000001-00000000000000aa-p{P:05}.manifest");
    env.store
        .put(
            &stale,
            strata_manifest::encode_valid(P, &m).unwrap(),
            PutMode::Create,
        )
        .await
        .unwrap();
    assert!(pinned_ssts(&*env.store, P, now_ms())
        .await
        .unwrap()
        .is_empty());
    assert!(env.store.list(EXPORT_PINS_PREFIX).await.unwrap().is_empty());

    // An export leaves no pin behind.
    let parts = [ExportPartition {
        partition: P,
        hash_range: None,
    }];
    let dest: Arc<dyn Store> = Arc::new(ObjectStoreBackend::memory());
    let ms: Arc<dyn ManifestStore> = env.manifests.clone();
    let out = export(
        env.store.clone(),
        ms,
        &parts,
        dest,
        "",
        &ExportOptions::default(),
        &(),
    )
    .await
    .unwrap();
    assert_eq!(out.rows, 2);
    assert!(env.store.list(EXPORT_PINS_PREFIX).await.unwrap().is_empty());
}

/// The snapshot schedule: creates a snapshot once the newest scheduled one is `every` old,
/// deletes scheduled ones past `keep` but never the newest nor hand-made ones, and
/// `snapshot_at` picks the newest snapshot at or before a time.
#[tokio::test]
async fn the_schedule_creates_and_ages_out_snapshots() {
    use crate::export::ExportPartition;
    use crate::snapshot::{
        create_snapshot, id_created_ms, is_scheduled, list_snapshots, schedule_tick, snapshot_at,
        SnapshotSchedule, SnapshotTarget,
    };
    let env = Env::new().await;
    env.flush(vec![put("a", 10, "v")]).await;
    let parts = [ExportPartition {
        partition: P,
        hash_range: None,
    }];
    let ms: Arc<dyn ManifestStore> = env.manifests.clone();
    let sched = SnapshotSchedule {
        every: Duration::from_secs(300),
        keep: Duration::from_secs(3600),
    };
    let pin = Duration::from_secs(60);
    let tick = |now: u64| {
        let (store, ms, parts) = (env.store.clone(), ms.clone(), parts.clone());
        async move {
            let target = SnapshotTarget {
                store,
                manifests: ms,
                partitions: &parts,
                map_revision: 0,
                max_pin_delay: pin,
                txns: None,
                clock: strata_clock::Clock::system(),
            };
            schedule_tick(&target, &sched, now).await.unwrap()
        }
    };
    let manual = create_snapshot(env.store.clone(), ms.clone(), &parts, 0, pin, None, false)
        .await
        .unwrap();
    assert!(!is_scheduled(&manual.id));
    let t0 = now_ms();
    let first = tick(t0)
        .await
        .created
        .expect("no scheduled snapshot yet: one is made");
    assert!(first.scheduled && is_scheduled(&first.id));
    let created = id_created_ms(&first.id).unwrap();
    assert!(
        tick(created + 299_000).await.created.is_none(),
        "not due yet"
    );
    // Due: a second one (its id carries the wall clock, so it sorts after the first).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = tick(created + 300_000).await.created.expect("due");
    assert!(second.id > first.id);
    // Both past `keep`: the older goes, the newest stays (until a newer one exists), the
    // hand-made one stays.
    let later = created + 3_700_000;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t = tick(later).await;
    let third = t.created.expect("due again");
    assert_eq!(t.deleted, vec![first.id.clone()]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t = tick(later + 1).await;
    let fourth = t
        .created
        .expect("still due: the clock passed in is far ahead");
    assert_eq!(t.deleted, vec![second.id.clone()]);
    let left: Vec<String> = list_snapshots(&*env.store)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        left,
        vec![manual.id.clone(), third.id.clone(), fourth.id.clone()]
    );
    // Point in time: the newest snapshot finished at or before it.
    assert!(third.completed_ms >= third.created_ms);
    assert_eq!(
        snapshot_at(&*env.store, third.as_of_ms()).await.unwrap().id,
        third.id
    );
    // Begun but not finished by then: the one before it.
    if third.completed_ms > third.created_ms && third.created_ms >= manual.as_of_ms() {
        assert_eq!(
            snapshot_at(&*env.store, third.completed_ms - 1)
                .await
                .unwrap()
                .id,
            manual.id
        );
    }
    assert_eq!(
        snapshot_at(&*env.store, manual.as_of_ms())
            .await
            .unwrap()
            .id,
        manual.id
    );
    let err = snapshot_at(&*env.store, id_created_ms(&manual.id).unwrap() - 1)
        .await
        .unwrap_err();
    let err = err.report().to_string();
    assert!(err.contains("oldest kept"), "{err}");

    // A restore and a delete of the same snapshot: whichever comes second sees the other.
    crate::snapshot::mark_restored(&*env.store, &third.id, "file:///elsewhere")
        .await
        .unwrap();
    let e = crate::snapshot::delete_snapshot(&*env.store, &third.id, false)
        .await
        .unwrap_err();
    let e = e.report().to_string();
    assert!(e.contains("restored to"), "{e}");
    assert!(snapshot_at(&*env.store, third.as_of_ms()).await.is_ok());
    // A delete under way (its marker written, interrupted): restoring it is refused.
    env.store
        .put(
            &format!("snapshots/{}/deleting", fourth.id),
            Bytes::from_static(b"deleting"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let e = crate::snapshot::mark_restored(&*env.store, &fourth.id, "file:///x")
        .await
        .unwrap_err();
    let e = e.report().to_string();
    assert!(e.contains("being deleted"), "{e}");
}

/// Tiering: cold SSTs (L1 and deeper here) are copied unchanged to the cold root and the
/// manifest points at the copies; the hot copies go after the grace; a later compaction reads
/// the cold inputs from there and deletes them there once replaced.
#[tokio::test]
async fn cold_ssts_move_to_the_tier_and_compact_from_there() {
    let env = Env::new().await;
    // The store's id (an engine writes it on first open): the cold tier is claimed with it.
    env.store
        .put(
            strata_manifest::layout::STORE_ID_PATH,
            Bytes::from_static(b"00000000000000aa\n"),
            PutMode::Create,
        )
        .await
        .unwrap();
    let cold_dir = tempfile::tempdir().unwrap();
    let cold_url = format!("file://{}", cold_dir.path().display());
    let cold = strata_objstore::LocalStore::open(cold_dir.path()).unwrap();
    let cold_ssts = || async {
        cold.list(&sst_prefix(P))
            .await
            .unwrap()
            .iter()
            .filter_map(|o| parse_sst_path(&o.path))
            .collect::<BTreeSet<u64>>()
    };
    let c = env.compactor(CompactionOptions {
        tier: Some(crate::TierOptions {
            url: cold_url.clone(),
            storage_class: Some("STANDARD_IA".into()),
            min_level: Some(1),
            min_age: None,
        }),
        ..small_opts()
    });
    let mut seq = 0;
    let mut round = |tag: &'static str| {
        let mut batch = Vec::new();
        for k in ["a", "b", "c"] {
            seq += 1;
            batch.push(put(k, seq, tag));
        }
        batch
    };
    for _ in 0..4 {
        env.flush(round("one")).await;
    }
    let mut reports = Vec::new();
    while let Some(r) = c.compact_once().await.unwrap() {
        reports.push(r);
    }
    assert!(reports.iter().any(|r| r.tiered), "{reports:?}");
    let m = env.latest().await;
    let l1: BTreeSet<u64> = m.levels[0].iter().map(|f| f.id).collect();
    assert!(!l1.is_empty());
    assert_eq!(m.roots.len(), 1);
    assert!(m.roots[0].owned && m.roots[0].url == cold_url);
    assert_eq!(m.roots[0].ids.iter().copied().collect::<BTreeSet<_>>(), l1);
    assert_eq!(cold_ssts().await, l1, "copied to the cold tier");
    c.collect_garbage().await.unwrap();
    assert!(
        env.sst_objects().await.is_disjoint(&l1),
        "hot copies deleted after the grace"
    );
    assert_eq!(c.stats().tiered_files, l1.len() as u64);

    // New L0 files overlapping the cold L1: the merge reads the cold inputs from the tier.
    for _ in 0..4 {
        env.flush(round("two")).await;
    }
    while c.compact_once().await.unwrap().is_some() {}
    c.collect_garbage().await.unwrap();
    let m = env.latest().await;
    let now_cold: BTreeSet<u64> = m.roots.iter().flat_map(|r| r.ids.clone()).collect();
    assert!(
        now_cold.is_disjoint(&l1),
        "replaced cold inputs left the manifest"
    );
    assert!(cold_ssts().await.is_disjoint(&l1), "and the cold tier");
    // Every key reads its newest value from the files the manifest lists, wherever they are.
    let mut files = HashMap::new();
    for f in m.l0.iter().chain(m.levels.iter().flatten()) {
        let data = match m.root_of(f.id) {
            None => env.store.get(&sst_path(P, f.id)).await.unwrap(),
            Some(_) => cold.get(&sst_path(P, f.id)).await.unwrap(),
        };
        files.insert(f.id, read_all_entries(&data).unwrap());
    }
    for k in ["a", "b", "c"] {
        let e = visible(read(&m, &files, k.as_bytes())).unwrap();
        assert_eq!(e.value, Bytes::from("two"), "{k}");
    }

    // A copy a tier job left in the cold root without committing (its worker died): the
    // orphan sweep of the cold root deletes it, once seen unreferenced for the grace; the
    // cold SSTs the manifest lists stay.
    let stray = new_sst_id();
    cold.put(
        &sst_path(P, stray),
        Bytes::from_static(b"a copy nobody committed"),
        PutMode::Create,
    )
    .await
    .unwrap();
    let sweeper = env.compactor(CompactionOptions {
        tier: Some(crate::TierOptions {
            url: cold_url.clone(),
            storage_class: None,
            min_level: Some(1),
            min_age: None,
        }),
        orphan_grace: Duration::ZERO,
        gc_grace: Duration::from_millis(50),
        ..small_opts()
    });
    sweeper.sweep_orphans().await.unwrap();
    assert!(cold_ssts().await.contains(&stray), "first seen: kept");
    tokio::time::sleep(Duration::from_millis(60)).await;
    sweeper.sweep_orphans().await.unwrap();
    let left = cold_ssts().await;
    assert!(!left.contains(&stray), "the stray cold copy is swept");
    assert!(now_cold.is_subset(&left), "live cold SSTs stay");

    // Another keyspace given the same tier URL (say, one restored from a snapshot of this
    // one, started with the same flags) neither tiers there nor sweeps it.
    let other = Env::new().await;
    other
        .store
        .put(
            strata_manifest::layout::STORE_ID_PATH,
            Bytes::from_static(b"00000000000000bb\n"),
            PutMode::Create,
        )
        .await
        .unwrap();
    for _ in 0..4 {
        other.flush(vec![put("x", 1, "x")]).await;
    }
    let intruder = other.compactor(CompactionOptions {
        tier: Some(crate::TierOptions {
            url: cold_url.clone(),
            storage_class: None,
            min_level: Some(1),
            min_age: None,
        }),
        orphan_grace: Duration::ZERO,
        ..small_opts()
    });
    while let Some(r) = intruder.compact_once().await.unwrap() {
        assert!(!r.tiered, "tiered into another keyspace's cold root");
    }
    intruder.sweep_orphans().await.unwrap();
    intruder.sweep_orphans().await.unwrap();
    assert_eq!(
        cold_ssts().await,
        left,
        "the other keyspace's sweep left the tier alone"
    );
}

/// The export's WAL tail over a live pipelined writer: a gap among the highest segments is a
/// PUT still in flight (the tail stops there, and a replay point still in flight is an empty
/// tail, not a reread), a gap lower down is a lost segment, and a segment of a lower epoch
/// after a newer marker is skipped.
#[tokio::test]
async fn the_wal_tail_stops_at_a_pipeline_gap_and_skips_orphans() {
    use strata_format::{encode_wal_segment, WalSegmentHeader};
    use strata_manifest::layout::wal_path;
    let env = Env::new().await; // replays from segment 3
    let seg = |id: u64, epoch: u64, key: Option<&str>| {
        let batches: Vec<Vec<Entry>> = key.map(|k| vec![put(k, id, "v")]).into_iter().collect();
        encode_wal_segment(
            &WalSegmentHeader {
                segment_id: id,
                writer_epoch: epoch,
                created_ms: 1,
            },
            &batches,
        )
    };
    let write = |id: u64, epoch: u64, key: Option<&'static str>| {
        let store = env.store.clone();
        let data = seg(id, epoch, key);
        async move {
            store
                .put(&wal_path(P, id), data, PutMode::Create)
                .await
                .unwrap();
        }
    };
    let tail = || async {
        let m = env.latest().await;
        crate::export::read_wal_tail(&env.store, &*env.manifests, P, &m, &()).await
    };
    let keys = |t: &crate::export::WalTail| -> Vec<String> {
        t.entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.key).into_owned())
            .collect()
    };
    // The replay point (3) is in flight, 4 landed: nothing acknowledged yet.
    write(4, 10, Some("four")).await;
    assert!(tail().await.unwrap().entries.is_empty());
    // 3 lands; 5 in flight, 6 landed: the tail stops at the gap.
    write(3, 10, Some("three")).await;
    write(6, 10, Some("six")).await;
    assert_eq!(keys(&tail().await.unwrap()), ["three", "four"]);
    // A newer writer filled 5 with its marker and fenced at 7 (window 8..10): 6 is skipped.
    write(5, 20, None).await;
    for id in 7..=10 {
        write(id, 20, None).await;
    }
    write(11, 20, Some("eleven")).await;
    assert_eq!(keys(&tail().await.unwrap()), ["three", "four", "eleven"]);
    // A hole far below the highest data segment is a lost segment.
    for id in 12..=16 {
        write(id, 20, Some("later")).await;
    }
    env.store.delete(&wal_path(P, 11)).await.unwrap();
    let err = tail().await.err().expect("a lost segment is an error");
    assert!(err.to_string().contains("missing"), "{err}");
}

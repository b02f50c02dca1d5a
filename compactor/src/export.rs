//! `strata export`: a consistent snapshot of the store as Parquet files, for analytics.
//!
//! Per partition, the snapshot is the partition's latest manifest plus every WAL segment from
//! its replay point on, as listed when the export reads the partition: every write
//! acknowledged before the export began is in a segment that existed then (a write is
//! acknowledged only once its segment landed), whether or not a server is running. The only thing
//! written to the store being exported is a pin per partition while it is read
//! (`export-pins/`, removed after; no fencing, no manifest commit), so a live server is not
//! disturbed.
//!
//! Files: `part-{partition:05}-{n:04}.parquet`, rows sorted by key, with columns
//! `key` (binary), `value` (binary), `version` (uint64), `expires_at` (timestamp ms UTC,
//! nullable), `partition` (uint32), `deleted` (bool; only true in incremental exports),
//! `namespace` (utf8, nullable: a tenant's namespace, null for the default namespace; keys are
//! as stored, so rows stay sorted by key, except in an export of one namespace, `--namespace`,
//! whose keys are as its tenant sees them), plus
//! `_manifest.json` listing the files, their row counts and the snapshot (per partition: the
//! manifest version and the largest seq included). Deleted and expired keys are left out of a
//! full export.
//!
//! Incremental export (`since`): only keys whose newest version is above the seq the previous
//! export recorded for their partition, with `deleted = true` rows for deletions that are still
//! visible as tombstones. A reader applies the files of each export in order.

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder,
    UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_format::namespace;
use strata_format::{
    decode_wal_segment, hash_in_range, is_system_key, key_hash, Entry, Kind, Manifest,
    WalEpochFilter, WAL_MARKER_LEN, WAL_MAX_IN_FLIGHT,
};
use strata_manifest::layout::{parse_wal_path, sst_path, wal_path, wal_prefix};
use strata_manifest::ManifestStore;
use strata_objstore::{PutMode, Roots, Store};

use crate::error::{CompactorError, Result, ResultExt};

/// Name of the export's manifest.
pub const EXPORT_MANIFEST: &str = "_manifest.json";

/// One partition to export, with the hash range it serves (`None`: every key).
#[derive(Debug, Clone)]
pub struct ExportPartition {
    pub partition: u32,
    pub hash_range: Option<(u64, Option<u64>)>,
}

/// Export settings.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// A file is closed once its rows pass about this many bytes (keys + values).
    pub target_file_bytes: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Incremental: the previous export's manifest (only newer versions are exported).
    pub since: Option<ExportManifest>,
    /// Revision of the partition map `partitions` came from (recorded in the manifest).
    pub map_revision: i64,
    /// Opens the other roots a manifest may name for some SSTs (restored keyspaces).
    pub roots: Roots,
    /// Only this tenant's namespace (its keys with the namespace's prefix taken off).
    pub namespace: Option<String>,
    /// The clock of the export's dates (its manifest's `created_ms`, its pins).
    pub clock: strata_clock::Clock,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            target_file_bytes: 128 << 20,
            row_group_rows: 64 * 1024,
            since: None,
            map_revision: 0,
            roots: Roots::default(),
            namespace: None,
            clock: strata_clock::Clock::system(),
        }
    }
}

/// `_manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportManifest {
    pub format: String,
    pub created_ms: u64,
    /// `full`, or `incremental` (then `since_created_ms` names the previous export).
    pub kind: String,
    #[serde(default)]
    pub since_created_ms: Option<u64>,
    /// Why an export asked to be incremental is full instead: compaction had removed the
    /// tombstones of some deletions since the earlier export, so only the whole state is
    /// exact. A reader replaces what it has with a full export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
    /// The export recorded each partition's `dropped_tombstone_seq` (exports made before that
    /// was tracked lack it, and an increment on top of one is written in full).
    #[serde(default)]
    pub tracks_dropped_deletes: bool,
    pub partitions: Vec<PartitionSnapshot>,
    pub files: Vec<ExportFile>,
    pub rows: u64,
    pub bytes: u64,
    /// Revision of the cluster's partition map the export followed (0: uniform or embedded).
    #[serde(default)]
    pub map_revision: i64,
    /// The one tenant namespace exported (`strata export --namespace`); absent: every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What an export saw of one partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionSnapshot {
    pub partition: u32,
    pub manifest_version: u64,
    /// Every write of the partition with a seq up to this is reflected.
    pub max_seq: u64,
    pub wal_segments: u64,
    pub ssts: u64,
    /// The highest seq of a deletion whose tombstone compaction had removed when the export
    /// read the partition (an incremental export from a seq below it would miss deletions).
    #[serde(default)]
    pub dropped_tombstone_seq: u64,
}

/// One Parquet file of an export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportFile {
    pub path: String,
    pub partition: u32,
    pub rows: u64,
    pub bytes: u64,
}

/// Progress callbacks: bytes of source data read so far, of an estimated total.
pub trait Progress: Send + Sync {
    fn set_total(&self, bytes: u64);
    fn add(&self, bytes: u64);
}

impl Progress for () {
    fn set_total(&self, _: u64) {}
    fn add(&self, _: u64) {}
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, false),
        Field::new("version", DataType::UInt64, false),
        Field::new(
            "expires_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("partition", DataType::UInt32, false),
        Field::new("deleted", DataType::Boolean, false),
        // The tenant's namespace (`strata serve --tokens`); null for the default namespace.
        // `key` is the key as that tenant sees it.
        Field::new("namespace", DataType::Utf8, true),
    ]))
}

/// Exports `partitions` of the store behind `store`/`manifests` to `dest` under `prefix`.
///
/// An incremental export (`opts.since`) becomes a full one, with `full_reason` saying why,
/// when compaction removed the tombstones of deletions made since the earlier export (a
/// partition's `dropped_tombstone_seq` above the seq that export recorded): the deleted keys
/// are simply absent, so only the whole state tells a reader about them.
pub async fn export(
    store: Arc<dyn Store>,
    manifests: Arc<dyn ManifestStore>,
    partitions: &[ExportPartition],
    dest: Arc<dyn Store>,
    prefix: &str,
    opts: &ExportOptions,
    progress: &dyn Progress,
) -> Result<ExportManifest> {
    let run = ExportRun {
        store: &store,
        manifests: &manifests,
        partitions,
        dest: &dest,
        prefix,
        opts,
        progress,
    };
    match export_once(&run, None).await? {
        Ok(m) => Ok(m),
        Err(reason) => {
            tracing::info!(%reason, "the incremental export is exported in full instead");
            // Clear what the incremental attempt wrote (the place was empty before it).
            let prefix = prefix.trim_end_matches('/');
            for o in dest
                .list(prefix)
                .await
                .with_context(|| format!("listing the destination {prefix:?}"))?
            {
                dest.delete(&o.path)
                    .await
                    .with_context(|| format!("deleting {} of the incremental attempt", o.path))?;
            }
            match export_once(&run, Some(reason)).await? {
                Ok(m) => Ok(m),
                Err(reason) => Err(CompactorError::Internal(format!(
                    "a full export cannot need another: {reason}"
                ))),
            }
        }
    }
}

/// What one export attempt reads and writes: [`export`]'s arguments.
#[derive(Clone, Copy)]
struct ExportRun<'a> {
    store: &'a Arc<dyn Store>,
    manifests: &'a Arc<dyn ManifestStore>,
    partitions: &'a [ExportPartition],
    dest: &'a Arc<dyn Store>,
    prefix: &'a str,
    opts: &'a ExportOptions,
    progress: &'a dyn Progress,
}

/// One export attempt; `Ok(Err(reason))` when an incremental export cannot be exact.
/// `full_instead`: the reason an incremental export (`opts.since`) is written in full.
async fn export_once(
    run: &ExportRun<'_>,
    full_instead: Option<String>,
) -> Result<std::result::Result<ExportManifest, String>> {
    let ExportRun {
        manifests,
        partitions,
        dest,
        prefix,
        opts,
        progress,
        ..
    } = *run;
    // The base an increment is computed from (none when written in full).
    let base = opts.since.as_ref().filter(|_| full_instead.is_none());
    let prefix = prefix.trim_end_matches('/');
    let join = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        }
    };
    let existing = dest
        .list(prefix)
        .await
        .with_context(|| format!("listing the destination {prefix:?}"))?;
    if let Some(o) = existing.first() {
        return Err(CompactorError::Refused(format!(
            "the destination is not empty ({} objects, e.g. {}): an export goes into a place of its \
             own, so readers of `*.parquet` never mix two exports",
            existing.len(),
            o.path
        )));
    }
    if let Some(ns) = &opts.namespace {
        strata_format::namespace::check_name(ns).map_err(CompactorError::Refused)?;
    }
    if let Some(b) = base.filter(|b| b.namespace != opts.namespace) {
        return Err(CompactorError::Refused(format!(
            "the earlier export is of namespace {:?}, this one of {:?}: an increment extends an \
             export of the same keys",
            b.namespace, opts.namespace
        )));
    }
    if base.is_some_and(|m| !m.tracks_dropped_deletes) {
        return Ok(Err(
            "the earlier export was made before Strata tracked deletions that compaction \
             removed"
                .into(),
        ));
    }
    let created_ms = opts.clock.unix_ms();
    // Estimate the total for the progress bar from the manifests' SST sizes.
    let mut total = 0u64;
    for part in partitions {
        let p = part.partition;
        if let Some(m) = crate::error::load_latest(&**manifests, p).await? {
            total +=
                m.l0.iter()
                    .chain(m.levels.iter().flatten())
                    .map(|f| f.props.file_size)
                    .sum::<u64>();
        }
    }
    progress.set_total(total);
    let since: BTreeMap<u32, u64> = base
        .map(|m| {
            m.partitions
                .iter()
                .map(|p| (p.partition, p.max_seq))
                .collect()
        })
        .unwrap_or_default();
    let mut out = ExportManifest {
        format: "strata-export-v1".into(),
        created_ms,
        kind: if base.is_some() {
            "incremental".into()
        } else {
            "full".into()
        },
        since_created_ms: opts.since.as_ref().map(|m| m.created_ms),
        full_reason: full_instead,
        tracks_dropped_deletes: true,
        partitions: Vec::new(),
        files: Vec::new(),
        rows: 0,
        bytes: 0,
        map_revision: opts.map_revision,
        namespace: opts.namespace.clone(),
    };
    for part in partitions {
        let p = part.partition;
        // Incremental: a partition the earlier export did not have (split off since) gets
        // everything, deletions included.
        let floor = base.map(|_| since.get(&p).copied().unwrap_or(0));
        let rows = RowFilter {
            namespace: opts.namespace.clone(),
            hash_range: part.hash_range,
            floor,
            created_ms,
        };
        // Names written by every attempt: one that wrote more files than the attempt that
        // succeeded leaves none of them behind.
        let mut touched = Vec::new();
        let mut attempt = 0;
        let done = loop {
            attempt += 1;
            match export_partition(run, &join, p, &rows, &mut touched).await {
                Err(e) if attempt < 5 && is_not_found(&e) => {
                    tracing::info!(
                        partition = p,
                        "an input vanished while exporting; re-reading"
                    );
                }
                r => break r?,
            }
        };
        let done = match done {
            Ok(d) => d,
            Err(reason) => return Ok(Err(reason)),
        };
        for name in &touched {
            if !done.files.iter().any(|f| &f.path == name) {
                dest.delete(name)
                    .await
                    .with_context(|| format!("deleting {name}, left by an earlier attempt"))?;
            }
        }
        for f in &done.files {
            out.rows += f.rows;
            out.bytes += f.bytes;
        }
        out.files.extend(done.files);
        out.partitions.push(done.snap);
    }
    let body = serde_json::to_vec_pretty(&out).context("encoding the export manifest")?;
    put_replacing(&**dest, &join(EXPORT_MANIFEST), Bytes::from(body)).await?;
    Ok(Ok(out))
}

/// Reads a previous export's manifest (for an incremental export).
pub async fn read_export_manifest(dest: &dyn Store, prefix: &str) -> Result<ExportManifest> {
    let prefix = prefix.trim_end_matches('/');
    let path = if prefix.is_empty() {
        EXPORT_MANIFEST.to_string()
    } else {
        format!("{prefix}/{EXPORT_MANIFEST}")
    };
    let data = dest
        .get(&path)
        .await
        .with_context(|| format!("reading {path}"))?;
    serde_json::from_slice(&data).with_context(|| format!("decoding {path}"))
}

/// Writes `name`, replacing an older object of that name (a re-run into the same place).
async fn put_replacing(dest: &dyn Store, name: &str, data: Bytes) -> Result<()> {
    dest.put(name, data, PutMode::Overwrite)
        .await
        .with_context(|| format!("writing {name}"))
}

/// Which rows of a partition's newest versions an export writes, and how.
struct RowFilter {
    namespace: Option<String>,
    hash_range: Option<(u64, Option<u64>)>,
    /// Incremental: only versions newer than this, deletions included.
    floor: Option<u64>,
    created_ms: u64,
}

impl RowFilter {
    fn row(&self, mut e: Entry) -> Option<Entry> {
        if is_system_key(&e.key) {
            return None;
        }
        if let Some(ns) = &self.namespace {
            if namespace::split(&e.key).is_none_or(|(n, _)| n != ns) {
                return None;
            }
        }
        if self
            .hash_range
            .is_some_and(|r| !hash_in_range(key_hash(&e.key), r))
        {
            return None;
        }
        let expired = e.kind == Kind::Put && e.is_expired(self.created_ms);
        match self.floor {
            Some(f) if e.seq <= f => return None,
            Some(_) => {}
            None if e.kind != Kind::Put || expired => return None,
            None => {}
        }
        // An expired value is, to a reader applying increments, a deletion.
        if expired {
            e.kind = Kind::Delete;
        }
        Some(e)
    }
}

/// An SST to read and where.
struct SstPlace {
    store: Arc<dyn Store>,
    key: String,
    shown: String,
    info: strata_format::SstInfo,
}

impl SstPlace {
    async fn open(self) -> Result<crate::stream::Input> {
        let shown = self.shown.clone();
        crate::stream::Input::open(self.store, self.key, self.shown, self.info)
            .await
            .with_context(|| format!("opening {shown}"))
    }
}

fn whole_file() -> crate::stream::Range {
    crate::stream::Range {
        lo: None,
        hi: None,
        hash_range: None,
    }
}

/// The entries of one level's files, one file after another (they do not overlap and are in
/// key order): each is opened when the one before it ends. Runs on the merge's thread, which
/// is outside the runtime: opening blocks on `handle`.
struct LevelSource {
    files: std::collections::VecDeque<SstPlace>,
    current: Option<crate::stream::EntryStream>,
    handle: tokio::runtime::Handle,
    chunk: u64,
}

impl Iterator for LevelSource {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(s) = &mut self.current {
                match s.next() {
                    Some(r) => return Some(r),
                    None => self.current = None,
                }
            }
            let next = self.files.pop_front()?;
            let input = match self.handle.block_on(next.open()) {
                Ok(i) => i,
                Err(e) => {
                    self.files.clear();
                    return Some(Err(e));
                }
            };
            let _in_runtime = self.handle.enter();
            self.current = Some(crate::stream::spawn(
                Arc::new(input),
                whole_file(),
                self.chunk,
            ));
        }
    }
}

/// Memory for reading one partition's SSTs while it is exported (the stream's chunks).
const EXPORT_READ_BYTES: u64 = 64 << 20;

/// What one partition's export wrote.
struct PartitionDone {
    snap: PartitionSnapshot,
    files: Vec<ExportFile>,
}

/// Exports partition `p` as of now: the newest version of every key (tombstones included),
/// from the latest manifest's SSTs and the WAL segments from its replay point on, filtered by
/// `rows` and cut into Parquet files. The SSTs are streamed block by block through a k-way
/// merge on a thread of its own (never read whole), and each file is written as soon as its
/// rows are in, so memory is the read chunks plus about three files' rows. An input that
/// vanishes (a flush moved the replay point and WAL GC ran, or compaction GC deleted an
/// input) fails the attempt with an error `is_not_found` recognises: read again from the
/// newer manifest. `Ok(Err(reason))`: an incremental export cannot be exact.
async fn export_partition(
    run: &ExportRun<'_>,
    join: &(dyn Fn(&str) -> String + Sync),
    p: u32,
    rows: &RowFilter,
    touched: &mut Vec<String>,
) -> Result<std::result::Result<PartitionDone, String>> {
    let (store, manifests) = (run.store, run.manifests);
    let Some(m) = crate::error::load_latest(&**manifests, p).await? else {
        return Ok(Ok(PartitionDone {
            snap: PartitionSnapshot {
                partition: p,
                manifest_version: 0,
                max_seq: 0,
                wal_segments: 0,
                ssts: 0,
                dropped_tombstone_seq: 0,
            },
            files: Vec::new(),
        }));
    };
    if let Some(f) = rows.floor {
        if m.dropped_tombstone_seq > f {
            return Ok(Err(format!(
                "partition {p}: compaction removed tombstones of deletions up to seq {}, \
                 after the earlier export's seq {f}",
                m.dropped_tombstone_seq
            )));
        }
    }
    // Pinned while read: compaction GC keeps this version's SSTs until the pin goes, so an
    // export longer than the GC grace is not restarted by an input deleted under it.
    // Best effort: an export with read-only access to the store still runs, unpinned (an
    // input deleted under it makes it read again from a newer manifest).
    let mut pin =
        match crate::snapshot::pin_for_export(&**store, p, &m, run.opts.clock.unix_ms()).await {
            Ok(path) => Some(PinGuard {
                store: store.clone(),
                path: Some(path),
            }),
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "exporting without a pin");
                None
            }
        };
    let r = export_version(run, join, p, rows, touched, m).await;
    if let Some(path) = pin.as_mut().and_then(|g| g.path.take()) {
        crate::snapshot::unpin_export(&**store, &path).await;
    }
    r
}

/// Removes an export's pin when the export is dropped before it could (a fleet worker that
/// lost its claim drops the export mid-way): the pin would otherwise hold its version's
/// SSTs until it ages out.
struct PinGuard {
    store: Arc<dyn Store>,
    /// Taken by the export once it removed the pin itself.
    path: Option<String>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            rt.spawn(async move { crate::snapshot::unpin_export(&*store, &path).await });
        }
    }
}

/// [`export_partition`] of the pinned version `m`.
async fn export_version(
    run: &ExportRun<'_>,
    join: &(dyn Fn(&str) -> String + Sync),
    p: u32,
    rows: &RowFilter,
    touched: &mut Vec<String>,
    m: Arc<strata_format::Manifest>,
) -> Result<std::result::Result<PartitionDone, String>> {
    let ExportRun {
        store,
        manifests,
        dest,
        opts,
        progress,
        ..
    } = *run;
    let files: Vec<strata_format::SstInfo> = m.ssts().cloned().collect();
    // Where each SST is read (an SST of a restored keyspace's source under its root).
    let place = |f: &strata_format::SstInfo| -> Result<SstPlace> {
        let path = sst_path(p, f.id);
        let root = m.root_of(f.id);
        let store = opts
            .roots
            .store_for(store, root)
            .with_context(|| format!("opening the root {root:?} of {path}"))?;
        let shown = match root {
            None => path.clone(),
            Some(url) => format!("{url}/{path}"),
        };
        Ok(SstPlace {
            store,
            key: path,
            shown,
            info: f.clone(),
        })
    };
    // L0 files overlap: a stream each, opened up front (a few at a time). Files of a deeper
    // level do not: one stream per level, opening its files in key order as it reaches them,
    // so the read budget is shared by L0 files + levels, not by every SST, and only one index
    // per level is held.
    let l0: Vec<SstPlace> = m.l0.iter().map(place).collect::<Result<_>>()?;
    let l0: Vec<crate::stream::Input> = futures::stream::iter(l0.into_iter().map(|pl| pl.open()))
        .buffered(8)
        .try_collect()
        .await?;
    let mut levels = Vec::new();
    for level in &m.levels {
        let mut files: Vec<&strata_format::SstInfo> = level.iter().collect();
        files.sort_by(|a, b| a.props.smallest_key.cmp(&b.props.smallest_key));
        let files: Vec<SstPlace> = files.into_iter().map(place).collect::<Result<_>>()?;
        if !files.is_empty() {
            levels.push(files);
        }
    }
    let mut tail = read_wal_tail(store, &**manifests, p, &m, progress).await?;
    let snap = PartitionSnapshot {
        partition: p,
        manifest_version: m.version,
        max_seq: m.last_flushed_seq.max(tail.max_seq),
        wal_segments: tail.segments,
        ssts: files.len() as u64,
        dropped_tombstone_seq: m.dropped_tombstone_seq,
    };
    // The WAL's writes are the newest: the first source, in internal key order.
    tail.entries.sort_by(|a, b| a.internal_cmp(b));
    let chunk = crate::stream::chunk_bytes(EXPORT_READ_BYTES, l0.len() + levels.len());
    type Source = Box<dyn Iterator<Item = Result<Entry>> + Send>;
    let mut sources: Vec<Source> = vec![Box::new(tail.entries.into_iter().map(Ok))];
    for input in l0 {
        sources.push(Box::new(crate::stream::spawn(
            Arc::new(input),
            whole_file(),
            chunk,
        )));
    }
    let handle = tokio::runtime::Handle::current();
    for files in levels {
        sources.push(Box::new(LevelSource {
            files: files.into(),
            current: None,
            handle: handle.clone(),
            chunk,
        }));
    }

    // The merge blocks on its streams: a thread of its own, handing over a file's rows at a
    // time (one in the channel, one being written).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Entry>>(1);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let filter = RowFilter {
        namespace: rows.namespace.clone(),
        hash_range: rows.hash_range,
        floor: rows.floor,
        created_ms: rows.created_ms,
    };
    let target = opts.target_file_bytes.max(1);
    let merge = move || -> Result<()> {
        let stopped = || CompactorError::Internal("the export's file writer stopped".into());
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        crate::merge::merge_newest(sources, |e| {
            if tx.is_closed() {
                // The writer failed or the export was dropped: stop reading.
                return Err(stopped());
            }
            let Some(e) = filter.row(e) else {
                return Ok(());
            };
            bytes += (e.key.len() + e.value.len() + 24) as u64;
            batch.push(e);
            if bytes >= target {
                bytes = 0;
                tx.blocking_send(std::mem::take(&mut batch))
                    .map_err(|_| stopped())?;
            }
            Ok(())
        })?;
        if !batch.is_empty() {
            tx.blocking_send(batch).map_err(|_| stopped())?;
        }
        Ok(())
    };
    std::thread::Builder::new()
        .name("strata-export".into())
        .spawn(move || {
            let _ = done_tx.send(merge());
        })
        .context("starting the export's merge thread")?;

    let mut written = Vec::new();
    while let Some(batch) = rx.recv().await {
        let name = join(&format!("part-{p:05}-{:04}.parquet", written.len()));
        // Encoding is CPU work: off the async workers (which run the read streams).
        let (rg, strip) = (opts.row_group_rows, opts.namespace.is_some());
        let (data, n) = tokio::task::spawn_blocking(move || {
            encode_parquet(&batch, p, rg, strip).map(|d| (d, batch.len() as u64))
        })
        .await
        .map_err(|e| CompactorError::Internal(format!("the Parquet encoding task: {e}")))??;
        let bytes = data.len() as u64;
        if !touched.contains(&name) {
            touched.push(name.clone());
        }
        put_replacing(&**dest, &name, data).await?;
        written.push(ExportFile {
            path: name,
            partition: p,
            rows: n,
            bytes,
        });
    }
    // The channel closed: the merge ended, with its outcome here (an error, or every row).
    done_rx
        .await
        .map_err(|_| CompactorError::Internal("the export's merge thread stopped".into()))??;
    progress.add(files.iter().map(|f| f.props.file_size).sum());
    Ok(Ok(PartitionDone {
        snap,
        files: written,
    }))
}

/// Whether an input moved under the export (collected after a flush or compaction: an
/// object vanished, or a [`CompactorError::Reread`]): read the partition again from its
/// newer manifest.
pub(crate) fn is_not_found(e: &CompactorError) -> bool {
    e.is_moved()
}

/// The writes of a partition that are in its WAL but in no SST of manifest `m`.
pub(crate) struct WalTail {
    /// In WAL order (seq ascending).
    pub entries: Vec<Entry>,
    /// Largest seq among them (0 when none).
    pub max_seq: u64,
    /// Segments read.
    pub segments: u64,
}

/// Reads the WAL of partition `p` from `m`'s replay point on, keeping the entries above its
/// flushed seq. Fails with an error [`is_not_found`] recognises when the WAL moved under the
/// read (read again from a newer manifest).
pub(crate) async fn read_wal_tail(
    store: &Arc<dyn Store>,
    manifests: &dyn ManifestStore,
    p: u32,
    m: &Manifest,
    progress: &dyn Progress,
) -> Result<WalTail> {
    let mut max_seq = 0;
    let mut entries = Vec::new();
    // WAL segments from the replay point on, in order; ids are consecutive.
    let mut listed: Vec<(u64, u64)> = store
        .list(&wal_prefix(p))
        .await
        .with_context(|| format!("listing the WAL of partition {p}"))?
        .iter()
        .filter_map(|o| parse_wal_path(&o.path).map(|id| (id, o.size)))
        .filter(|&(id, _)| id >= m.wal_replay_from)
        .collect();
    listed.sort_unstable();
    // A live writer's pipeline may leave gaps at or above its highest data segment minus
    // WAL_MAX_IN_FLIGHT - 1 (segments still in flight while later ones landed): nothing from
    // such a gap on is acknowledged yet, so the tail stops there. A gap lower down is a lost
    // segment (or, before the first one, segments collected after a flush).
    let max_data = listed
        .iter()
        .rev()
        .find(|&&(_, size)| size > WAL_MARKER_LEN)
        .map_or(0, |&(id, _)| id);
    let in_flight_from = max_data.saturating_sub(WAL_MAX_IN_FLIGHT - 1);
    let mut ids: Vec<u64> = listed.iter().map(|&(id, _)| id).collect();
    // The tail must start exactly at the replay point: if the first listed segment is later,
    // segments [replay point, first) were collected because a flush moved the replay point
    // past them — their writes are in an SST this manifest does not list. Read again from the
    // newer manifest (as when a segment vanishes while reading). Unless the replay point is a
    // segment still in flight: then nothing of the tail is acknowledged yet.
    let replay_point_in_flight = m.wal_replay_from >= in_flight_from;
    if ids.first() != Some(&m.wal_replay_from) {
        if let (Some(&first), false) = (ids.first(), replay_point_in_flight) {
            return Err(CompactorError::Reread(format!(
                "WAL of partition {p} starts at {first}, after the replay point {}",
                m.wal_replay_from
            )));
        }
        // Nothing at the replay point: nothing listed, or the replay point is still in flight.
        // The tail is empty, unless the manifest moved meanwhile (segments were collected).
        let now = manifests
            .load_latest(p)
            .await
            .with_context(|| format!("re-loading the manifest of partition {p}"))?;
        if now.as_ref().map(|n| n.version) != Some(m.version) {
            return Err(CompactorError::Reread(format!(
                "manifest of partition {p} moved while its WAL was listed"
            )));
        }
        ids.clear();
    }
    let mut contiguous = ids.len();
    for (i, w) in ids.windows(2).enumerate() {
        if w[1] != w[0] + 1 {
            if w[0] + 1 >= in_flight_from {
                contiguous = i + 1;
                break;
            }
            return Err(CompactorError::Corrupt(format!(
                "WAL segment {} of partition {p} is missing",
                wal_path(p, w[0] + 1)
            )));
        }
    }
    ids.truncate(contiguous);
    let mut epochs = WalEpochFilter::default();
    let mut skipped = 0u64;
    for &id in &ids {
        let path = wal_path(p, id);
        let data = store
            .get(&path)
            .await
            .with_context(|| format!("reading {path}"))?;
        let (hdr, batches) =
            decode_wal_segment(&data).with_context(|| format!("WAL segment {path} is corrupt"))?;
        if hdr.segment_id != id {
            return Err(CompactorError::Corrupt(format!(
                "WAL segment {path} says it is segment {}",
                hdr.segment_id
            )));
        }
        progress.add(data.len() as u64);
        if !epochs.admit(&hdr) {
            skipped += 1; // a deposed writer's pipeline landed it after a newer marker
            continue;
        }
        for e in batches.into_iter().flatten() {
            if e.seq > m.last_flushed_seq {
                max_seq = max_seq.max(e.seq);
                entries.push(e);
            }
        }
    }
    if skipped > 0 {
        // A skip is right only if the marker before it filled a real pipeline gap. With a stale
        // manifest the range may start below the current replay point, where a marker can sit
        // on a name WAL GC had deleted (and skipping after it would drop acknowledged writes):
        // read again from the current manifest then.
        let now = manifests
            .load_latest(p)
            .await
            .with_context(|| format!("re-loading the manifest of partition {p}"))?;
        if now.as_ref().map(|n| n.wal_replay_from) != Some(m.wal_replay_from) {
            return Err(CompactorError::Reread(format!(
                "the replay point of partition {p} moved while its WAL tail was read"
            )));
        }
    }
    Ok(WalTail {
        entries,
        max_seq,
        segments: ids.len() as u64,
    })
}

/// Encodes rows as one Parquet file (row groups of `row_group_rows`, Snappy-compressed).
///
/// With `strip` (an export of one namespace) keys are written as their tenant sees them;
/// otherwise as stored, so rows stay sorted by `key` and a key is unique in the export.
fn encode_parquet(
    rows: &[Entry],
    partition: u32,
    row_group_rows: usize,
    strip: bool,
) -> Result<Bytes> {
    let schema = schema();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_created_by(format!("strata {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))
        .context("starting a Parquet file")?;
    for batch in rows.chunks(row_group_rows.max(1)) {
        let mut key = BinaryBuilder::new();
        let mut value = BinaryBuilder::new();
        let mut version = UInt64Builder::new();
        let mut expires = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut part = UInt32Builder::new();
        let mut deleted = BooleanBuilder::new();
        let mut ns = StringBuilder::new();
        for e in batch {
            // The key's namespace; with `strip`, the key as its tenant sees it.
            match namespace::split(&e.key) {
                Some((name, k)) => {
                    key.append_value(if strip { k } else { &e.key[..] });
                    ns.append_value(name);
                }
                None => {
                    key.append_value(&e.key);
                    ns.append_null();
                }
            }
            let is_delete = e.kind == Kind::Delete;
            value.append_value(if is_delete { &[][..] } else { &e.value[..] });
            version.append_value(e.seq);
            if e.expires_at_ms == 0 || is_delete {
                expires.append_null();
            } else {
                expires.append_value(e.expires_at_ms as i64);
            }
            part.append_value(partition);
            deleted.append_value(is_delete);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(key.finish()),
            Arc::new(value.finish()),
            Arc::new(version.finish()),
            Arc::new(expires.finish()),
            Arc::new(part.finish()),
            Arc::new(deleted.finish()),
            Arc::new(ns.finish()),
        ];
        let rb = RecordBatch::try_new(schema.clone(), cols).context("building a record batch")?;
        w.write(&rb).context("writing Parquet rows")?;
    }
    w.close().context("finishing a Parquet file")?;
    Ok(Bytes::from(buf))
}

//! `strata export`: a consistent snapshot of the store as Parquet files, for analytics.
//!
//! Per partition, the snapshot is the partition's latest manifest plus every WAL segment from
//! its replay point on, as listed when the export reads the partition: every write
//! acknowledged before the export began is in a segment that existed then (a write is
//! acknowledged only once its segment landed), whether or not a server is running. Nothing is
//! written to the store being exported (no fencing, no manifest commit), so a live server is
//! not disturbed.
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
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_format::namespace;
use strata_format::{
    decode_wal_segment, hash_in_range, is_system_key, key_hash, read_all_entries, Entry, Kind,
    Manifest,
};
use strata_manifest::layout::{parse_wal_path, sst_path, wal_path, wal_prefix};
use strata_manifest::{now_ms, ManifestStore};
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
        store,
        manifests,
        partitions,
        dest,
        prefix,
        opts,
        progress,
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
    let created_ms = now_ms();
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
        let (snap, entries) = read_partition(store, &opts.roots, &**manifests, p, progress).await?;
        // Incremental: a partition the earlier export did not have (split off since) gets
        // everything, deletions included.
        let floor = base.map(|_| since.get(&p).copied().unwrap_or(0));
        if let Some(f) = floor {
            if snap.dropped_tombstone_seq > f {
                return Ok(Err(format!(
                    "partition {p}: compaction removed tombstones of deletions up to seq {}, \
                     after the earlier export's seq {f}",
                    snap.dropped_tombstone_seq
                )));
            }
        }
        let rows: Vec<Entry> = entries
            .into_iter()
            .filter(|e| !is_system_key(&e.key))
            .filter(|e| match &opts.namespace {
                Some(ns) => namespace::split(&e.key).is_some_and(|(n, _)| n == ns),
                None => true,
            })
            .filter(|e| {
                part.hash_range
                    .is_none_or(|r| hash_in_range(key_hash(&e.key), r))
            })
            .filter(|e| match floor {
                // Incremental: what changed, deletions included.
                Some(f) => e.seq > f,
                None => e.kind == Kind::Put && !e.is_expired(created_ms),
            })
            .map(|mut e| {
                // An expired value is, to a reader applying increments, a deletion.
                if e.kind == Kind::Put && e.is_expired(created_ms) {
                    e.kind = Kind::Delete;
                }
                e
            })
            .collect();
        for (n, chunk) in chunks(&rows, opts.target_file_bytes)
            .into_iter()
            .enumerate()
        {
            let name = join(&format!("part-{p:05}-{n:04}.parquet"));
            let data = encode_parquet(chunk, p, opts.row_group_rows, opts.namespace.is_some())?;
            let bytes = data.len() as u64;
            put_replacing(&**dest, &name, data).await?;
            out.rows += chunk.len() as u64;
            out.bytes += bytes;
            out.files.push(ExportFile {
                path: name,
                partition: p,
                rows: chunk.len() as u64,
                bytes,
            });
        }
        out.partitions.push(snap);
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

/// The partition's state as of now: newest version of every key (tombstones included), from
/// the latest manifest's SSTs and the WAL segments from its replay point on. Retries from a
/// newer manifest if a segment or SST disappears under it (a flush moved the replay point and
/// WAL GC ran, or compaction GC deleted an input).
pub(crate) async fn read_partition(
    store: &Arc<dyn Store>,
    roots: &Roots,
    manifests: &dyn ManifestStore,
    p: u32,
    progress: &dyn Progress,
) -> Result<(PartitionSnapshot, Vec<Entry>)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match read_partition_once(store, roots, manifests, p, progress).await {
            Err(e) if attempt < 5 && is_not_found(&e) => {
                tracing::info!(
                    partition = p,
                    "an input vanished while exporting; re-reading"
                );
            }
            r => return r,
        }
    }
}

/// Whether an input moved under the export (collected after a flush or compaction: an
/// object vanished, or a [`CompactorError::Reread`]): read the partition again from its
/// newer manifest.
pub(crate) fn is_not_found(e: &CompactorError) -> bool {
    e.is_moved()
}

async fn read_partition_once(
    store: &Arc<dyn Store>,
    roots: &Roots,
    manifests: &dyn ManifestStore,
    p: u32,
    progress: &dyn Progress,
) -> Result<(PartitionSnapshot, Vec<Entry>)> {
    let Some(m) = crate::error::load_latest(manifests, p).await? else {
        return Ok((
            PartitionSnapshot {
                partition: p,
                manifest_version: 0,
                max_seq: 0,
                wal_segments: 0,
                ssts: 0,
                dropped_tombstone_seq: 0,
            },
            Vec::new(),
        ));
    };
    let mut newest: BTreeMap<Bytes, Entry> = BTreeMap::new();
    let mut keep = |e: Entry| match newest.get(&e.key) {
        Some(cur) if cur.seq >= e.seq => {}
        _ => {
            newest.insert(e.key.clone(), e);
        }
    };
    let max_seq = m.last_flushed_seq;
    let files: Vec<_> = m.ssts().cloned().collect();
    for f in &files {
        let path = sst_path(p, f.id);
        // An SST of a restored keyspace's source is read under its root.
        let root = m.root_of(f.id);
        let src = roots
            .store_for(store, root)
            .with_context(|| format!("opening the root {root:?} of {path}"))?;
        let shown = match root {
            None => path.clone(),
            Some(url) => format!("{url}/{path}"),
        };
        let data = src
            .get(&path)
            .await
            .with_context(|| format!("reading {shown}"))?;
        let entries = read_all_entries(&data).with_context(|| format!("SST {path} is corrupt"))?;
        progress.add(data.len() as u64);
        for e in entries {
            keep(e);
        }
    }
    let tail = read_wal_tail(store, manifests, p, &m, progress).await?;
    let max_seq = max_seq.max(tail.max_seq);
    for e in tail.entries {
        keep(e);
    }
    Ok((
        PartitionSnapshot {
            partition: p,
            manifest_version: m.version,
            max_seq,
            wal_segments: tail.segments,
            ssts: files.len() as u64,
            dropped_tombstone_seq: m.dropped_tombstone_seq,
        },
        newest.into_values().collect(),
    ))
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
    let mut ids: Vec<u64> = store
        .list(&wal_prefix(p))
        .await
        .with_context(|| format!("listing the WAL of partition {p}"))?
        .iter()
        .filter_map(|o| parse_wal_path(&o.path))
        .filter(|&id| id >= m.wal_replay_from)
        .collect();
    ids.sort_unstable();
    // The tail must start exactly at the replay point: if the first listed segment is later,
    // segments [replay point, first) were collected because a flush moved the replay point
    // past them — their writes are in an SST this manifest does not list. Read again from the
    // newer manifest (as when a segment vanishes while reading).
    match ids.first() {
        Some(&first) if first != m.wal_replay_from => {
            return Err(CompactorError::Reread(format!(
                "WAL of partition {p} starts at {first}, after the replay point {}",
                m.wal_replay_from
            )));
        }
        None => {
            let now = manifests
                .load_latest(p)
                .await
                .with_context(|| format!("re-loading the manifest of partition {p}"))?;
            if now.as_ref().map(|n| n.version) != Some(m.version) {
                return Err(CompactorError::Reread(format!(
                    "manifest of partition {p} moved while its WAL was listed"
                )));
            }
        }
        Some(_) => {}
    }
    for w in ids.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(CompactorError::Corrupt(format!(
                "WAL segment {} of partition {p} is missing",
                wal_path(p, w[0] + 1)
            )));
        }
    }
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
        for e in batches.into_iter().flatten() {
            if e.seq > m.last_flushed_seq {
                max_seq = max_seq.max(e.seq);
                entries.push(e);
            }
        }
    }
    Ok(WalTail {
        entries,
        max_seq,
        segments: ids.len() as u64,
    })
}

/// Splits rows (sorted by key) into files of about `target` bytes.
fn chunks(rows: &[Entry], target: u64) -> Vec<&[Entry]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, e) in rows.iter().enumerate() {
        bytes += (e.key.len() + e.value.len() + 24) as u64;
        if bytes >= target {
            out.push(&rows[start..=i]);
            start = i + 1;
            bytes = 0;
        }
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
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

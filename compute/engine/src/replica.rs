//! Eventually consistent reads on any node: a partition's flushed data (its current manifest's
//! SSTs), read without owning it.
//!
//! What a replica read can miss is bounded by the owner's published progress: every write up
//! to the manifest's `last_flushed_seq` is in these SSTs; writes after it are only in the
//! owner's WAL and memtables. The read says so (`x-strata-flushed-seq`, and the owner's
//! `x-strata-stale-seqs` when published), and a session token newer than the flushed data sends
//! the read to the owner instead (read-your-writes).
//!
//! SSTs of a replaced manifest stay readable for the GC grace period (5 minutes by default), far
//! longer than a node takes to notice a new manifest (an etcd watch wakes it); a read that still
//! finds an object gone reloads the manifest and retries once.

use crate::db::{live, open_version, Db};
use crate::error::{EngineError, EngineResult};
use crate::memtable::{Memtable, Snap};
use crate::scan::Scanner;
use crate::sst_reader::BlockSource;
use crate::version::{Version, View};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use strata_format::Manifest;
use strata_manifest::ManifestStore;

/// Opened manifest versions of partitions this node does not own.
pub struct Replicas {
    src: BlockSource,
    clock: strata_clock::Clock,
    manifests: Arc<dyn ManifestStore>,
    versions: Mutex<HashMap<u32, Arc<Version>>>,
}

/// An eventually consistent read.
#[derive(Debug, Clone)]
pub struct ReplicaRead {
    /// The live value and version, if any.
    pub value: Option<(Bytes, u64)>,
    /// Every write of the partition up to this seq is reflected.
    pub flushed_seq: u64,
    /// When that manifest was committed (ms since the Unix epoch).
    pub manifest_ms: u64,
}

impl Replicas {
    /// Replicas reading `store` (whose id is `store_uid`, see [`crate::store_uid`]) through
    /// `cache`; `roots` opens the other roots a restored keyspace's manifests name.
    pub fn new(
        store: Arc<dyn strata_objstore::Store>,
        cache: strata_cache::BlockCache,
        store_uid: u64,
        roots: strata_objstore::Roots,
        manifests: Arc<dyn ManifestStore>,
        clock: strata_clock::Clock,
    ) -> Self {
        Replicas {
            clock,
            src: BlockSource {
                store,
                cache,
                store_uid,
                roots,
            },
            manifests,
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// The opened version of `p`, at least manifest version `want`.
    async fn version(&self, p: u32, want: u64, force: bool) -> EngineResult<Arc<Version>> {
        let cached = self.versions.lock().get(&p).cloned();
        if let Some(v) = &cached {
            if !force && v.manifest.version >= want {
                return Ok(v.clone());
            }
        }
        let m: Arc<Manifest> =
            self.manifests.load_latest(p).await?.ok_or_else(|| {
                EngineError::NotServing(format!("partition {p} has no manifest yet"))
            })?;
        let reuse = cached.map(|v| v.readers()).unwrap_or_default();
        let v = Arc::new(open_version(&self.src, p, m, &reuse).await?);
        let mut versions = self.versions.lock();
        let keep = match versions.get(&p) {
            Some(cur) if cur.manifest.version > v.manifest.version => cur.clone(),
            _ => v,
        };
        versions.insert(p, keep.clone());
        Ok(keep)
    }

    /// A scan of partition `p`'s flushed data (no older than manifest version `want`) over
    /// `[start, end)`, with the seq up to which that data reflects every write.
    pub async fn scan(
        &self,
        p: u32,
        want: u64,
        start: Bytes,
        end: Option<Bytes>,
    ) -> EngineResult<(Scanner, u64)> {
        let version = self.version(p, want, false).await?;
        let flushed = version.manifest.last_flushed_seq;
        let view = Arc::new(Self::view_of(version));
        Ok((
            Scanner::new(view, Snap::LATEST, start, end, &self.clock),
            flushed,
        ))
    }

    fn view_of(version: Arc<Version>) -> View {
        View {
            active: Arc::new(Memtable::new(0)),
            imms: Vec::new(),
            version,
        }
    }

    /// Reads `key` of partition `p` from flushed data no older than manifest version `want`.
    pub async fn get(&self, p: u32, key: &[u8], want: u64) -> EngineResult<ReplicaRead> {
        let mut force = false;
        loop {
            let version = self.version(p, want, force).await?;
            let view = Self::view_of(version.clone());
            match Db::get_entry(&view, key, Snap::LATEST).await {
                Ok(e) => {
                    return Ok(ReplicaRead {
                        value: live(e, self.clock.unix_ms()),
                        flushed_seq: version.manifest.last_flushed_seq,
                        manifest_ms: version.manifest.created_ms,
                    })
                }
                // An SST replaced (and collected) under us: reload once.
                Err(EngineError::Corruption(m)) if !force && m.contains("missing object") => {
                    force = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Forgets `p` (we own it now, or it is gone).
    pub fn forget(&self, p: u32) {
        self.versions.lock().remove(&p);
    }
}

//! What a reader sees: memtables plus the SSTs of one manifest version.

use crate::memtable::Memtable;
use crate::sst_reader::SstReader;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use strata_format::Manifest;

/// The manifest versions that some reader of this engine still holds (a view, a scan), with
/// how many holds each: what lets the in-process compactor delete a compacted input as soon
/// as no reader can read it, instead of after a long grace (`docs/gc.md`).
#[derive(Debug, Default)]
pub struct LiveVersions {
    held: Mutex<BTreeMap<u64, usize>>,
}

impl LiveVersions {
    /// A hold on `version` until the returned guard drops.
    pub fn hold(self: &Arc<Self>, version: u64) -> VersionHold {
        *self.held.lock().entry(version).or_insert(0) += 1;
        VersionHold {
            live: self.clone(),
            version,
        }
    }

    /// The oldest version still held (`None` when no version is).
    pub fn oldest(&self) -> Option<u64> {
        self.held.lock().keys().next().copied()
    }
}

/// Keeps one version listed in [`LiveVersions`] while it lives.
#[derive(Debug)]
pub struct VersionHold {
    live: Arc<LiveVersions>,
    version: u64,
}

impl Drop for VersionHold {
    fn drop(&mut self) {
        let mut held = self.live.held.lock();
        if let Some(n) = held.get_mut(&self.version) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.version);
            }
        }
    }
}

/// The SSTs of one manifest version, opened.
#[derive(Debug)]
pub struct Version {
    pub manifest: Arc<Manifest>,
    /// Newest first.
    pub l0: Vec<Arc<SstReader>>,
    /// `levels[0]` is L1; each level sorted by smallest key, non-overlapping.
    pub levels: Vec<Vec<Arc<SstReader>>>,
    /// Lists this version as held while any reader has it (engine versions only).
    pub hold: Option<VersionHold>,
}

impl Version {
    /// Every open reader by SST id, to reuse when installing the next version.
    pub fn readers(&self) -> HashMap<u64, Arc<SstReader>> {
        self.l0
            .iter()
            .chain(self.levels.iter().flatten())
            .map(|r| (r.info.id, r.clone()))
            .collect()
    }

    /// The SST of `level` (0-based index into `levels`) that may hold `key`.
    pub fn level_file(&self, level: usize, key: &[u8]) -> Option<&Arc<SstReader>> {
        let files = self.levels.get(level)?;
        let i = files.partition_point(|f| f.info.props.largest_key.as_ref() < key);
        files.get(i).filter(|f| f.covers(key))
    }
}

/// A consistent snapshot for readers.
#[derive(Debug, Clone)]
pub struct View {
    pub active: Arc<Memtable>,
    /// Frozen memtables waiting to be flushed, newest first.
    pub imms: Vec<Arc<Memtable>>,
    pub version: Arc<Version>,
}

impl View {
    pub fn memtables(&self) -> impl Iterator<Item = &Arc<Memtable>> {
        std::iter::once(&self.active).chain(self.imms.iter())
    }
}

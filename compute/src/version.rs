//! What a reader sees: memtables plus the SSTs of one manifest version.

use crate::memtable::Memtable;
use crate::sst_reader::SstReader;
use std::collections::HashMap;
use std::sync::Arc;
use strata_format::Manifest;

/// The SSTs of one manifest version, opened.
#[derive(Debug)]
pub struct Version {
    pub manifest: Arc<Manifest>,
    /// Newest first.
    pub l0: Vec<Arc<SstReader>>,
    /// `levels[0]` is L1; each level sorted by smallest key, non-overlapping.
    pub levels: Vec<Vec<Arc<SstReader>>>,
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

//! The memtable: a concurrent skip list ordered by internal key (key asc, seq desc).
//!
//! Only the commit loop inserts, always in increasing seq order, so a memtable holds a
//! contiguous range of seqs and a newer memtable holds only newer seqs than an older one.
//! Readers filter with a [`Snap`]: durable entries above the durable seq are not visible
//! yet; buffered entries are visible once acknowledged.

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;
use std::cmp::{Ordering, Reverse};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use strata_format::{Entry, Kind};

/// Internal key: user key ascending, then seq descending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalKey {
    pub key: Bytes,
    pub seq: Reverse<u64>,
}

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a memtable stores for one internal key.
#[derive(Debug, Clone)]
pub struct MemValue {
    pub kind: Kind,
    pub expires_at_ms: u64,
    pub value: Bytes,
    /// Written with `DURABILITY_BUFFERED`: visible once acknowledged, before its WAL PUT.
    pub buffered: bool,
}

/// What a reader may see: every entry with seq <= `durable`, plus buffered entries with
/// seq <= `buffered`. A durable write is never visible before its WAL segment landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snap {
    pub durable: u64,
    pub buffered: u64,
}

impl Snap {
    /// Sees everything, durable or not (the commit loop's view for condition checks).
    pub const LATEST: Snap = Snap {
        durable: u64::MAX,
        buffered: u64::MAX,
    };

    pub fn max(&self) -> u64 {
        self.durable.max(self.buffered)
    }

    pub fn sees(&self, seq: u64, buffered: bool) -> bool {
        seq <= self.durable || (buffered && seq <= self.buffered)
    }
}

/// A memtable.
#[derive(Debug)]
pub struct Memtable {
    map: SkipMap<InternalKey, MemValue>,
    bytes: AtomicU64,
    min_seq: AtomicU64,
    max_seq: AtomicU64,
    /// Identifies the memtable in logs and flush bookkeeping.
    pub id: u64,
}

/// Bytes charged per entry beyond key and value: skip list nodes are not free.
const ENTRY_OVERHEAD: u64 = 64;

impl Memtable {
    pub fn new(id: u64) -> Self {
        Memtable {
            map: SkipMap::new(),
            bytes: AtomicU64::new(0),
            min_seq: AtomicU64::new(u64::MAX),
            max_seq: AtomicU64::new(0),
            id,
        }
    }

    /// Inserts one entry. Callers insert in increasing seq order.
    pub fn insert(&self, e: &Entry, buffered: bool) {
        let size = e.key.len() as u64 + e.value.len() as u64 + ENTRY_OVERHEAD;
        self.map.insert(
            InternalKey {
                key: e.key.clone(),
                seq: Reverse(e.seq),
            },
            MemValue {
                kind: e.kind,
                expires_at_ms: e.expires_at_ms,
                value: e.value.clone(),
                buffered,
            },
        );
        self.bytes.fetch_add(size, AtomicOrdering::Relaxed);
        self.min_seq.fetch_min(e.seq, AtomicOrdering::Relaxed);
        self.max_seq.fetch_max(e.seq, AtomicOrdering::Relaxed);
    }

    pub fn approximate_bytes(&self) -> u64 {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(AtomicOrdering::Relaxed)
    }

    /// The newest entry of `key` that `snap` sees.
    pub fn get(&self, key: &[u8], snap: Snap) -> Option<Entry> {
        let start = InternalKey {
            key: Bytes::copy_from_slice(key),
            seq: Reverse(snap.max()),
        };
        for e in self.map.range((Bound::Included(&start), Bound::Unbounded)) {
            if e.key().key.as_ref() != key {
                return None;
            }
            if snap.sees(e.key().seq.0, e.value().buffered) {
                return Some(to_entry(e.key(), e.value()));
            }
        }
        None
    }

    /// For each distinct key in `[start, end)` (end `None` = unbounded), the newest entry
    /// `snap` sees, in key order, at most `max_keys` keys. Returns whether it stopped
    /// early because of `max_keys`.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        snap: Snap,
        max_keys: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> bool {
        let lo = InternalKey {
            key: Bytes::copy_from_slice(start),
            seq: Reverse(u64::MAX),
        };
        let mut last_key: Option<Bytes> = None;
        let mut n = 0;
        let mut bytes = 0usize;
        for e in self.map.range(lo..) {
            let ik = e.key();
            if end.is_some_and(|end| ik.key.as_ref() >= end) {
                break;
            }
            if !snap.sees(ik.seq.0, e.value().buffered) {
                continue;
            }
            if last_key.as_ref() == Some(&ik.key) {
                continue;
            }
            if n == max_keys || bytes >= max_bytes {
                return true;
            }
            last_key = Some(ik.key.clone());
            let entry = to_entry(ik, e.value());
            bytes += entry.key.len() + entry.value.len();
            out.push(entry);
            n += 1;
        }
        false
    }

    /// Every entry in internal key order (for flush).
    pub fn all_entries(&self) -> Vec<Entry> {
        self.map
            .iter()
            .map(|e| to_entry(e.key(), e.value()))
            .collect()
    }
}

fn to_entry(k: &InternalKey, v: &MemValue) -> Entry {
    Entry {
        key: k.key.clone(),
        seq: k.seq.0,
        kind: v.kind,
        expires_at_ms: v.expires_at_ms,
        value: v.value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_visible_version_wins() {
        let m = Memtable::new(1);
        let at = |seq| Snap {
            durable: seq,
            buffered: 0,
        };
        m.insert(&Entry::put(&b"a"[..], 1, &b"v1"[..]), false);
        m.insert(&Entry::put(&b"a"[..], 2, &b"v2"[..]), false);
        m.insert(&Entry::delete(&b"b"[..], 3), false);
        assert_eq!(m.get(b"a", at(10)).unwrap().value, &b"v2"[..]);
        assert_eq!(m.get(b"a", at(1)).unwrap().value, &b"v1"[..]);
        assert!(m.get(b"a", at(0)).is_none());
        assert_eq!(m.get(b"b", at(10)).unwrap().kind, Kind::Delete);
        assert!(m.get(b"c", at(10)).is_none());
        let mut out = Vec::new();
        assert!(!m.scan(b"", None, at(10), 10, usize::MAX, &mut out));
        assert_eq!(out.len(), 2);
        out.clear();
        assert!(m.scan(b"", None, at(10), 1, usize::MAX, &mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(m.max_seq(), 3);
    }

    #[test]
    fn durable_writes_stay_invisible_until_durable_even_behind_a_buffered_one() {
        let m = Memtable::new(1);
        m.insert(&Entry::put(&b"k"[..], 5, &b"durable-old"[..]), false);
        m.insert(&Entry::put(&b"k"[..], 6, &b"durable-pending"[..]), false);
        m.insert(&Entry::put(&b"j"[..], 7, &b"buffered"[..]), true);
        let snap = Snap {
            durable: 5,
            buffered: 7,
        };
        assert_eq!(m.get(b"k", snap).unwrap().value, &b"durable-old"[..]);
        assert_eq!(m.get(b"j", snap).unwrap().value, &b"buffered"[..]);
        let mut out = Vec::new();
        m.scan(b"", None, snap, 10, usize::MAX, &mut out);
        let vals: Vec<_> = out.iter().map(|e| e.value.clone()).collect();
        assert_eq!(
            vals,
            vec![
                Bytes::from_static(b"buffered"),
                Bytes::from_static(b"durable-old")
            ]
        );
    }
}

//! Range scans over a snapshot, in chunks.
//!
//! Each chunk asks every source (memtables, each L0 SST, each level) for its first `n`
//! distinct keys from the cursor, newest visible version each. Keys up to the smallest "last
//! key" among sources that stopped early are complete in the merge; those are emitted and the
//! cursor moves past them. The scanner holds its view, so a flush or compaction during the
//! scan changes nothing it sees.

use crate::error::EngineResult;
use crate::memtable::Snap;
use crate::version::View;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_format::{Entry, Kind};

/// The smallest key greater than every key with `prefix`, or `None` if there is none
/// (the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xff {
            p.push(last + 1);
            return Some(Bytes::from(p));
        }
    }
    None
}

/// Most bytes (keys and values) one source contributes to one chunk. With the key bound
/// alone, a chunk of large values held `sources × n` of them at once (hundreds of MiB per scan
/// over 100 KiB values); with it, a chunk holds at most about `sources ×` this.
const SOURCE_CHUNK_BYTES: usize = 1 << 20;

/// A scan in progress.
#[derive(Debug)]
pub struct Scanner {
    view: Arc<View>,
    snap: Snap,
    cursor: Bytes,
    end: Option<Bytes>,
    done: bool,
    now: u64,
    /// User scans never see the store's own records (`txn::SYSTEM_PREFIX`).
    hide_system: bool,
    /// Only keys whose hash is in this range (a split partition's other half is left out).
    hash_range: Option<(u64, Option<u64>)>,
    /// When the view was taken, and how long it may be used (files it lists may be deleted
    /// by compaction's GC after a grace period: `docs/gc.md`).
    taken: strata_clock::Instant,
    max_age: Option<std::time::Duration>,
}

impl Scanner {
    /// A scan of `[start, end)` over `view` at `snap`; `clock` says when it starts (TTLs
    /// expire as of then, and the view's age counts from then).
    pub(crate) fn new(
        view: Arc<View>,
        snap: Snap,
        start: Bytes,
        end: Option<Bytes>,
        clock: &strata_clock::Clock,
    ) -> Self {
        let done = end.as_ref().is_some_and(|e| start >= *e);
        Scanner {
            view,
            snap,
            cursor: start,
            end,
            done,
            now: clock.unix_ms(),
            hide_system: true,
            hash_range: None,
            taken: clock.now(),
            max_age: None,
        }
    }

    /// Stops the scan with "snapshot too old" once its view is older than `age`.
    /// Stops the scan (`ABORTED`, snapshot too old) once its view is older than `age`.
    pub fn with_max_age(mut self, age: Option<std::time::Duration>) -> Self {
        self.max_age = age;
        self
    }

    /// Leaves out keys whose hash is outside `range` (`None`: none left out).
    /// Leaves out keys whose hash is outside `[start, end)` (a partition after a split).
    pub fn with_hash_range(mut self, range: Option<(u64, Option<u64>)>) -> Self {
        self.hash_range = range;
        self
    }

    /// A scan that includes the store's own records.
    pub(crate) fn new_system(
        view: Arc<View>,
        snap: Snap,
        start: Bytes,
        end: Option<Bytes>,
        clock: &strata_clock::Clock,
    ) -> Self {
        Scanner {
            hide_system: false,
            ..Self::new(view, snap, start, end, clock)
        }
    }

    /// Whether the scan is finished.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next live entries in key order: `(key, value, version)`. Returns an empty vector
    /// only at the end of the scan... or when a stretch held only deleted keys, so callers
    /// loop until [`Scanner::is_done`].
    pub async fn next_chunk(&mut self, n: usize) -> EngineResult<Vec<(Bytes, Bytes, u64)>> {
        Ok(self
            .next_entries(n)
            .await?
            .into_iter()
            .map(|e| (e.key, e.value, e.seq))
            .collect())
    }

    /// Like [`Scanner::next_chunk`], as entries (with their expiry).
    pub(crate) async fn next_entries(&mut self, n: usize) -> EngineResult<Vec<Entry>> {
        if self.done {
            return Ok(Vec::new());
        }
        if let Some(age) = self.max_age {
            if self.taken.elapsed() > age {
                return Err(crate::error::EngineError::SnapshotTooOld(format!(
                    "scan snapshot too old (over {} s): files it reads may have been compacted \
                     away; restart the scan after the last key received",
                    age.as_secs()
                )));
            }
        }
        let n = n.max(1);
        let end = self.end.as_deref();
        let mut merged: BTreeMap<Bytes, Entry> = BTreeMap::new();
        let mut bound: Option<Bytes> = None;
        let mut buf = Vec::new();
        let mut absorb = |buf: &mut Vec<Entry>, truncated: bool| {
            if truncated {
                if let Some(last) = buf.last() {
                    if bound.as_ref().is_none_or(|b| last.key < *b) {
                        bound = Some(last.key.clone());
                    }
                }
            }
            for e in buf.drain(..) {
                match merged.get(&e.key) {
                    Some(cur) if cur.seq >= e.seq => {}
                    _ => {
                        merged.insert(e.key.clone(), e);
                    }
                }
            }
        };
        let max_bytes = SOURCE_CHUNK_BYTES;
        for m in self.view.memtables() {
            let t = m.scan(&self.cursor, end, self.snap, n, max_bytes, &mut buf);
            absorb(&mut buf, t);
        }
        for sst in &self.view.version.l0 {
            let t = sst
                .scan(&self.cursor, end, self.snap.max(), n, max_bytes, &mut buf)
                .await?;
            absorb(&mut buf, t);
        }
        for level in &self.view.version.levels {
            let first =
                level.partition_point(|f| f.info.props.largest_key.as_ref() < self.cursor.as_ref());
            let mut remaining = n;
            let mut bytes_left = max_bytes;
            let mut truncated = false;
            for f in &level[first..] {
                if end.is_some_and(|e| f.info.props.smallest_key.as_ref() >= e) {
                    break;
                }
                let before = buf.len();
                let t = f
                    .scan(
                        &self.cursor,
                        end,
                        self.snap.max(),
                        remaining,
                        bytes_left,
                        &mut buf,
                    )
                    .await?;
                remaining -= buf.len() - before;
                let got: usize = buf[before..]
                    .iter()
                    .map(|e| e.key.len() + e.value.len())
                    .sum();
                bytes_left = bytes_left.saturating_sub(got);
                if t || remaining == 0 || bytes_left == 0 {
                    truncated = true;
                    break;
                }
            }
            absorb(&mut buf, truncated);
        }
        let mut out = Vec::new();
        for (k, e) in merged {
            if bound.as_ref().is_some_and(|b| k > *b) {
                break;
            }
            if self.hide_system && crate::txn::is_system_key(&k) {
                continue;
            }
            if let Some(r) = self.hash_range {
                if !strata_format::hash_in_range(xxhash_rust::xxh3::xxh3_64(&k), r) {
                    continue;
                }
            }
            if e.kind == Kind::Put && (e.expires_at_ms == 0 || e.expires_at_ms > self.now) {
                out.push(e);
            }
        }
        match bound {
            Some(b) => {
                let mut next = BytesMut::with_capacity(b.len() + 1);
                next.extend_from_slice(&b);
                next.extend_from_slice(&[0]);
                self.cursor = next.freeze();
                if self.end.as_ref().is_some_and(|e| self.cursor >= *e) {
                    self.done = true;
                }
            }
            None => self.done = true,
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_last_non_ff_byte() {
        assert_eq!(prefix_end(b"ab").as_deref(), Some(&b"ac"[..]));
        assert_eq!(prefix_end(b"a\xff").as_deref(), Some(&b"b"[..]));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}

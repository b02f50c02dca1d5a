//! Data blocks: runs of entries with prefix-compressed keys and restart points.
//!
//! Uncompressed payload (before the [`trailer`](super::trailer) envelope):
//!
//! ```text
//! entry*    : varint shared | varint unshared | varint value_len | varint seq | u8 kind
//!             | varint expires_at_ms | key[shared..] (unshared bytes) | value
//! restarts  : u32 offset (of an entry with shared = 0), one per restart point
//! u32 number of restart points
//! ```
//!
//! `shared` is the length of the prefix the key has in common with the previous entry's
//! key; it is 0 at every restart point, the first of which is offset 0.

use bytes::Bytes;

use crate::codec::{len_u32, put_u32, put_varint, Reader};
use crate::entry::{internal_cmp, Entry, Kind};
use crate::error::{corrupt, Result};
use crate::sst::trailer::unseal;

const WHAT: &str = "sst data block";

/// Upper bound on the key bytes one block may expand to; prefix compression lets a small
/// block name long keys, and a corrupt block must not turn that into a huge allocation.
const MAX_BLOCK_KEY_BYTES: usize = 1 << 30;

/// Accumulates the entries of one data block.
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    count: usize,
    last_key: Vec<u8>,
    restart_interval: usize,
}

impl BlockBuilder {
    pub(crate) fn new(restart_interval: usize) -> Self {
        BlockBuilder {
            buf: Vec::new(),
            restarts: Vec::new(),
            count: 0,
            last_key: Vec::new(),
            restart_interval: restart_interval.max(1),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size the block's payload would have if finished now.
    pub(crate) fn size(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    /// An upper bound on what adding `e` grows the payload by.
    pub(crate) fn entry_size_bound(e: &Entry) -> usize {
        // 5 varints of at most 10 bytes, the kind byte, one restart slot.
        5 * 10 + 1 + 4 + e.key.len() + e.value.len()
    }

    pub(crate) fn add(&mut self, e: &Entry) {
        let shared = if self.count.is_multiple_of(self.restart_interval) {
            self.restarts.push(len_u32(self.buf.len(), "data block"));
            0
        } else {
            self.last_key
                .iter()
                .zip(e.key.iter())
                .take_while(|(a, b)| a == b)
                .count()
        };
        let suffix = e.key.get(shared..).unwrap_or_default();
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, suffix.len() as u64);
        put_varint(&mut self.buf, e.value.len() as u64);
        put_varint(&mut self.buf, e.seq);
        self.buf.push(e.kind.as_u8());
        put_varint(&mut self.buf, e.expires_at_ms);
        self.buf.extend_from_slice(suffix);
        self.buf.extend_from_slice(&e.value);
        self.last_key.clear();
        self.last_key.extend_from_slice(&e.key);
        self.count += 1;
    }

    /// Returns the payload and resets the builder for the next block.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        out.reserve(4 * self.restarts.len() + 4);
        for r in &self.restarts {
            put_u32(&mut out, *r);
        }
        put_u32(&mut out, len_u32(self.restarts.len(), "restart count"));
        self.restarts.clear();
        self.count = 0;
        self.last_key.clear();
        out
    }
}

/// A decoded, verified data block.
#[derive(Debug, Clone)]
pub struct DataBlock {
    entries: Vec<Entry>,
}

/// Where one parsed entry lives before keys are materialized.
struct Parsed {
    key_at: usize,
    key_len: usize,
    seq: u64,
    kind: Kind,
    expires_at_ms: u64,
    value_at: usize,
    value_len: usize,
}

impl DataBlock {
    /// Decodes `raw`, exactly the bytes at a data block's [`BlockHandle`](crate::BlockHandle):
    /// verifies the checksum, decompresses, parses the entries and checks that they are in
    /// strictly increasing internal key order with consistent restart points.
    pub fn decode(raw: &[u8]) -> Result<DataBlock> {
        let payload = Bytes::from(unseal(raw, WHAT)?.into_owned());

        let (rest, count_bytes) = payload
            .split_last_chunk::<4>()
            .ok_or_else(|| corrupt(WHAT, "shorter than the restart count"))?;
        let n_restarts = u32::from_le_bytes(*count_bytes) as usize;
        let entries_len = n_restarts
            .checked_mul(4)
            .and_then(|n| rest.len().checked_sub(n))
            .ok_or_else(|| corrupt(WHAT, format!("{n_restarts} restart points do not fit")))?;
        if n_restarts == 0 {
            return Err(corrupt(WHAT, "no restart points"));
        }
        let (entry_bytes, restart_bytes) = rest.split_at(entries_len);
        let mut restarts = restart_bytes.chunks_exact(4).map(|c| {
            let mut a = [0u8; 4];
            a.copy_from_slice(c);
            u32::from_le_bytes(a) as usize
        });
        let mut next_restart = restarts.next();

        let mut keys: Vec<u8> = Vec::new();
        // A restart point per `restart_interval` (16 by default) entries; entries take at least
        // 6 bytes. Neither bound alone is a good guess for blocks of one huge value.
        let mut parsed: Vec<Parsed> =
            Vec::with_capacity(n_restarts.saturating_mul(16).min(entry_bytes.len() / 6));
        let mut r = Reader::new(entry_bytes, WHAT);
        while !r.is_empty() {
            let at = r.position();
            let shared = r.varint_usize("shared length")?;
            let unshared = r.varint_usize("unshared length")?;
            let value_len = r.varint_usize("value length")?;
            let seq = r.varint("seq")?;
            let kind_byte = r.u8("kind")?;
            let kind = Kind::from_u8(kind_byte)
                .ok_or_else(|| corrupt(WHAT, format!("unknown entry kind {kind_byte}")))?;
            let expires_at_ms = r.varint("expires_at_ms")?;
            let suffix = r.bytes(unshared, "key")?;
            let value_at = r.position();
            r.bytes(value_len, "value")?;

            let is_restart = match next_restart {
                Some(off) if off == at => {
                    if shared != 0 {
                        return Err(corrupt(
                            WHAT,
                            format!("restart entry at {at} shares a prefix"),
                        ));
                    }
                    next_restart = restarts.next();
                    true
                }
                Some(off) if off < at => {
                    return Err(corrupt(
                        WHAT,
                        format!("restart point {off} is not an entry"),
                    ));
                }
                _ => false,
            };
            if parsed.is_empty() && !is_restart {
                return Err(corrupt(WHAT, "first entry is not a restart point"));
            }

            let (key_at, key_len) = match parsed.last() {
                // Same key as the previous entry (another version): share its bytes.
                Some(prev) if unshared == 0 && shared == prev.key_len => {
                    (prev.key_at, prev.key_len)
                }
                Some(prev) => {
                    if shared > prev.key_len {
                        return Err(corrupt(
                            WHAT,
                            format!(
                                "shared length {shared} exceeds previous key length {}",
                                prev.key_len
                            ),
                        ));
                    }
                    let key_at = keys.len();
                    if key_at + shared + unshared > MAX_BLOCK_KEY_BYTES {
                        return Err(corrupt(WHAT, "keys expand beyond the limit"));
                    }
                    keys.extend_from_within(prev.key_at..prev.key_at + shared);
                    keys.extend_from_slice(suffix);
                    (key_at, shared + unshared)
                }
                None => {
                    if shared != 0 {
                        return Err(corrupt(WHAT, "first entry shares a prefix"));
                    }
                    keys.extend_from_slice(suffix);
                    (0, unshared)
                }
            };

            if let Some(prev) = parsed.last() {
                let prev_key = keys
                    .get(prev.key_at..prev.key_at + prev.key_len)
                    .unwrap_or_default();
                let key = keys.get(key_at..key_at + key_len).unwrap_or_default();
                if internal_cmp(prev_key, prev.seq, key, seq) != std::cmp::Ordering::Less {
                    return Err(corrupt(
                        WHAT,
                        format!("entry at {at} is out of internal key order"),
                    ));
                }
            }
            parsed.push(Parsed {
                key_at,
                key_len,
                seq,
                kind,
                expires_at_ms,
                value_at,
                value_len,
            });
        }
        if parsed.is_empty() {
            return Err(corrupt(WHAT, "no entries"));
        }
        if let Some(off) = next_restart {
            return Err(corrupt(
                WHAT,
                format!("restart point {off} is past the last entry"),
            ));
        }

        let keys = Bytes::from(keys);
        let entries = parsed
            .into_iter()
            .map(|p| Entry {
                key: keys.slice(p.key_at..p.key_at + p.key_len),
                seq: p.seq,
                kind: p.kind,
                expires_at_ms: p.expires_at_ms,
                value: payload.slice(p.value_at..p.value_at + p.value_len),
            })
            .collect();
        Ok(DataBlock { entries })
    }

    /// The block's entries, in internal key order (never empty).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Takes the entries out of the block.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a block holds at least one entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Position of the first entry with internal key >= (`key`, `seq`): its key is greater
    /// than `key`, or equal with `entry.seq <= seq`. Use `seq = u64::MAX` for the first entry
    /// of `key`. Returns `entries().len()` when every entry is smaller.
    pub fn seek(&self, key: &[u8], seq: u64) -> usize {
        self.entries
            .partition_point(|e| internal_cmp(&e.key, e.seq, key, seq) == std::cmp::Ordering::Less)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::varint_len;
    use crate::sst::options::Compression;
    use crate::sst::trailer::Compressor;

    /// Exact encoded size of `e`'s header varints (used by tests of the size bound).
    fn entry_header_len(shared: usize, e: &Entry) -> usize {
        varint_len(shared as u64)
            + varint_len((e.key.len() - shared) as u64)
            + varint_len(e.value.len() as u64)
            + varint_len(e.seq)
            + 1
            + varint_len(e.expires_at_ms)
    }

    fn seal(payload: &[u8], c: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        Compressor::default().seal(&mut out, payload, c);
        out
    }

    fn entries() -> Vec<Entry> {
        let mut v = Vec::new();
        for i in 0..50u32 {
            let key = format!("key{:04}", i / 3);
            let seq = 1000 - u64::from(i % 3);
            let mut e = if i % 5 == 0 {
                Entry::delete(key, seq)
            } else {
                Entry::put(key, seq, format!("value{i}"))
            };
            if i % 4 == 0 {
                e.expires_at_ms = 1_700_000_000_000 + u64::from(i);
            }
            v.push(e);
        }
        v.sort_by(Entry::internal_cmp);
        v
    }

    #[test]
    fn block_round_trips_with_every_restart_interval() {
        let es = entries();
        for interval in [0, 1, 2, 3, 16, 100] {
            let mut b = BlockBuilder::new(interval);
            for e in &es {
                let before = b.size();
                b.add(e);
                assert!(b.size() - before <= BlockBuilder::entry_size_bound(e));
            }
            let payload = b.finish();
            assert!(b.is_empty());
            for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
                let block = DataBlock::decode(&seal(&payload, c)).unwrap();
                assert_eq!(block.entries(), &es[..]);
            }
        }
    }

    #[test]
    fn header_len_matches_encoding() {
        let e = Entry::put(vec![1u8; 200], u64::MAX, vec![0u8; 300]);
        let mut b = BlockBuilder::new(16);
        b.add(&e);
        assert_eq!(b.buf.len(), entry_header_len(0, &e) + 500);
    }

    #[test]
    fn seek_finds_first_at_or_after() {
        let es = entries();
        let mut b = BlockBuilder::new(4);
        es.iter().for_each(|e| b.add(e));
        let block = DataBlock::decode(&seal(&b.finish(), Compression::None)).unwrap();
        assert_eq!(block.seek(b"", u64::MAX), 0);
        assert_eq!(block.seek(b"zzz", 0), es.len());
        assert_eq!(block.seek(b"key0001", u64::MAX), 3);
        assert_eq!(block.seek(b"key0001", 999), 4);
        assert_eq!(block.seek(b"key0001", 0), 6);
        assert_eq!(block.seek(b"key0000a", u64::MAX), 3);
    }

    /// Builds a payload by hand and seals it uncompressed, so structural checks are reached.
    fn raw_block(entries: &[(usize, &[u8], u64)], restarts: &[u32]) -> Vec<u8> {
        let mut p = Vec::new();
        for (shared, suffix, seq) in entries {
            put_varint(&mut p, *shared as u64);
            put_varint(&mut p, suffix.len() as u64);
            put_varint(&mut p, 0);
            put_varint(&mut p, *seq);
            p.push(1);
            put_varint(&mut p, 0);
            p.extend_from_slice(suffix);
        }
        for r in restarts {
            put_u32(&mut p, *r);
        }
        put_u32(&mut p, restarts.len() as u32);
        seal(&p, Compression::None)
    }

    #[test]
    fn structural_damage_with_valid_crc_is_rejected() {
        assert!(DataBlock::decode(&raw_block(&[(0, b"a", 1), (0, b"b", 1)], &[0])).is_ok());
        // No entries.
        assert!(DataBlock::decode(&raw_block(&[], &[0])).is_err());
        // No restarts.
        assert!(DataBlock::decode(&raw_block(&[(0, b"a", 1)], &[])).is_err());
        // First restart not at offset 0.
        assert!(DataBlock::decode(&raw_block(&[(0, b"a", 1), (0, b"b", 1)], &[7])).is_err());
        // Restart not at an entry boundary.
        assert!(DataBlock::decode(&raw_block(&[(0, b"a", 1), (0, b"b", 1)], &[0, 2])).is_err());
        // Restart entry with a shared prefix.
        assert!(DataBlock::decode(&raw_block(&[(0, b"ab", 1), (1, b"c", 1)], &[0, 8])).is_err());
        // Shared longer than the previous key.
        assert!(DataBlock::decode(&raw_block(&[(0, b"a", 1), (5, b"c", 1)], &[0])).is_err());
        // Out of order keys, and equal internal keys.
        assert!(DataBlock::decode(&raw_block(&[(0, b"b", 1), (0, b"a", 1)], &[0])).is_err());
        assert!(DataBlock::decode(&raw_block(&[(0, b"a", 1), (1, b"", 1)], &[0])).is_err());
        assert!(DataBlock::decode(&raw_block(&[(0, b"a", 1), (1, b"", 2)], &[0])).is_err());
        assert!(DataBlock::decode(&raw_block(&[(0, b"a", 2), (1, b"", 1)], &[0])).is_ok());
        // Restart count larger than the block.
        let mut p = vec![0u8; 4];
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(DataBlock::decode(&seal(&p, Compression::None)).is_err());
    }
}

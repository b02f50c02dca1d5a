//! The index block: one entry per data block, naming the block's last (largest) user key.
//!
//! Payload (before the [`trailer`](super::trailer) envelope):
//! `varint count | (varint key_len | key | varint offset | varint len) * count`.
//! Data blocks are contiguous from offset 0, in index order.

use bytes::Bytes;

use crate::codec::{put_varint, Reader};
use crate::error::{corrupt, Result};
use crate::sst::footer::BlockHandle;
use crate::sst::trailer::{unseal, BLOCK_TRAILER_LEN};

const WHAT: &str = "sst index";

/// Encodes the index payload.
pub(crate) fn encode_index(blocks: &[(Bytes, BlockHandle)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, blocks.len() as u64);
    for (key, h) in blocks {
        put_varint(&mut out, key.len() as u64);
        out.extend_from_slice(key);
        put_varint(&mut out, h.offset);
        put_varint(&mut out, h.len);
    }
    out
}

/// The decoded index.
#[derive(Debug, Clone)]
pub struct SstIndex {
    /// Per data block, in order: its last user key and its handle.
    pub blocks: Vec<(Bytes, BlockHandle)>,
}

impl SstIndex {
    /// Decodes `raw`, exactly the bytes at the footer's index handle. Checks the checksum,
    /// that last keys never decrease, and that the data blocks are contiguous from offset 0.
    pub fn decode(raw: &[u8]) -> Result<SstIndex> {
        let payload = Bytes::from(unseal(raw, WHAT)?.into_owned());
        let mut r = Reader::new(&payload, WHAT);
        let count = r.varint_usize("block count")?;
        if count == 0 {
            return Err(corrupt(WHAT, "no data blocks"));
        }
        // Each entry takes at least 4 bytes; don't trust `count` for the allocation.
        let mut blocks: Vec<(Bytes, BlockHandle)> =
            Vec::with_capacity(count.min(r.remaining() / 4));
        let mut next_offset = 0u64;
        for i in 0..count {
            let key_len = r.varint_usize("key length")?;
            let key_at = r.position();
            r.bytes(key_len, "key")?;
            let key = payload.slice(key_at..key_at + key_len);
            let h = BlockHandle {
                offset: r.varint("block offset")?,
                len: r.varint("block length")?,
            };
            if h.offset != next_offset || h.len < BLOCK_TRAILER_LEN as u64 {
                return Err(corrupt(
                    WHAT,
                    format!("block {i} handle {h:?} does not follow offset {next_offset}"),
                ));
            }
            next_offset = h
                .offset
                .checked_add(h.len)
                .ok_or_else(|| corrupt(WHAT, "block end overflows"))?;
            if let Some((prev, _)) = blocks.last() {
                if key < *prev {
                    return Err(corrupt(WHAT, format!("block {i} last key goes backwards")));
                }
            }
            blocks.push((key, h));
        }
        r.finish()?;
        Ok(SstIndex { blocks })
    }

    /// Index of the first block that may contain `key`: the first whose last key is
    /// `>= key`. `None` when `key` is greater than every key of the SST.
    ///
    /// Versions of one key can span several consecutive blocks; a reader looking for an
    /// older version continues into the following blocks.
    pub fn find_block(&self, key: &[u8]) -> Option<usize> {
        let i = self.blocks.partition_point(|(last, _)| last.as_ref() < key);
        (i < self.blocks.len()).then_some(i)
    }

    /// Where the data blocks end.
    pub fn data_end(&self) -> u64 {
        self.blocks.last().map_or(0, |(_, h)| h.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sst::options::Compression;
    use crate::sst::trailer::Compressor;

    fn seal(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Compressor::default().seal(&mut out, payload, Compression::None);
        out
    }

    fn h(offset: u64, len: u64) -> BlockHandle {
        BlockHandle { offset, len }
    }

    #[test]
    fn round_trip_and_find() {
        let blocks = vec![
            (Bytes::from_static(b"b"), h(0, 10)),
            (Bytes::from_static(b"d"), h(10, 20)),
            (Bytes::from_static(b"d"), h(30, 5)),
            (Bytes::from_static(b"f"), h(35, 7)),
        ];
        let idx = SstIndex::decode(&seal(&encode_index(&blocks))).unwrap();
        assert_eq!(idx.blocks, blocks);
        assert_eq!(idx.data_end(), 42);
        assert_eq!(idx.find_block(b""), Some(0));
        assert_eq!(idx.find_block(b"b"), Some(0));
        assert_eq!(idx.find_block(b"c"), Some(1));
        assert_eq!(idx.find_block(b"d"), Some(1));
        assert_eq!(idx.find_block(b"e"), Some(3));
        assert_eq!(idx.find_block(b"f"), Some(3));
        assert_eq!(idx.find_block(b"g"), None);
    }

    #[test]
    fn inconsistent_indexes_are_rejected() {
        let bad = [
            vec![],
            vec![(Bytes::from_static(b"b"), h(1, 10))],
            vec![(Bytes::from_static(b"b"), h(0, 4))],
            vec![
                (Bytes::from_static(b"b"), h(0, 10)),
                (Bytes::from_static(b"c"), h(11, 10)),
            ],
            vec![
                (Bytes::from_static(b"b"), h(0, 10)),
                (Bytes::from_static(b"a"), h(10, 10)),
            ],
            vec![
                (Bytes::from_static(b"b"), h(0, u64::MAX)),
                (Bytes::from_static(b"c"), h(u64::MAX, 10)),
            ],
        ];
        for blocks in bad {
            assert!(
                SstIndex::decode(&seal(&encode_index(&blocks))).is_err(),
                "{blocks:?}"
            );
        }
        let mut p = encode_index(&[(Bytes::from_static(b"b"), h(0, 10))]);
        p.push(0);
        assert!(SstIndex::decode(&seal(&p)).is_err());
        let mut p = Vec::new();
        put_varint(&mut p, u64::MAX);
        assert!(SstIndex::decode(&seal(&p)).is_err());
    }
}

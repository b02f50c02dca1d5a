//! The cache key: one immutable byte range of one immutable object.

use foyer::{Code, Error};

/// Identifies an immutable byte range of an immutable object.
///
/// `store_uid` is a random id of the object store instance, so a recreated store never
/// reads another store's blocks from a persisted disk tier: a store recreated under the
/// same bucket and prefix reuses SST ids, and without the uid a warm disk tier would
/// serve the old store's bytes for them.
///
/// The key is compared in full on every lookup, in memory and on disk (foyer's disk
/// index is keyed by a 64-bit hash, but the stored key is decoded and compared before a
/// value is returned), so a hash collision is a miss, never another block's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Random id of the object store instance (see the type docs).
    pub store_uid: u64,
    /// Partition the SST belongs to.
    pub partition: u32,
    /// SST id within the partition.
    pub sst_id: u64,
    /// Byte offset of the cached range within the SST object.
    pub offset: u64,
}

impl BlockKey {
    /// Length of the on-disk encoding: four little-endian integers, no framing.
    pub(crate) const ENCODED_LEN: usize = 8 + 4 + 8 + 8;

    fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let mut buf = [0u8; Self::ENCODED_LEN];
        let parts: [&[u8]; 4] = [
            &self.store_uid.to_le_bytes(),
            &self.partition.to_le_bytes(),
            &self.sst_id.to_le_bytes(),
            &self.offset.to_le_bytes(),
        ];
        let mut at = 0;
        for part in parts {
            if let Some(dst) = buf.get_mut(at..at + part.len()) {
                dst.copy_from_slice(part);
            }
            at += part.len();
        }
        buf
    }

    fn from_bytes(buf: &[u8; Self::ENCODED_LEN]) -> Self {
        let (store_uid, rest) = buf.split_at(8);
        let (partition, rest) = rest.split_at(4);
        let (sst_id, offset) = rest.split_at(8);
        let u64_of = |s: &[u8]| {
            let mut b = [0u8; 8];
            b.copy_from_slice(s);
            u64::from_le_bytes(b)
        };
        let mut p = [0u8; 4];
        p.copy_from_slice(partition);
        Self {
            store_uid: u64_of(store_uid),
            partition: u32::from_le_bytes(p),
            sst_id: u64_of(sst_id),
            offset: u64_of(offset),
        }
    }
}

/// foyer's disk encoding of the key. Written by hand rather than through foyer's `serde`
/// feature so the on-disk layout does not depend on which features the build unifies.
impl Code for BlockKey {
    fn encode(&self, writer: &mut impl std::io::Write) -> foyer::Result<()> {
        writer.write_all(&self.to_bytes()).map_err(Error::io_error)
    }

    fn decode(reader: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut buf = [0u8; Self::ENCODED_LEN];
        reader.read_exact(&mut buf).map_err(Error::io_error)?;
        Ok(Self::from_bytes(&buf))
    }

    fn estimated_size(&self) -> usize {
        Self::ENCODED_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_code_round_trips() {
        let key = BlockKey {
            store_uid: 0x0102_0304_0506_0708,
            partition: u32::MAX - 1,
            sst_id: 42,
            offset: u64::MAX,
        };
        let mut buf = Vec::new();
        key.encode(&mut buf).unwrap();
        assert_eq!(buf.len(), key.estimated_size());
        let back = BlockKey::decode(&mut buf.as_slice()).unwrap();
        assert_eq!(back, key);
    }

    #[test]
    fn key_decode_of_truncated_input_is_an_error() {
        let buf = [0u8; BlockKey::ENCODED_LEN - 1];
        assert!(BlockKey::decode(&mut buf.as_slice()).is_err());
    }
}

//! The cached value: raw bytes of one SST block (or index / filter block).

use bytes::Bytes;
use foyer::{Code, Error, ErrorKind};

/// Bytes of one cached block, as foyer stores them.
///
/// A newtype rather than `Bytes` itself so the disk encoding is ours: foyer's own `Code`
/// impl for `Bytes` disappears when anything in the build turns on foyer's `serde` feature.
#[derive(Debug, Clone)]
pub(crate) struct CachedBlock(pub(crate) Bytes);

impl CachedBlock {
    /// Bytes the disk encoding adds in front of the block: its length as a `u64`.
    pub(crate) const LEN_PREFIX: usize = 8;

    /// Upper bound on a decoded length, far above any block the disk tier can hold, so a
    /// corrupt length can never turn into a huge allocation.
    const MAX_DECODED_LEN: u64 = 1 << 30;
}

impl Code for CachedBlock {
    fn encode(&self, writer: &mut impl std::io::Write) -> foyer::Result<()> {
        writer
            .write_all(&(self.0.len() as u64).to_le_bytes())
            .map_err(Error::io_error)?;
        writer.write_all(&self.0).map_err(Error::io_error)
    }

    fn decode(reader: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut len = [0u8; Self::LEN_PREFIX];
        reader.read_exact(&mut len).map_err(Error::io_error)?;
        let len = u64::from_le_bytes(len);
        if len > Self::MAX_DECODED_LEN {
            return Err(
                Error::new(ErrorKind::Parse, "cached block length out of range")
                    .with_context("len", len),
            );
        }
        let mut buf = vec![0u8; len as usize];
        reader.read_exact(&mut buf).map_err(Error::io_error)?;
        Ok(Self(Bytes::from(buf)))
    }

    fn estimated_size(&self) -> usize {
        Self::LEN_PREFIX + self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_code_round_trips() {
        for len in [0usize, 1, 4096, 1 << 20] {
            let v = CachedBlock(Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>()));
            let mut buf = Vec::new();
            v.encode(&mut buf).unwrap();
            assert_eq!(buf.len(), v.estimated_size());
            let back = CachedBlock::decode(&mut buf.as_slice()).unwrap();
            assert_eq!(back.0, v.0);
        }
    }

    #[test]
    fn value_decode_rejects_truncation_and_absurd_lengths() {
        let v = CachedBlock(Bytes::from_static(b"hello"));
        let mut buf = Vec::new();
        v.encode(&mut buf).unwrap();
        buf.pop();
        assert!(CachedBlock::decode(&mut buf.as_slice()).is_err());

        let huge = u64::MAX.to_le_bytes();
        assert!(CachedBlock::decode(&mut huge.as_slice()).is_err());
    }

    #[test]
    fn value_encode_into_a_short_buffer_is_a_size_limit_error() {
        let v = CachedBlock(Bytes::from(vec![7u8; 100]));
        let mut small = [0u8; 50];
        let err = v.encode(&mut small.as_mut_slice()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BufferSizeLimit);
    }
}

//! The fixed-size footer at the very end of every SST.
//!
//! ```text
//! 0   16  index handle  (u64 offset, u64 len)
//! 16  16  filter handle
//! 32  16  props handle
//! 48  4   u32 format version
//! 52  4   u32 crc32c of bytes 0..52
//! 56  8   magic "STRATSST"
//! ```

use crate::codec::{put_u32, put_u64, Reader};
use crate::error::{check_crc, corrupt, FormatError, Result};
use crate::sst::trailer::BLOCK_TRAILER_LEN;

/// Magic at the very end of every SST.
pub const SST_MAGIC: [u8; 8] = *b"STRATSST";
/// The SST format version this code writes and reads.
pub const SST_FORMAT_VERSION: u32 = 1;
/// Size of the footer, which occupies the last bytes of the object.
pub const SST_FOOTER_LEN: usize = 64;

const WHAT: &str = "sst footer";

/// Where a block lives in the SST object (the block's bytes include its checksum trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHandle {
    /// Byte offset from the start of the object.
    pub offset: u64,
    /// Length in bytes, checksum trailer included.
    pub len: u64,
}

impl BlockHandle {
    /// One past the last byte of the block.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    /// The block's bytes as a `usize` range, for slicing an in-memory object.
    pub fn range(&self) -> std::ops::Range<usize> {
        let start = usize::try_from(self.offset).unwrap_or(usize::MAX);
        let end = usize::try_from(self.end()).unwrap_or(usize::MAX);
        start..end
    }

    fn decode(r: &mut Reader<'_>, field: &str) -> Result<BlockHandle> {
        let h = BlockHandle {
            offset: r.u64(field)?,
            len: r.u64(field)?,
        };
        if h.offset.checked_add(h.len).is_none() || h.len < BLOCK_TRAILER_LEN as u64 {
            return Err(corrupt(WHAT, format!("{field} handle {h:?} is invalid")));
        }
        Ok(h)
    }
}

/// The decoded footer.
#[derive(Debug, Clone)]
pub struct SstFooter {
    /// Format version of the SST.
    pub format_version: u32,
    /// The index block.
    pub index: BlockHandle,
    /// The bloom filter block.
    pub filter: BlockHandle,
    /// The properties block.
    pub props: BlockHandle,
}

impl SstFooter {
    /// Decodes the footer; `tail` is exactly the last [`SST_FOOTER_LEN`] bytes of the SST.
    ///
    /// Checks the magic, the version, the checksum, and that the filter, index and props
    /// blocks are laid out back to back in that order after at least one data block.
    pub fn decode(tail: &[u8]) -> Result<SstFooter> {
        if tail.len() != SST_FOOTER_LEN {
            return Err(corrupt(
                WHAT,
                format!("{} bytes, expected {SST_FOOTER_LEN}", tail.len()),
            ));
        }
        let mut r = Reader::new(tail, WHAT);
        let covered: [u8; 52] = r.array("footer")?;
        let expected = r.u32("crc")?;
        let magic: [u8; 8] = r.array("magic")?;
        if magic != SST_MAGIC {
            return Err(corrupt(WHAT, format!("bad magic {magic:02x?}")));
        }
        let mut f = Reader::new(&covered, WHAT);
        let index = BlockHandle::decode(&mut f, "index")?;
        let filter = BlockHandle::decode(&mut f, "filter")?;
        let props = BlockHandle::decode(&mut f, "props")?;
        let format_version = f.u32("format version")?;
        if format_version != SST_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "sst",
                version: format_version,
            });
        }
        check_crc(WHAT, expected, crc32c::crc32c(&covered))?;
        if filter.offset == 0 || filter.end() != index.offset || index.end() != props.offset {
            return Err(corrupt(
                WHAT,
                format!("blocks out of place: filter {filter:?}, index {index:?}, props {props:?}"),
            ));
        }
        Ok(SstFooter {
            format_version,
            index,
            filter,
            props,
        })
    }

    /// Encodes the footer.
    pub fn encode(&self) -> [u8; SST_FOOTER_LEN] {
        let mut out = Vec::with_capacity(SST_FOOTER_LEN);
        for h in [self.index, self.filter, self.props] {
            put_u64(&mut out, h.offset);
            put_u64(&mut out, h.len);
        }
        put_u32(&mut out, self.format_version);
        let crc = crc32c::crc32c(&out);
        put_u32(&mut out, crc);
        out.extend_from_slice(&SST_MAGIC);
        let mut a = [0u8; SST_FOOTER_LEN];
        a.copy_from_slice(&out);
        a
    }

    /// The filter, index and props blocks as one span (they are contiguous), so a reader can
    /// fetch all metadata of an SST with one ranged GET.
    pub fn meta_span(&self) -> BlockHandle {
        BlockHandle {
            offset: self.filter.offset,
            len: self.props.end().saturating_sub(self.filter.offset),
        }
    }

    /// Where the data blocks end (the first byte of the filter block).
    pub fn data_end(&self) -> u64 {
        self.filter.offset
    }

    /// The object size this footer implies.
    pub fn file_size(&self) -> u64 {
        self.props.end().saturating_add(SST_FOOTER_LEN as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer() -> SstFooter {
        SstFooter {
            format_version: SST_FORMAT_VERSION,
            filter: BlockHandle {
                offset: 100,
                len: 20,
            },
            index: BlockHandle {
                offset: 120,
                len: 30,
            },
            props: BlockHandle {
                offset: 150,
                len: 90,
            },
        }
    }

    #[test]
    fn round_trip_and_every_flip() {
        let raw = footer().encode();
        let back = SstFooter::decode(&raw).unwrap();
        assert_eq!(back.index, footer().index);
        assert_eq!(back.filter, footer().filter);
        assert_eq!(back.props, footer().props);
        assert_eq!(
            back.meta_span(),
            BlockHandle {
                offset: 100,
                len: 140
            }
        );
        assert_eq!(back.file_size(), 240 + 64);
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut bad = raw;
                bad[i] ^= 1 << bit;
                assert!(SstFooter::decode(&bad).is_err(), "flip at {i} bit {bit}");
            }
        }
        for len in 0..raw.len() {
            assert!(SstFooter::decode(&raw[..len]).is_err());
        }
    }

    #[test]
    fn misplaced_blocks_are_rejected() {
        let mut f = footer();
        f.index.offset += 1;
        assert!(SstFooter::decode(&f.encode()).is_err());
        let mut f = footer();
        f.format_version = 2;
        assert!(matches!(
            SstFooter::decode(&f.encode()),
            Err(FormatError::UnsupportedVersion { version: 2, .. })
        ));
    }
}

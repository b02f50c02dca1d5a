//! Sorted string tables: immutable objects holding entries in internal key order.
//!
//! ```text
//! data block 0 .. data block n-1 | filter block | index block | props block | footer
//! ```
//!
//! Every block is stored in a checksummed envelope ([`trailer`]); the fixed-size
//! [`footer`] at the end locates the filter, index and props blocks; the index locates the
//! data blocks. See `docs/format.md` for the byte-by-byte tables.

mod block;
mod bloom;
mod builder;
mod footer;
mod index;
mod options;
mod props;
mod reader;
mod trailer;

pub use block::DataBlock;
pub use bloom::BloomFilter;
pub use builder::SstBuilder;
pub use footer::{BlockHandle, SstFooter, SST_FOOTER_LEN, SST_FORMAT_VERSION, SST_MAGIC};
pub use index::SstIndex;
pub use options::{Compression, SstOptions};
pub use props::{decode_props, SstProps};
pub use reader::read_all_entries;
pub use trailer::BLOCK_TRAILER_LEN;

pub(crate) use props::{encode_props_payload, read_props_payload};

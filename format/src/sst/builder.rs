//! Writes an SST object from entries in internal key order.

use std::cmp::Ordering;

use bytes::Bytes;

use crate::entry::{internal_cmp, Entry, Kind};
use crate::error::{FormatError, Result};
use crate::sst::block::BlockBuilder;
use crate::sst::bloom::{bloom_hash, build_bloom};
use crate::sst::footer::{BlockHandle, SstFooter, SST_FOOTER_LEN, SST_FORMAT_VERSION};
use crate::sst::index::encode_index;
use crate::sst::options::{Compression, SstOptions};
use crate::sst::props::{encode_props_payload, props_payload_len, SstProps};
use crate::sst::trailer::{Compressor, BLOCK_TRAILER_LEN};

/// Builds one SST. Feed entries with [`add`](Self::add), then [`finish`](Self::finish)
/// returns the object's bytes and its properties. A large SST can be written as it fills:
/// [`take_written`](Self::take_written) hands over the finished blocks so far (the object's
/// next bytes, in order), and `finish` then returns only the rest.
pub struct SstBuilder {
    opts: SstOptions,
    /// The object's bytes from offset `taken` on (everything before was handed over).
    out: Vec<u8>,
    /// Bytes handed over by `take_written`: block offsets are `taken + out.len()`.
    taken: u64,
    block: BlockBuilder,
    compressor: Compressor,
    index: Vec<(Bytes, BlockHandle)>,
    key_hashes: Vec<u64>,
    /// Key and seq of the last entry added (None before the first).
    last: Option<(Bytes, u64)>,
    props: SstProps,
}

impl SstBuilder {
    /// A builder whose output buffer is reserved for about `bytes` up front: an SST built by
    /// doubling a `Vec` holds up to twice its size at its largest (pages reserved but never
    /// written are not resident).
    pub fn with_capacity(opts: SstOptions, bytes: usize) -> Self {
        let mut b = SstBuilder::new(opts);
        b.out.reserve_exact(bytes);
        b
    }

    /// A builder with the given options.
    pub fn new(opts: SstOptions) -> Self {
        let block = BlockBuilder::new(opts.restart_interval);
        SstBuilder {
            opts,
            out: Vec::new(),
            taken: 0,
            block,
            compressor: Compressor::default(),
            index: Vec::new(),
            key_hashes: Vec::new(),
            last: None,
            props: SstProps {
                smallest_key: Bytes::new(),
                largest_key: Bytes::new(),
                min_seq: u64::MAX,
                max_seq: 0,
                entries: 0,
                tombstones: 0,
                expiring: 0,
                max_expires_at_ms: 0,
                data_bytes: 0,
                file_size: 0,
            },
        }
    }

    /// Appends an entry. Entries must arrive in strictly increasing internal key order (key
    /// ascending, then seq descending); otherwise this returns [`FormatError::Invalid`] and
    /// the builder is unchanged.
    pub fn add(&mut self, e: &Entry) -> Result<()> {
        let new_key = match &self.last {
            None => true,
            Some((key, seq)) => {
                if internal_cmp(key, *seq, &e.key, e.seq) != Ordering::Less {
                    return Err(FormatError::Invalid(format!(
                        "sst entries out of order: ({:?}, {seq}) then ({:?}, {})",
                        key, e.key, e.seq
                    )));
                }
                key != &e.key
            }
        };

        let bound = BlockBuilder::entry_size_bound(e);
        if !self.block.is_empty() && self.block.size() + bound > self.opts.block_size {
            self.flush_block();
        }
        self.block.add(e);

        let p = &mut self.props;
        if p.entries == 0 {
            p.smallest_key = e.key.clone();
        }
        p.largest_key = e.key.clone();
        p.min_seq = p.min_seq.min(e.seq);
        p.max_seq = p.max_seq.max(e.seq);
        p.entries += 1;
        if e.kind == Kind::Delete {
            p.tombstones += 1;
        }
        if e.expires_at_ms != 0 {
            p.expiring += 1;
            p.max_expires_at_ms = p.max_expires_at_ms.max(e.expires_at_ms);
        }
        p.data_bytes += (e.key.len() + e.value.len()) as u64;
        if new_key {
            self.key_hashes.push(bloom_hash(&e.key));
        }
        self.last = Some((e.key.clone(), e.seq));

        if self.block.size() >= self.opts.block_size {
            self.flush_block();
        }
        Ok(())
    }

    /// True when no entry was added.
    pub fn is_empty(&self) -> bool {
        self.props.entries == 0
    }

    /// Bytes written so far, including the pending block (uncompressed).
    pub fn estimated_size(&self) -> usize {
        let pending = if self.block.is_empty() {
            0
        } else {
            self.block.size()
        };
        self.taken as usize + self.out.len() + pending
    }

    /// Hands over the object's bytes written so far (whole blocks, in object order) once
    /// they are at least `min` bytes; `None` below that. The output buffer keeps its
    /// capacity for the next bytes, so a builder streamed this way holds about `min` bytes
    /// however large its SST grows.
    pub fn take_written(&mut self, min: usize) -> Option<Bytes> {
        if self.out.is_empty() || self.out.len() < min {
            return None;
        }
        let cap = self.out.capacity();
        let part = std::mem::replace(&mut self.out, Vec::with_capacity(cap));
        self.taken += part.len() as u64;
        Some(Bytes::from(part))
    }

    /// Object offset of the next byte written.
    fn offset(&self) -> u64 {
        self.taken + self.out.len() as u64
    }

    fn flush_block(&mut self) {
        if self.block.is_empty() {
            return;
        }
        let payload = self.block.finish();
        let offset = self.offset();
        let len = self
            .compressor
            .seal(&mut self.out, &payload, self.opts.compression);
        let last_key = self
            .last
            .as_ref()
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        self.index.push((
            last_key,
            BlockHandle {
                offset,
                len: len as u64,
            },
        ));
    }

    /// Writes the filter, index, props and footer and returns the SST (its bytes after any
    /// handed over by [`take_written`](Self::take_written)) and its properties.
    /// Returns [`FormatError::Invalid`] when no entry was added.
    pub fn finish(mut self) -> Result<(Bytes, SstProps)> {
        if self.is_empty() {
            return Err(FormatError::Invalid(
                "an SST needs at least one entry".into(),
            ));
        }
        self.flush_block();

        let filter = self.seal_meta(&build_bloom(&self.key_hashes, self.opts.bloom_bits_per_key));
        let index = self.seal_meta(&encode_index(&self.index));

        let props_offset = self.offset();
        let props_len = (props_payload_len(&self.props) + BLOCK_TRAILER_LEN) as u64;
        self.props.file_size = props_offset + props_len + SST_FOOTER_LEN as u64;
        let mut payload = Vec::with_capacity(props_payload_len(&self.props));
        encode_props_payload(&self.props, &mut payload);
        let props = self.seal_meta(&payload);
        debug_assert_eq!(props.len, props_len);

        let footer = SstFooter {
            format_version: SST_FORMAT_VERSION,
            index,
            filter,
            props,
        };
        self.out.extend_from_slice(&footer.encode());
        debug_assert_eq!(self.offset(), self.props.file_size);
        // The returned `Bytes` keeps the whole allocation alive for as long as any slice of it
        // lives: hand back what a reservation or doubling left over (glibc shrinks a large,
        // mmapped buffer in place).
        // (Shrunk when the unused part is over a sixteenth of the content.)
        if self.out.capacity() - self.out.len() > self.out.len() / 16 {
            self.out.shrink_to_fit();
        }
        Ok((Bytes::from(self.out), self.props))
    }

    /// Appends an uncompressed metadata block.
    fn seal_meta(&mut self, payload: &[u8]) -> BlockHandle {
        let offset = self.offset();
        let len = self
            .compressor
            .seal(&mut self.out, payload, Compression::None);
        BlockHandle {
            offset,
            len: len as u64,
        }
    }
}

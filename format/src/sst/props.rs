//! The properties block: what the manifest and compaction planner know about an SST
//! without reading its data.
//!
//! Payload (before the [`trailer`](super::trailer) envelope), all little-endian:
//!
//! ```text
//! 0   8  min_seq          8   8  max_seq         16  8  entries       24  8  tombstones
//! 32  8  expiring         40  8  max_expires_at_ms                    48  8  data_bytes
//! 56  8  file_size        64  4  smallest_key len, then the key; u32 largest_key len, key
//! ```
//!
//! The same payload encoding (without the envelope) is embedded in manifests.

use bytes::Bytes;

use crate::codec::{len_u32, put_u32, put_u64, Reader};
use crate::error::{corrupt, Result};
use crate::sst::trailer::unseal;

const WHAT: &str = "sst props";

/// Summary of an SST, stored in its props block and in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SstProps {
    /// First user key of the SST.
    pub smallest_key: Bytes,
    /// Last user key of the SST.
    pub largest_key: Bytes,
    /// Smallest seq of any entry.
    pub min_seq: u64,
    /// Largest seq of any entry.
    pub max_seq: u64,
    /// Number of entries (all versions, tombstones included).
    pub entries: u64,
    /// Number of [`Kind::Delete`](crate::Kind::Delete) entries.
    pub tombstones: u64,
    /// Entries with `expires_at_ms != 0`.
    pub expiring: u64,
    /// Largest `expires_at_ms` of any entry (0 when none expires).
    pub max_expires_at_ms: u64,
    /// Sum of uncompressed key and value bytes.
    pub data_bytes: u64,
    /// Size of the whole SST object.
    pub file_size: u64,
}

/// Length of the payload [`encode_props_payload`] writes.
pub(crate) fn props_payload_len(p: &SstProps) -> usize {
    64 + 4 + p.smallest_key.len() + 4 + p.largest_key.len()
}

/// Appends the props payload to `out`.
pub(crate) fn encode_props_payload(p: &SstProps, out: &mut Vec<u8>) {
    for v in [
        p.min_seq,
        p.max_seq,
        p.entries,
        p.tombstones,
        p.expiring,
        p.max_expires_at_ms,
        p.data_bytes,
        p.file_size,
    ] {
        put_u64(out, v);
    }
    put_u32(out, len_u32(p.smallest_key.len(), "smallest key"));
    out.extend_from_slice(&p.smallest_key);
    put_u32(out, len_u32(p.largest_key.len(), "largest key"));
    out.extend_from_slice(&p.largest_key);
}

/// Reads one props payload from `r`, structurally only (no cross-field checks).
pub(crate) fn read_props_payload(r: &mut Reader<'_>) -> Result<SstProps> {
    let min_seq = r.u64("min_seq")?;
    let max_seq = r.u64("max_seq")?;
    let entries = r.u64("entries")?;
    let tombstones = r.u64("tombstones")?;
    let expiring = r.u64("expiring")?;
    let max_expires_at_ms = r.u64("max_expires_at_ms")?;
    let data_bytes = r.u64("data_bytes")?;
    let file_size = r.u64("file_size")?;
    let smallest_key = Bytes::copy_from_slice(r.u32_prefixed("smallest_key")?);
    let largest_key = Bytes::copy_from_slice(r.u32_prefixed("largest_key")?);
    Ok(SstProps {
        smallest_key,
        largest_key,
        min_seq,
        max_seq,
        entries,
        tombstones,
        expiring,
        max_expires_at_ms,
        data_bytes,
        file_size,
    })
}

/// Decodes `raw`, exactly the bytes at the footer's props handle. Verifies the checksum and
/// that the fields are consistent (at least one entry, smallest <= largest, ...).
pub fn decode_props(raw: &[u8]) -> Result<SstProps> {
    let payload = unseal(raw, WHAT)?;
    let mut r = Reader::new(&payload, WHAT);
    let p = read_props_payload(&mut r)?;
    r.finish()?;
    let problem = if p.entries == 0 {
        Some("no entries")
    } else if p.smallest_key > p.largest_key {
        Some("smallest key > largest key")
    } else if p.min_seq > p.max_seq {
        Some("min_seq > max_seq")
    } else if p.tombstones > p.entries || p.expiring > p.entries {
        Some("more tombstones or expiring entries than entries")
    } else if (p.expiring == 0) != (p.max_expires_at_ms == 0) {
        Some("expiring count disagrees with max_expires_at_ms")
    } else {
        None
    };
    match problem {
        Some(detail) => Err(corrupt(WHAT, detail)),
        None => Ok(p),
    }
}

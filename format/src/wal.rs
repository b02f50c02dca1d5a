//! WAL segments: one immutable object per group commit, written with a single PUT.
//!
//! ```text
//! header  (40 B): magic "STRATWAL" | u32 version | u64 segment_id | u64 writer_epoch
//!                 | u64 created_ms | u32 crc32c(header bytes 0..36)
//! records (n)   : u32 body_len | u32 crc32c(body_len bytes ++ body) | body
//!   body        : u32 entry_count | entry*
//!   entry       : u8 kind | u64 seq | u64 expires_at_ms | u32 key_len | u32 value_len
//!                 | key | value
//! trailer (16 B): magic "STRATEND" | u32 batch_count | u32 content crc
//! ```
//!
//! All integers are little-endian. Each record is one atomic write batch. The trailer's
//! content crc is a crc32c over every byte of the segment except the embedded checksum
//! fields (header bytes 0..36, each record's length and body, trailer bytes 0..12), so it
//! binds header, records and trailer together: nothing is handed out unless the whole object
//! is intact. The embedded checksums are left out on purpose: CRC is linear, so a region
//! that ends in its own valid CRC (the header) is a codeword, and a CRC over the whole object
//! cannot tell it apart from another valid header. See `docs/format.md`.

use bytes::Bytes;

use crate::codec::{len_u32, put_u32, put_u64, Reader};
use crate::entry::{Entry, Kind};
use crate::error::{check_crc, corrupt, FormatError, Result};

/// Magic at the start of every WAL segment.
pub const WAL_MAGIC: [u8; 8] = *b"STRATWAL";
/// Magic that opens the trailer at the end of every WAL segment.
pub const WAL_TRAILER_MAGIC: [u8; 8] = *b"STRATEND";
/// The WAL segment format version this code writes. Version 2 has the layout of version 1;
/// it marks a stream whose writers pipeline their PUTs (`WAL_MAX_IN_FLIGHT`), which a reader
/// must replay with the gap and epoch rules of `WalEpochFilter`. This code reads both; a
/// binary that knows only version 1 refuses a version-2 segment instead of replaying orphans.
pub const WAL_FORMAT_VERSION: u32 = 2;
/// The oldest WAL segment format version this code reads.
pub const WAL_MIN_FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const WAL_HEADER_LEN: usize = 40;
/// Size of the segment trailer.
pub const WAL_TRAILER_LEN: usize = 16;
/// Size of an empty segment (a fencing marker); every segment holding a batch is larger.
pub const WAL_MARKER_LEN: u64 = (WAL_HEADER_LEN + WAL_TRAILER_LEN) as u64;

/// The most WAL segment creates one writer has in flight at once (the pipelined group
/// commit). A contract between writers: a writer starts the create of segment `i` only once its
/// creates of every segment up to `i - WAL_MAX_IN_FLIGHT` succeeded, so a writer whose create
/// of `j` failed never writes a segment at `j + WAL_MAX_IN_FLIGHT` or above. A new writer that
/// won segment `f` as its fence therefore claims `f + 1 .. f + WAL_MAX_IN_FLIGHT - 1` with
/// markers too and writes its first data segment at `f + WAL_MAX_IN_FLIGHT` (docs/write-path.md).
pub const WAL_MAX_IN_FLIGHT: u64 = 4;

/// Which WAL segments a replay admits, in segment-id order.
///
/// A segment whose writer epoch is lower than that of a segment admitted before it was written
/// by a deposed writer's pipeline after a newer writer's marker: that writer's create of the
/// marker's name failed, so it acknowledged none of the segment's writes, and they may have been
/// checked against a lower segment that never landed. Such a segment is skipped. Epochs grow with
/// every takeover (docs/write-path.md), so in a stream without pipelining nothing is ever skipped.
#[derive(Debug, Default, Clone, Copy)]
pub struct WalEpochFilter {
    max_epoch: u64,
}

impl WalEpochFilter {
    /// Whether the segment of `header` is replayed; call in segment-id order.
    pub fn admit(&mut self, header: &WalSegmentHeader) -> bool {
        if header.writer_epoch < self.max_epoch {
            return false;
        }
        self.max_epoch = header.writer_epoch;
        true
    }
}

const WHAT: &str = "wal segment";
const WHAT_RECORD: &str = "wal record";
/// Fixed bytes of one entry before its key and value.
const ENTRY_FIXED_LEN: usize = 1 + 8 + 8 + 4 + 4;
/// Fixed bytes of one record before its entries (len, crc, entry count).
const RECORD_FIXED_LEN: usize = 4 + 4 + 4;

/// The header of a WAL segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSegmentHeader {
    /// Sequential segment number within the writer's stream (also in the object name).
    pub segment_id: u64,
    /// Epoch of the writer that produced the segment (fencing).
    pub writer_epoch: u64,
    /// Wall-clock creation time, Unix milliseconds.
    pub created_ms: u64,
}

/// Encodes a WAL segment.
///
/// `batches` are commit groups: each inner `Vec` is one atomic write batch (on replay all of
/// it applies or none of it does). Zero batches is valid and makes an empty segment, used as
/// a fencing marker.
///
/// # Panics
/// If a key, a value or a batch is 4 GiB or larger, or there are 2^32 batches or entries in
/// a batch (far beyond the store's limits).
pub fn encode_wal_segment(header: &WalSegmentHeader, batches: &[Vec<Entry>]) -> Bytes {
    let body_size: usize = batches
        .iter()
        .map(|b| RECORD_FIXED_LEN + b.iter().map(entry_len).sum::<usize>())
        .sum();
    let mut out = Vec::with_capacity(WAL_HEADER_LEN + body_size + WAL_TRAILER_LEN);

    out.extend_from_slice(&WAL_MAGIC);
    put_u32(&mut out, WAL_FORMAT_VERSION);
    put_u64(&mut out, header.segment_id);
    put_u64(&mut out, header.writer_epoch);
    put_u64(&mut out, header.created_ms);
    let header_crc = crc32c::crc32c(&out);
    // Checksum of the segment's content: every byte except the embedded checksum fields.
    let mut content_crc = header_crc;
    put_u32(&mut out, header_crc);

    for batch in batches {
        let body_len = 4 + batch.iter().map(entry_len).sum::<usize>();
        let len_bytes = len_u32(body_len, "wal batch").to_le_bytes();
        out.extend_from_slice(&len_bytes);
        let crc_at = out.len();
        put_u32(&mut out, 0); // patched below
        let body_at = out.len();
        put_u32(&mut out, len_u32(batch.len(), "wal batch entry count"));
        for e in batch {
            out.push(e.kind.as_u8());
            put_u64(&mut out, e.seq);
            put_u64(&mut out, e.expires_at_ms);
            put_u32(&mut out, len_u32(e.key.len(), "key"));
            put_u32(&mut out, len_u32(e.value.len(), "value"));
            out.extend_from_slice(&e.key);
            out.extend_from_slice(&e.value);
        }
        let body = out.get(body_at..).unwrap_or_default();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), body);
        content_crc = crc32c::crc32c_append(crc32c::crc32c_append(content_crc, &len_bytes), body);
        if let Some(slot) = out.get_mut(crc_at..body_at) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
    }

    let trailer_at = out.len();
    out.extend_from_slice(&WAL_TRAILER_MAGIC);
    put_u32(&mut out, len_u32(batches.len(), "wal batch count"));
    let crc = crc32c::crc32c_append(content_crc, out.get(trailer_at..).unwrap_or_default());
    put_u32(&mut out, crc);
    Bytes::from(out)
}

fn entry_len(e: &Entry) -> usize {
    ENTRY_FIXED_LEN + e.key.len() + e.value.len()
}

/// Decodes and fully verifies a WAL segment.
///
/// Errors (never panics) on a bad magic, an unknown version, a truncated object, or any
/// checksum mismatch; a segment decodes either completely or not at all.
pub fn decode_wal_segment(data: &[u8]) -> Result<(WalSegmentHeader, Vec<Vec<Entry>>)> {
    if data.len() < WAL_HEADER_LEN + WAL_TRAILER_LEN {
        return Err(corrupt(
            WHAT,
            format!(
                "{} bytes is shorter than header + trailer ({})",
                data.len(),
                WAL_HEADER_LEN + WAL_TRAILER_LEN
            ),
        ));
    }

    // Header.
    let mut r = Reader::new(data, WHAT);
    let magic: [u8; 8] = r.array("magic")?;
    if magic != WAL_MAGIC {
        return Err(corrupt(WHAT, format!("bad magic {magic:02x?}")));
    }
    let version = r.u32("version")?;
    if !(WAL_MIN_FORMAT_VERSION..=WAL_FORMAT_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion {
            what: WHAT,
            version,
        });
    }
    let header = WalSegmentHeader {
        segment_id: r.u64("segment_id")?,
        writer_epoch: r.u64("writer_epoch")?,
        created_ms: r.u64("created_ms")?,
    };
    let covered = data
        .get(..r.position())
        .ok_or_else(|| corrupt(WHAT, "header"))?;
    let header_crc = crc32c::crc32c(covered);
    check_crc("wal segment header", r.u32("header crc")?, header_crc)?;

    // Trailer: its presence proves the object is complete.
    let trailer_at = data.len() - WAL_TRAILER_LEN;
    let trailer = data
        .get(trailer_at..)
        .ok_or_else(|| corrupt(WHAT, "trailer"))?;
    let mut t = Reader::new(trailer, WHAT);
    let tmagic: [u8; 8] = t.array("trailer magic")?;
    if tmagic != WAL_TRAILER_MAGIC {
        return Err(corrupt(WHAT, "missing trailer (truncated object?)"));
    }
    let batch_count = t.u32("batch count")? as usize;
    let trailer_fields = trailer.get(..t.position()).unwrap_or_default();
    let expected_content_crc = t.u32("trailer crc")?;

    // Records. One copy of the record region; keys and values are slices of it.
    let region = data
        .get(WAL_HEADER_LEN..trailer_at)
        .ok_or_else(|| corrupt(WHAT, "record region"))?;
    let region = Bytes::copy_from_slice(region);
    let mut r = Reader::new(&region, WHAT_RECORD);
    let mut batches = Vec::with_capacity(batch_count.min(region.len() / RECORD_FIXED_LEN));
    let mut content_crc = header_crc;
    while !r.is_empty() {
        if batches.len() == batch_count {
            return Err(corrupt(
                WHAT,
                format!("records continue past the {batch_count} batches the trailer counts"),
            ));
        }
        let len_bytes: [u8; 4] = r.array("record length")?;
        let body_len = u32::from_le_bytes(len_bytes) as usize;
        let expected = r.u32("record crc")?;
        let body_at = r.position();
        let body = r.bytes(body_len, "record body")?;
        let actual = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), body);
        check_crc(WHAT_RECORD, expected, actual)?;
        content_crc = crc32c::crc32c_append(crc32c::crc32c_append(content_crc, &len_bytes), body);
        batches.push(decode_batch(&region, body_at, body_len)?);
    }
    content_crc = crc32c::crc32c_append(content_crc, trailer_fields);
    check_crc("wal segment", expected_content_crc, content_crc)?;
    if batches.len() != batch_count {
        return Err(corrupt(
            WHAT,
            format!(
                "trailer counts {batch_count} batches, found {}",
                batches.len()
            ),
        ));
    }
    Ok((header, batches))
}

/// Parses one record body at `region[at..at + len]`.
fn decode_batch(region: &Bytes, at: usize, len: usize) -> Result<Vec<Entry>> {
    let body = region
        .get(at..at + len)
        .ok_or_else(|| corrupt(WHAT_RECORD, "body out of range"))?;
    let mut r = Reader::new(body, WHAT_RECORD);
    let count = r.u32("entry count")? as usize;
    let mut entries = Vec::with_capacity(count.min(r.remaining() / ENTRY_FIXED_LEN));
    for _ in 0..count {
        let kind_byte = r.u8("kind")?;
        let kind = Kind::from_u8(kind_byte)
            .ok_or_else(|| corrupt(WHAT_RECORD, format!("unknown entry kind {kind_byte}")))?;
        let seq = r.u64("seq")?;
        let expires_at_ms = r.u64("expires_at_ms")?;
        let key_len = r.u32("key length")? as usize;
        let value_len = r.u32("value length")? as usize;
        let key_at = at + r.position();
        r.bytes(key_len, "key")?;
        let value_at = at + r.position();
        r.bytes(value_len, "value")?;
        entries.push(Entry {
            key: region.slice(key_at..key_at + key_len),
            seq,
            kind,
            expires_at_ms,
            value: region.slice(value_at..value_at + value_len),
        });
    }
    r.finish()?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_filter_skips_segments_of_a_deposed_writer_after_a_newer_marker() {
        let h = |id, writer_epoch| WalSegmentHeader {
            segment_id: id,
            writer_epoch,
            created_ms: 0,
        };
        let mut f = WalEpochFilter::default();
        // An old writer's stream, its successor's marker, an orphan of the old pipeline, and the
        // successor's data.
        let admitted: Vec<bool> = [h(1, 5), h(2, 5), h(3, 9), h(4, 5), h(5, 9), h(6, 9)]
            .iter()
            .map(|hdr| f.admit(hdr))
            .collect();
        assert_eq!(admitted, [true, true, true, false, true, true]);
    }

    fn header() -> WalSegmentHeader {
        WalSegmentHeader {
            segment_id: 7,
            writer_epoch: 3,
            created_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn empty_segment_round_trips() {
        let data = encode_wal_segment(&header(), &[]);
        assert_eq!(data.len(), WAL_HEADER_LEN + WAL_TRAILER_LEN);
        let (h, b) = decode_wal_segment(&data).unwrap();
        assert_eq!(h, header());
        assert!(b.is_empty());
    }

    #[test]
    fn batches_round_trip() {
        let batches = vec![
            vec![Entry::put("a", 1, "x"), Entry::delete("b", 2)],
            vec![],
            vec![Entry {
                key: Bytes::from_static(b"c"),
                seq: 3,
                kind: Kind::Put,
                expires_at_ms: 99,
                value: Bytes::from(vec![7u8; 1000]),
            }],
        ];
        let data = encode_wal_segment(&header(), &batches);
        let (h, b) = decode_wal_segment(&data).unwrap();
        assert_eq!(h, header());
        assert_eq!(b, batches);
    }

    #[test]
    fn unknown_version_is_reported() {
        let mut data = encode_wal_segment(&header(), &[]).to_vec();
        data[8] = 3;
        assert!(matches!(
            decode_wal_segment(&data),
            Err(FormatError::UnsupportedVersion { version: 3, .. })
        ));
        // Version 1 (written before the pipelined commit, same layout) stays readable.
        assert_eq!(WAL_MIN_FORMAT_VERSION, 1);
    }

    #[test]
    fn truncation_is_corrupt() {
        let data = encode_wal_segment(&header(), &[vec![Entry::put("k", 1, "v")]]);
        for len in 0..data.len() {
            assert!(decode_wal_segment(&data[..len]).is_err(), "len {len}");
        }
    }
}

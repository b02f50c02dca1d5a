//! The checksummed envelope every SST block is stored in.
//!
//! ```text
//! stored payload | u8 compression type | u32 crc32c(stored payload ++ type byte)
//! ```
//!
//! For a compressed block the stored payload is `u32 uncompressed_len | compressed bytes`.
//! The checksum covers the bytes as stored (not the decompressed ones), so corruption is
//! caught before any decompressor sees the data, and it covers the type byte, so a flipped
//! type cannot send good bytes to the wrong decoder.

use std::borrow::Cow;

use crate::codec::{len_u32, put_u32};
use crate::error::{check_crc, corrupt, Result};
use crate::sst::options::Compression;

/// Bytes the envelope adds after the stored payload.
pub const BLOCK_TRAILER_LEN: usize = 5;

/// Largest uncompressed block the reader will inflate. The writer stores bigger blocks
/// uncompressed, so this bound never rejects a valid SST; it keeps a corrupt length from
/// triggering a huge allocation.
pub const MAX_COMPRESSED_BLOCK_INFLATED: usize = 64 << 20;

const TYPE_NONE: u8 = 0;
const TYPE_LZ4: u8 = 1;
const TYPE_ZSTD: u8 = 2;

/// Reusable compression state of one writer.
#[derive(Default)]
pub(crate) struct Compressor {
    zstd: Option<(i32, zstd::bulk::Compressor<'static>)>,
}

impl Compressor {
    /// Compresses `payload`, or returns `None` when compression fails or saves less than
    /// 1/8 of the size (then the block is stored uncompressed).
    fn compress(&mut self, payload: &[u8], c: Compression) -> Option<(u8, Vec<u8>)> {
        if payload.len() > MAX_COMPRESSED_BLOCK_INFLATED || payload.len() < 64 {
            return None;
        }
        let (ty, body) = match c {
            Compression::None => return None,
            Compression::Lz4 => (TYPE_LZ4, lz4_flex::block::compress(payload)),
            Compression::Zstd(level) => {
                if !matches!(&self.zstd, Some((l, _)) if *l == level) {
                    self.zstd = Some((level, zstd::bulk::Compressor::new(level).ok()?));
                }
                let (_, z) = self.zstd.as_mut()?;
                (TYPE_ZSTD, z.compress(payload).ok()?)
            }
        };
        let stored_len = 4 + body.len();
        if stored_len >= payload.len() - payload.len() / 8 {
            return None;
        }
        let mut stored = Vec::with_capacity(stored_len + BLOCK_TRAILER_LEN);
        put_u32(&mut stored, len_u32(payload.len(), "block"));
        stored.extend_from_slice(&body);
        Some((ty, stored))
    }

    /// Appends `payload` to `out` in the envelope, compressed with `c` when that pays off.
    /// Returns the number of bytes appended.
    pub(crate) fn seal(&mut self, out: &mut Vec<u8>, payload: &[u8], c: Compression) -> usize {
        let start = out.len();
        let ty = match self.compress(payload, c) {
            Some((ty, stored)) => {
                out.extend_from_slice(&stored);
                ty
            }
            None => {
                out.extend_from_slice(payload);
                TYPE_NONE
            }
        };
        out.push(ty);
        let crc = crc32c::crc32c(out.get(start..).unwrap_or_default());
        put_u32(out, crc);
        out.len() - start
    }
}

/// Verifies the envelope of `raw` (exactly the bytes at a block handle) and returns the
/// uncompressed payload. `what` names the block in errors.
pub(crate) fn unseal<'a>(raw: &'a [u8], what: &'static str) -> Result<Cow<'a, [u8]>> {
    let Some(body_len) = raw.len().checked_sub(BLOCK_TRAILER_LEN) else {
        return Err(corrupt(
            what,
            format!("{} bytes is shorter than the block trailer", raw.len()),
        ));
    };
    let (covered, crc_bytes) = raw.split_at(body_len + 1);
    let (stored, ty) = covered.split_at(body_len);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(crc_bytes);
    check_crc(what, u32::from_le_bytes(crc), crc32c::crc32c(covered))?;
    let ty = ty.first().copied().unwrap_or(u8::MAX);
    if ty == TYPE_NONE {
        return Ok(Cow::Borrowed(stored));
    }
    let (len_bytes, compressed) = stored
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt(what, "compressed block shorter than its length prefix"))?;
    let inflated_len = u32::from_le_bytes(*len_bytes) as usize;
    if inflated_len > MAX_COMPRESSED_BLOCK_INFLATED {
        return Err(corrupt(
            what,
            format!("uncompressed length {inflated_len} exceeds the limit"),
        ));
    }
    let out = match ty {
        TYPE_LZ4 => {
            let mut out = vec![0u8; inflated_len];
            let n = lz4_flex::block::decompress_into(compressed, &mut out)
                .map_err(|e| corrupt(what, format!("lz4: {e}")))?;
            out.truncate(n);
            out
        }
        TYPE_ZSTD => zstd::bulk::decompress(compressed, inflated_len)
            .map_err(|e| corrupt(what, format!("zstd: {e}")))?,
        other => return Err(corrupt(what, format!("unknown compression type {other}"))),
    };
    if out.len() != inflated_len {
        return Err(corrupt(
            what,
            format!(
                "decompressed to {} bytes, header says {inflated_len}",
                out.len()
            ),
        ));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compression_round_trips() {
        let compressible: Vec<u8> = (0..10_000u32).flat_map(|i| (i % 7).to_le_bytes()).collect();
        let random: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for c in [
            Compression::None,
            Compression::Lz4,
            Compression::Zstd(0),
            Compression::Zstd(3),
            Compression::Zstd(19),
        ] {
            for payload in [&compressible[..], &random[..], b"", b"short"] {
                let mut out = vec![9u8; 3];
                let n = Compressor::default().seal(&mut out, payload, c);
                assert_eq!(n, out.len() - 3);
                let back = unseal(&out[3..], "test").unwrap();
                assert_eq!(&back[..], payload);
                if c != Compression::None && payload.len() > 1000 && payload == &compressible[..] {
                    assert!(n < payload.len() / 2, "{c:?} did not compress");
                }
            }
        }
    }

    #[test]
    fn every_flip_is_detected() {
        let payload: Vec<u8> = (0..300u32).flat_map(|i| (i % 5).to_le_bytes()).collect();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd(1)] {
            let mut out = Vec::new();
            Compressor::default().seal(&mut out, &payload, c);
            for i in 0..out.len() {
                let mut bad = out.clone();
                bad[i] ^= 0x01;
                assert!(unseal(&bad, "test").is_err(), "{c:?} flip at {i}");
            }
            for len in 0..out.len() {
                assert!(unseal(&out[..len], "test").is_err());
            }
        }
    }

    #[test]
    fn bad_type_and_length_are_rejected_even_with_valid_crc() {
        let reseal = |stored: &[u8], ty: u8| {
            let mut v = stored.to_vec();
            v.push(ty);
            let crc = crc32c::crc32c(&v);
            v.extend_from_slice(&crc.to_le_bytes());
            v
        };
        assert!(unseal(&reseal(b"abcd", 7), "t").is_err());
        assert!(unseal(&reseal(b"ab", TYPE_LZ4), "t").is_err());
        assert!(unseal(&reseal(&[0xff, 0xff, 0xff, 0xff, 0], TYPE_LZ4), "t").is_err());
        assert!(unseal(&reseal(&[10, 0, 0, 0, 0x11, 0x22], TYPE_LZ4), "t").is_err());
        assert!(unseal(&reseal(&[10, 0, 0, 0, 0x11, 0x22], TYPE_ZSTD), "t").is_err());
    }
}

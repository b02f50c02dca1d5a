//! Little-endian integer and LEB128 varint encoding, and a bounds-checked reader.
//!
//! Every decoder in the crate reads through [`Reader`], which turns any attempt to read
//! past the end of the input into a [`FormatError::Corrupt`](crate::FormatError::Corrupt)
//! instead of a panic.

use crate::error::{corrupt, Result};

/// Appends `v` as an unsigned LEB128 varint (1 to 10 bytes).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes [`put_varint`] writes for `v`.
#[cfg(test)]
pub(crate) fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `v` little-endian.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `v` little-endian.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Converts an in-memory length to the u32 the format stores.
///
/// # Panics
/// When `n` does not fit in a u32. Every length the format stores as u32 (keys, values,
/// batches, blocks) is bounded far below 4 GiB by the store's limits, so reaching this is a
/// bug in the caller, not a data condition.
pub(crate) fn len_u32(n: usize, what: &str) -> u32 {
    match u32::try_from(n) {
        Ok(v) => v,
        #[expect(
            clippy::panic,
            reason = "a caller's bug (documented under Panics), not data"
        )]
        Err(_) => panic!("{what} length {n} does not fit the on-storage u32 field"),
    }
}

/// A cursor over an encoded structure. Every read is bounds checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from the start; errors name `what`.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// True when every byte was consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes the next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| {
                corrupt(
                    self.what,
                    format!(
                        "{field}: need {n} bytes at offset {}, only {} left",
                        self.pos,
                        self.remaining()
                    ),
                )
            })?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| corrupt(self.what, "slice"))?;
        self.pos = end;
        Ok(s)
    }

    /// Takes the next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let s = self.bytes(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Reads a LEB128 varint; rejects encodings longer than 10 bytes or overflowing u64.
    pub(crate) fn varint(&mut self, field: &str) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let b = self.u8(field)?;
            let low = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(corrupt(self.what, format!("{field}: varint overflows u64")));
            }
            v |= low << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(
            self.what,
            format!("{field}: varint longer than 10 bytes"),
        ))
    }

    /// Reads a varint that must fit in a usize.
    pub(crate) fn varint_usize(&mut self, field: &str) -> Result<usize> {
        let v = self.varint(field)?;
        usize::try_from(v)
            .map_err(|_| corrupt(self.what, format!("{field}: {v} does not fit in usize")))
    }

    /// Reads a u32 length prefix followed by that many bytes.
    pub(crate) fn u32_prefixed(&mut self, field: &str) -> Result<&'a [u8]> {
        let n = self.u32(field)? as usize;
        self.bytes(n, field)
    }

    /// Errors unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(corrupt(
                self.what,
                format!(
                    "{} trailing bytes after offset {}",
                    self.remaining(),
                    self.pos
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_len() {
        let values = [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        for v in values {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "len of {v}");
            let mut r = Reader::new(&out, "test");
            assert_eq!(r.varint("v").unwrap(), v);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn varint_rejects_overflow_and_truncation() {
        let over = [0xffu8; 10];
        assert!(Reader::new(&over, "t").varint("v").is_err());
        let mut max = vec![0xffu8; 9];
        max.push(0x02);
        assert!(Reader::new(&max, "t").varint("v").is_err());
        assert!(Reader::new(&[0x80], "t").varint("v").is_err());
        assert!(Reader::new(&[], "t").varint("v").is_err());
    }

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(&[1, 2, 3], "t");
        assert!(r.u32("x").is_err());
        assert_eq!(r.bytes(2, "x").unwrap(), &[1, 2]);
        assert!(r.bytes(usize::MAX, "x").is_err());
        assert!(r.finish().is_err());
        assert_eq!(r.u8("x").unwrap(), 3);
        assert!(r.finish().is_ok());
    }
}

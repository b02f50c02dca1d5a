//! The SST's bloom filter over user keys.
//!
//! Payload (before the [`trailer`](super::trailer) envelope): `bits (m/8 bytes) | u8 k`.
//! A key sets bits `(h1 + i * h2) mod m` for `i in 0..k`, where `h = xxh3_64(key)`,
//! `h1 = h` and `h2 = h.rotate_left(32) | 1` (Kirsch–Mitzenmacher double hashing).
//! An empty bit array (m = 0, k = 0) is a filter that matches every key.

use crate::error::{corrupt, Result};
use crate::sst::trailer::unseal;

const WHAT: &str = "sst bloom filter";
const MAX_PROBES: u8 = 30;

/// Hash of a user key as the filter uses it.
pub(crate) fn bloom_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Bit positions probed for hash `h` in a filter of `m` bits.
fn probes(h: u64, m: u64, k: u8) -> impl Iterator<Item = u64> {
    let h2 = h.rotate_left(32) | 1;
    (0..u64::from(k)).map(move |i| h.wrapping_add(i.wrapping_mul(h2)) % m)
}

/// Builds the filter payload for a set of key hashes.
pub(crate) fn build_bloom(hashes: &[u64], bits_per_key: usize) -> Vec<u8> {
    if bits_per_key == 0 || hashes.is_empty() {
        return vec![0]; // m = 0, k = 0: matches everything
    }
    let bits = hashes.len().saturating_mul(bits_per_key).max(64);
    let bytes = bits.div_ceil(8);
    let m = (bytes as u64) * 8;
    // k = bits_per_key * ln 2 minimizes the false positive rate.
    let k = ((bits_per_key as f64) * std::f64::consts::LN_2).round() as u64;
    let k = k.clamp(1, u64::from(MAX_PROBES)) as u8;
    let mut out = vec![0u8; bytes + 1];
    for &h in hashes {
        for bit in probes(h, m, k) {
            if let Some(b) = out.get_mut((bit / 8) as usize) {
                *b |= 1 << (bit % 8);
            }
        }
    }
    if let Some(last) = out.last_mut() {
        *last = k;
    }
    out
}

/// A decoded bloom filter.
#[derive(Debug, Clone)]
pub struct BloomFilter {
    bits: Vec<u8>,
    k: u8,
}

impl BloomFilter {
    /// Decodes `raw`, exactly the bytes at the footer's filter handle (checksum verified).
    pub fn decode(raw: &[u8]) -> Result<BloomFilter> {
        let payload = unseal(raw, WHAT)?;
        let (k, bits) = payload
            .split_last()
            .ok_or_else(|| corrupt(WHAT, "empty payload"))?;
        let k = *k;
        let valid = if bits.is_empty() {
            k == 0
        } else {
            (1..=MAX_PROBES).contains(&k)
        };
        if !valid {
            return Err(corrupt(
                WHAT,
                format!("{k} probes for {} bit bytes", bits.len()),
            ));
        }
        Ok(BloomFilter {
            bits: bits.to_vec(),
            k,
        })
    }

    /// False means `key` is certainly not in the SST; true means it may be.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hash(bloom_hash(key))
    }

    /// The hash [`may_contain_hash`](Self::may_contain_hash) expects: `xxh3_64(key)`.
    pub fn key_hash(key: &[u8]) -> u64 {
        bloom_hash(key)
    }

    /// [`may_contain`](Self::may_contain) for a precomputed [`key_hash`](Self::key_hash), so one hash
    /// serves every SST a lookup probes.
    pub fn may_contain_hash(&self, h: u64) -> bool {
        if self.bits.is_empty() {
            return true;
        }
        let m = (self.bits.len() as u64) * 8;
        probes(h, m, self.k).all(|bit| {
            self.bits
                .get((bit / 8) as usize)
                .is_some_and(|b| b & (1 << (bit % 8)) != 0)
        })
    }

    /// Size of the bit array in bytes.
    pub fn size_bytes(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sst::options::Compression;
    use crate::sst::trailer::Compressor;

    fn filter(keys: &[Vec<u8>], bits_per_key: usize) -> BloomFilter {
        let hashes: Vec<u64> = keys.iter().map(|k| bloom_hash(k)).collect();
        let mut raw = Vec::new();
        Compressor::default().seal(
            &mut raw,
            &build_bloom(&hashes, bits_per_key),
            Compression::None,
        );
        BloomFilter::decode(&raw).unwrap()
    }

    #[test]
    fn no_false_negatives_and_low_false_positive_rate() {
        let keys: Vec<Vec<u8>> = (0..100_000u32)
            .map(|i| format!("user:{i}").into_bytes())
            .collect();
        let f = filter(&keys, 10);
        assert!(keys.iter().all(|k| f.may_contain(k)));
        let trials = 100_000u32;
        let fp = (0..trials)
            .filter(|i| f.may_contain(format!("other:{i}").as_bytes()))
            .count();
        let rate = fp as f64 / f64::from(trials);
        assert!(rate < 0.02, "false positive rate {rate}");
    }

    #[test]
    fn zero_bits_matches_everything() {
        let f = filter(&[b"a".to_vec()], 0);
        assert_eq!(f.size_bytes(), 0);
        assert!(f.may_contain(b"anything"));
    }

    #[test]
    fn tiny_filter_has_minimum_size() {
        let f = filter(&[b"a".to_vec()], 10);
        assert_eq!(f.size_bytes(), 8);
        assert!(f.may_contain(b"a"));
    }

    #[test]
    fn bad_probe_counts_are_rejected() {
        for payload in [vec![], vec![1u8], vec![0xff, 0], vec![0xff, 31]] {
            let mut raw = Vec::new();
            Compressor::default().seal(&mut raw, &payload, Compression::None);
            assert!(BloomFilter::decode(&raw).is_err(), "{payload:?}");
        }
    }
}

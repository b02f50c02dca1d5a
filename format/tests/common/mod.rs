//! Helpers shared by the integration tests.
#![allow(
    dead_code,
    reason = "each test crate that includes these helpers uses some of them"
)]

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_format::{Entry, Kind};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` random entries, sorted in internal key order with unique (key, seq).
/// Keys come from a small alphabet so prefixes are shared and keys repeat with many seqs.
pub fn random_entries(rng: &mut StdRng, n: usize, max_value: usize) -> Vec<Entry> {
    let mut v: Vec<Entry> = (0..n)
        .map(|_| {
            let key_len = rng.random_range(1..12);
            let key: Vec<u8> = (0..key_len)
                .map(|_| b"abcd"[rng.random_range(0..4)])
                .collect();
            let seq = rng.random_range(0..1_000_000u64);
            let kind = if rng.random_bool(0.2) {
                Kind::Delete
            } else {
                Kind::Put
            };
            let value: Vec<u8> = match kind {
                Kind::Put => {
                    let mut v = vec![0u8; rng.random_range(0..=max_value)];
                    rng.fill(&mut v[..]);
                    v
                }
                Kind::Delete => Vec::new(),
            };
            let expires_at_ms = if rng.random_bool(0.3) {
                rng.random_range(1..u64::MAX)
            } else {
                0
            };
            Entry {
                key: Bytes::from(key),
                seq,
                kind,
                expires_at_ms,
                value: Bytes::from(value),
            }
        })
        .collect();
    v.sort_by(|a, b| a.internal_cmp(b));
    v.dedup_by(|a, b| a.key == b.key && a.seq == b.seq);
    v
}

/// Every single-byte corruption of `data` (each position xor `mask`).
pub fn flips(data: &[u8], mask: u8) -> impl Iterator<Item = (usize, Vec<u8>)> + '_ {
    (0..data.len()).map(move |i| {
        let mut bad = data.to_vec();
        bad[i] ^= mask;
        (i, bad)
    })
}

#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]
mod common;

use bytes::Bytes;
use common::{flips, rng};
use rand::Rng;
use strata_format::{decode_manifest, encode_manifest, FormatError, Manifest, SstInfo, SstProps};

fn props(lo: &str, hi: &str, n: u64) -> SstProps {
    SstProps {
        smallest_key: Bytes::copy_from_slice(lo.as_bytes()),
        largest_key: Bytes::copy_from_slice(hi.as_bytes()),
        min_seq: n,
        max_seq: n * 10,
        entries: n * 100,
        tombstones: n,
        expiring: 2,
        max_expires_at_ms: 1_800_000_000_000,
        data_bytes: n * 5000,
        file_size: n * 4000,
    }
}

fn manifest() -> Manifest {
    Manifest {
        version: 17,
        writer_epoch: 3,
        last_flushed_seq: 123_456,
        wal_replay_from: 88,
        next_sst_id: 40,
        l0: vec![
            SstInfo {
                id: 39,
                level: 0,
                props: props("a", "m", 3),
            },
            SstInfo {
                id: 38,
                level: 0,
                props: props("c", "z", 2),
            },
        ],
        levels: vec![
            vec![
                SstInfo {
                    id: 10,
                    level: 1,
                    props: props("a", "f", 1),
                },
                SstInfo {
                    id: 11,
                    level: 1,
                    props: props("g", "p", 1),
                },
            ],
            vec![],
            vec![SstInfo {
                id: 5,
                level: 3,
                props: props("", "\u{ff}", 9),
            }],
        ],
        roots: Vec::new(),
        dropped_tombstone_seq: 0,
        created_ms: 1_720_000_000_000,
    }
}

#[test]
fn manifest_round_trips() {
    let m = manifest();
    assert_eq!(decode_manifest(&encode_manifest(&m)).unwrap(), m);
    let empty = Manifest::default();
    assert_eq!(decode_manifest(&encode_manifest(&empty)).unwrap(), empty);
}

#[test]
fn manifest_large_round_trips() {
    let mut r = rng(3);
    let mut m = manifest();
    m.levels = (0..6)
        .map(|level| {
            (0..2000)
                .map(|i| SstInfo {
                    id: r.random(),
                    level: level + 1,
                    props: props(
                        &format!("k{i:06}"),
                        &format!("k{i:06}z"),
                        r.random_range(1..1000),
                    ),
                })
                .collect()
        })
        .collect();
    assert_eq!(decode_manifest(&encode_manifest(&m)).unwrap(), m);
}

#[test]
fn manifest_every_byte_flip_is_detected() {
    let data = encode_manifest(&manifest());
    for mask in [0x01, 0xff] {
        for (i, bad) in flips(&data, mask) {
            assert!(decode_manifest(&bad).is_err(), "mask {mask:#x} at byte {i}");
        }
    }
}

#[test]
fn manifest_every_truncation_is_detected() {
    let data = encode_manifest(&manifest());
    for len in 0..data.len() {
        assert!(decode_manifest(&data[..len]).is_err(), "length {len}");
    }
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(decode_manifest(&longer).is_err());
}

#[test]
fn manifest_unknown_version_is_reported() {
    let mut data = encode_manifest(&manifest()).to_vec();
    data[8..12].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(
        decode_manifest(&data),
        Err(FormatError::UnsupportedVersion { version: 9, .. })
    ));
}

#[test]
fn manifest_random_damage_never_panics() {
    let mut r = rng(4);
    let data = encode_manifest(&manifest());
    for _ in 0..5000 {
        let mut bad = data.to_vec();
        for _ in 0..r.random_range(1..8) {
            let i = r.random_range(0..bad.len());
            bad[i] = r.random();
        }
        if bad != data {
            assert!(decode_manifest(&bad).is_err());
        }
    }
    for _ in 0..2000 {
        let len = r.random_range(0..100);
        let junk: Vec<u8> = (0..len).map(|_| r.random()).collect();
        assert!(decode_manifest(&junk).is_err());
    }
}

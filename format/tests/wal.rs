#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]
mod common;

use bytes::Bytes;
use common::{flips, random_entries, rng};
use rand::Rng;
use strata_format::{
    decode_wal_segment, encode_wal_segment, Entry, FormatError, Kind, WalSegmentHeader,
    WAL_HEADER_LEN, WAL_TRAILER_LEN,
};

fn header(id: u64) -> WalSegmentHeader {
    WalSegmentHeader {
        segment_id: id,
        writer_epoch: 42,
        created_ms: 1_720_000_000_123,
    }
}

fn small_batches() -> Vec<Vec<Entry>> {
    vec![
        vec![Entry::put("alpha", 10, "one"), Entry::delete("beta", 11)],
        vec![Entry {
            key: Bytes::from_static(b"gamma"),
            seq: 12,
            kind: Kind::Put,
            expires_at_ms: 1_720_000_060_000,
            value: Bytes::from_static(b"ttl"),
        }],
    ]
}

#[test]
fn wal_empty_segment_round_trips() {
    let data = encode_wal_segment(&header(1), &[]);
    let (h, batches) = decode_wal_segment(&data).unwrap();
    assert_eq!(h, header(1));
    assert!(batches.is_empty());
}

#[test]
fn wal_one_batch_round_trips() {
    let batch = vec![vec![Entry::put("k", 1, "v")]];
    let data = encode_wal_segment(&header(2), &batch);
    assert_eq!(decode_wal_segment(&data).unwrap(), (header(2), batch));
}

#[test]
fn wal_many_batches_round_trip() {
    let mut r = rng(1);
    let batches: Vec<Vec<Entry>> = (0..500)
        .map(|_| {
            let n = r.random_range(0..20);
            random_entries(&mut r, n, 300)
        })
        .collect();
    let data = encode_wal_segment(&header(3), &batches);
    let (h, back) = decode_wal_segment(&data).unwrap();
    assert_eq!(h, header(3));
    assert_eq!(back, batches);
}

#[test]
fn wal_huge_values_round_trip() {
    let big = Bytes::from(vec![0xabu8; 1 << 20]);
    let batches = vec![
        vec![
            Entry::put("a", 1, big.clone()),
            Entry::put("b", 2, big.clone()),
        ],
        vec![Entry::put(vec![7u8; 4096], 3, big)],
    ];
    let data = encode_wal_segment(&header(4), &batches);
    assert_eq!(decode_wal_segment(&data).unwrap().1, batches);
}

#[test]
fn wal_every_byte_flip_is_detected() {
    let data = encode_wal_segment(&header(5), &small_batches());
    for mask in [0x01, 0x80, 0xff] {
        for (i, bad) in flips(&data, mask) {
            assert!(
                decode_wal_segment(&bad).is_err(),
                "mask {mask:#x} at byte {i}"
            );
        }
    }
    let empty = encode_wal_segment(&header(5), &[]);
    for (i, bad) in flips(&empty, 0x10) {
        assert!(decode_wal_segment(&bad).is_err(), "empty segment, byte {i}");
    }
}

#[test]
fn wal_every_truncation_is_detected() {
    let data = encode_wal_segment(&header(6), &small_batches());
    for len in 0..data.len() {
        assert!(decode_wal_segment(&data[..len]).is_err(), "length {len}");
    }
    // A truncation that cuts the trailer is reported as corruption.
    assert!(matches!(
        decode_wal_segment(&data[..data.len() - 1]),
        Err(FormatError::Corrupt { .. })
    ));
}

#[test]
fn wal_extension_and_splicing_are_detected() {
    let a = encode_wal_segment(&header(7), &small_batches());
    let b = encode_wal_segment(&header(8), &[vec![Entry::put("x", 99, "y")]]);
    let mut extended = a.to_vec();
    extended.extend_from_slice(&b);
    assert!(decode_wal_segment(&extended).is_err());
    // Header of one segment, body and trailer of another.
    let mut spliced = b[..WAL_HEADER_LEN].to_vec();
    spliced.extend_from_slice(&a[WAL_HEADER_LEN..]);
    assert!(decode_wal_segment(&spliced).is_err());
    // Dropping a whole record.
    let one = encode_wal_segment(&header(7), &small_batches()[..1]);
    let mut dropped = one[..one.len() - WAL_TRAILER_LEN].to_vec();
    dropped.extend_from_slice(&a[a.len() - WAL_TRAILER_LEN..]);
    assert!(decode_wal_segment(&dropped).is_err());
}

#[test]
fn wal_random_damage_never_panics() {
    let mut r = rng(2);
    let batches: Vec<Vec<Entry>> = (0..5).map(|_| random_entries(&mut r, 5, 40)).collect();
    let data = encode_wal_segment(&header(9), &batches);
    for _ in 0..5000 {
        let mut bad = data.to_vec();
        for _ in 0..r.random_range(1..8) {
            let i = r.random_range(0..bad.len());
            bad[i] = r.random();
        }
        if bad != data {
            assert!(decode_wal_segment(&bad).is_err());
        }
    }
    for _ in 0..2000 {
        let len = r.random_range(0..200);
        let junk: Vec<u8> = (0..len).map(|_| r.random()).collect();
        assert!(decode_wal_segment(&junk).is_err());
    }
}

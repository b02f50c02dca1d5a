//! Format snapshots: fixed objects encoded to hard-coded bytes. If one of these fails, the
//! on-storage format changed. That is only acceptable with a new format version, a reader
//! for the old one, and an update to docs/format.md.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use bytes::Bytes;
use strata_format::{
    decode_manifest, decode_wal_segment, encode_manifest, encode_wal_segment, read_all_entries,
    Compression, Entry, Kind, Manifest, SstBuilder, SstInfo, SstOptions, SstProps,
    WalSegmentHeader,
};

fn hex(data: &[u8]) -> String {
    data.chunks(32)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_snapshot(name: &str, data: &[u8], expected: &str) {
    let expected: String = expected.split_whitespace().collect();
    let actual = hex(data);
    assert!(
        actual.replace('\n', "") == expected,
        "{name} encoding changed; new bytes:\n{actual}\n"
    );
}

fn wal_batches() -> Vec<Vec<Entry>> {
    vec![
        vec![Entry::put("k1", 1, "v1"), Entry::delete("k2", 2)],
        vec![Entry {
            key: Bytes::from_static(b"k3"),
            seq: 3,
            kind: Kind::Put,
            expires_at_ms: 1_700_000_060_000,
            value: Bytes::from_static(b"v3"),
        }],
    ]
}

const WAL_HEADER: WalSegmentHeader = WalSegmentHeader {
    segment_id: 1,
    writer_epoch: 2,
    created_ms: 1_700_000_000_000,
};

const WAL_HEX: &str = "
    535452415457414c02000000010000000000000002000000000000000068e5cf
    8b010000b7265fac3c000000c544780302000000010100000000000000000000
    000000000002000000020000006b317631020200000000000000000000000000
    000002000000000000006b32210000000c396b88010000000103000000000000
    006052e6cf8b01000002000000020000006b3376335354524154454e44020000
    0028152bbb
";

/// The same segment as written at format version 1 (before the pipelined group commit):
/// still read, to the same header and batches.
const WAL_V1_HEX: &str = "
    535452415457414c01000000010000000000000002000000000000000068e5cf
    8b0100001acd8d4f3c000000c544780302000000010100000000000000000000
    000000000002000000020000006b317631020200000000000000000000000000
    000002000000000000006b32210000000c396b88010000000103000000000000
    006052e6cf8b01000002000000020000006b3376335354524154454e44020000
    00ea752bf2
";

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn version_1_wal_segments_are_still_read() {
    assert_eq!(
        decode_wal_segment(&unhex(WAL_V1_HEX)).unwrap(),
        (WAL_HEADER, wal_batches())
    );
    assert_eq!(
        decode_wal_segment(&unhex(EMPTY_WAL_V1_HEX)).unwrap(),
        (WAL_HEADER, Vec::new())
    );
}

#[test]
fn wal_segment_format_snapshot() {
    let data = encode_wal_segment(&WAL_HEADER, &wal_batches());
    assert_snapshot("wal segment", &data, WAL_HEX);
    assert_eq!(
        decode_wal_segment(&data).unwrap(),
        (WAL_HEADER, wal_batches())
    );
}

const EMPTY_WAL_HEX: &str = "
    535452415457414c02000000010000000000000002000000000000000068e5cf
    8b010000b7265fac5354524154454e44000000003c9e83b6
";

const EMPTY_WAL_V1_HEX: &str = "
    535452415457414c01000000010000000000000002000000000000000068e5cf
    8b0100001acd8d4f5354524154454e4400000000b0d72fd5
";

#[test]
fn empty_wal_segment_format_snapshot() {
    let data = encode_wal_segment(&WAL_HEADER, &[]);
    assert_snapshot("empty wal segment", &data, EMPTY_WAL_HEX);
}

fn manifest() -> Manifest {
    let props = |lo: &'static [u8], hi: &'static [u8], id: u64| SstProps {
        smallest_key: Bytes::from_static(lo),
        largest_key: Bytes::from_static(hi),
        min_seq: id,
        max_seq: id + 10,
        entries: 100,
        tombstones: 3,
        expiring: 1,
        max_expires_at_ms: 1_700_000_099_000,
        data_bytes: 5000,
        file_size: 4321,
    };
    Manifest {
        version: 5,
        writer_epoch: 2,
        last_flushed_seq: 77,
        wal_replay_from: 9,
        next_sst_id: 12,
        l0: vec![SstInfo {
            id: 11,
            level: 0,
            props: props(b"a", b"m", 60),
        }],
        levels: vec![vec![SstInfo {
            id: 4,
            level: 1,
            props: props(b"b", b"z", 1),
        }]],
        roots: Vec::new(),
        created_ms: 1_700_000_100_000,
        dropped_tombstone_seq: 0,
    }
}

const MANIFEST_HEX: &str = "
    53545241544d414e01000000e800000000000000050000000000000002000000
    000000004d0000000000000009000000000000000c00000000000000a0eee6cf
    8b010000010000000b00000000000000000000003c0000000000000046000000
    00000000640000000000000003000000000000000100000000000000b8eae6cf
    8b0100008813000000000000e1100000000000000100000061010000006d0100
    00000100000004000000000000000100000001000000000000000b0000000000
    0000640000000000000003000000000000000100000000000000b8eae6cf8b01
    00008813000000000000e1100000000000000100000062010000007a155f3748
";

#[test]
fn manifest_format_snapshot() {
    let data = encode_manifest(&manifest());
    assert_snapshot("manifest", &data, MANIFEST_HEX);
    assert_eq!(decode_manifest(&data).unwrap(), manifest());
}

fn sst_entries() -> Vec<Entry> {
    vec![
        Entry::put("apple", 9, "red"),
        Entry::delete("apple", 4),
        Entry::put("apricot", 7, "orange"),
        Entry {
            key: Bytes::from_static(b"banana"),
            seq: 8,
            kind: Kind::Put,
            expires_at_ms: 1_700_000_000_500,
            value: Bytes::from_static(b"yellow"),
        },
    ]
}

const SST_HEX: &str = "
    0005030901006170706c6572656405000004020000070607010061707269636f
    746f72616e67650006060801f4d395ffbc3162616e616e6179656c6c6f770000
    0000140000000200000000f92f198f0ff0421488037084070080ed4749010662
    616e616e61004f00dcf943dd0400000000000000090000000000000004000000
    0000000001000000000000000100000000000000f469e5cf8b01000026000000
    000000000401000000000000050000006170706c650600000062616e616e6100
    f142e1175d000000000000000f000000000000004f000000000000000e000000
    000000006c00000000000000580000000000000001000000ace764fc53545241
    54535354
";

#[test]
fn sst_format_snapshot() {
    let mut b = SstBuilder::new(SstOptions {
        block_size: 4096,
        restart_interval: 2,
        compression: Compression::None,
        bloom_bits_per_key: 10,
    });
    for e in sst_entries() {
        b.add(&e).unwrap();
    }
    let (data, _) = b.finish().unwrap();
    assert_snapshot("sst", &data, SST_HEX);
    assert_eq!(read_all_entries(&data).unwrap(), sst_entries());
}

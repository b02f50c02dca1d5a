#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]
mod common;

use bytes::Bytes;
use common::{flips, random_entries, rng};
use rand::Rng;
use strata_format::{
    decode_props, internal_cmp, read_all_entries, BloomFilter, Compression, DataBlock, Entry,
    FormatError, Kind, SstBuilder, SstFooter, SstIndex, SstOptions, SstProps, SST_FOOTER_LEN,
};

const COMPRESSIONS: [Compression; 4] = [
    Compression::None,
    Compression::Lz4,
    Compression::Zstd(3),
    Compression::Zstd(-1),
];

fn opts(compression: Compression) -> SstOptions {
    SstOptions {
        compression,
        ..SstOptions::default()
    }
}

fn build(entries: &[Entry], opts: SstOptions) -> (Bytes, SstProps) {
    let mut b = SstBuilder::new(opts);
    for e in entries {
        b.add(e).unwrap();
    }
    b.finish().unwrap()
}

/// Reads an SST the way the engine does: footer, then metadata blocks, then data blocks.
struct Parsed {
    footer: SstFooter,
    index: SstIndex,
    filter: BloomFilter,
    props: SstProps,
    blocks: Vec<DataBlock>,
}

fn parse(sst: &[u8]) -> Parsed {
    let footer = SstFooter::decode(&sst[sst.len() - SST_FOOTER_LEN..]).unwrap();
    let index = SstIndex::decode(&sst[footer.index.range()]).unwrap();
    let filter = BloomFilter::decode(&sst[footer.filter.range()]).unwrap();
    let props = decode_props(&sst[footer.props.range()]).unwrap();
    let blocks = index
        .blocks
        .iter()
        .map(|(_, h)| DataBlock::decode(&sst[h.range()]).unwrap())
        .collect();
    Parsed {
        footer,
        index,
        filter,
        props,
        blocks,
    }
}

fn expected_props(entries: &[Entry], file_size: u64) -> SstProps {
    let expiring: Vec<u64> = entries
        .iter()
        .map(|e| e.expires_at_ms)
        .filter(|&t| t != 0)
        .collect();
    SstProps {
        smallest_key: entries[0].key.clone(),
        largest_key: entries[entries.len() - 1].key.clone(),
        min_seq: entries.iter().map(|e| e.seq).min().unwrap(),
        max_seq: entries.iter().map(|e| e.seq).max().unwrap(),
        entries: entries.len() as u64,
        tombstones: entries.iter().filter(|e| e.kind == Kind::Delete).count() as u64,
        expiring: expiring.len() as u64,
        max_expires_at_ms: expiring.iter().copied().max().unwrap_or(0),
        data_bytes: entries
            .iter()
            .map(|e| (e.key.len() + e.value.len()) as u64)
            .sum(),
        file_size,
    }
}

fn check_round_trip(entries: &[Entry], o: SstOptions) -> (Bytes, Parsed) {
    let (sst, props) = build(entries, o.clone());
    assert_eq!(props, expected_props(entries, sst.len() as u64), "{o:?}");
    assert_eq!(read_all_entries(&sst).unwrap(), entries, "{o:?}");
    let p = parse(&sst);
    assert_eq!(p.props, props);
    assert_eq!(p.footer.file_size(), sst.len() as u64);
    for ((last, _), block) in p.index.blocks.iter().zip(&p.blocks) {
        assert!(!block.entries().is_empty());
        assert_eq!(&block.entries().last().unwrap().key, last);
    }
    (sst, p)
}

#[test]
fn sst_single_entry_round_trips() {
    for c in COMPRESSIONS {
        let (_, p) = check_round_trip(&[Entry::put("only", 7, "value")], opts(c));
        assert_eq!(p.blocks.len(), 1);
        assert!(p.filter.may_contain(b"only"));
    }
    let (_, p) = check_round_trip(&[Entry::delete("gone", 1)], opts(Compression::Lz4));
    assert_eq!(p.props.tombstones, 1);
}

#[test]
fn sst_100k_small_entries_round_trip() {
    let entries: Vec<Entry> = (0..100_000u32)
        .map(|i| {
            let mut e = Entry::put(
                format!("user:{i:08}"),
                u64::from(i) + 1,
                format!("v{}", i % 97),
            );
            if i % 10 == 0 {
                e = Entry::delete(e.key, e.seq);
            }
            if i % 7 == 0 {
                e.expires_at_ms = 1_700_000_000_000 + u64::from(i);
            }
            e
        })
        .collect();
    let mut sizes = Vec::new();
    for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
        let (sst, p) = check_round_trip(&entries, opts(c));
        assert!(p.blocks.len() > 100);
        sizes.push(sst.len());
        // Every key passes its filter; unknown keys mostly do not.
        assert!(entries.iter().all(|e| p.filter.may_contain(&e.key)));
        let fp = (0..20_000u32)
            .filter(|i| p.filter.may_contain(format!("absent:{i}").as_bytes()))
            .count();
        assert!(fp < 400, "{fp} false positives of 20000");
    }
    assert!(
        sizes[1] < sizes[0] && sizes[2] < sizes[0],
        "compression did not help: {sizes:?}"
    );
}

#[test]
fn sst_1mib_values_get_their_own_blocks() {
    let mut r = rng(5);
    let mut entries = Vec::new();
    for i in 0..6u32 {
        let mut big = vec![0u8; 1 << 20];
        r.fill(&mut big[..]);
        entries.push(Entry::put(format!("k{i:03}a"), 1, big));
        for j in 0..5u32 {
            entries.push(Entry::put(format!("k{i:03}b{j}"), 1, "small"));
        }
    }
    for c in [Compression::None, Compression::Lz4, Compression::Zstd(1)] {
        let (_, p) = check_round_trip(&entries, opts(c));
        for block in &p.blocks {
            let has_big = block.entries().iter().any(|e| e.value.len() > 4096);
            if has_big {
                assert_eq!(block.entries().len(), 1, "a 1 MiB value shares its block");
            }
        }
        assert_eq!(
            p.blocks
                .iter()
                .filter(|b| b.entries()[0].value.len() > 4096)
                .count(),
            6
        );
    }
}

#[test]
fn sst_blocks_respect_block_size() {
    let mut r = rng(6);
    let entries = random_entries(&mut r, 5000, 3000);
    for block_size in [1, 64, 1000, 4096, 16_384] {
        let o = SstOptions {
            block_size,
            compression: Compression::None,
            ..SstOptions::default()
        };
        let (_, p) = check_round_trip(&entries, o);
        for ((_, h), block) in p.index.blocks.iter().zip(&p.blocks) {
            if block.entries().len() > 1 {
                assert!(h.len as usize <= block_size + 5, "block of {} bytes", h.len);
            }
        }
        if block_size == 1 {
            assert_eq!(p.blocks.len(), entries.len());
        }
    }
}

#[test]
fn sst_many_versions_of_one_key() {
    let mut entries: Vec<Entry> = (1..=5_000u64)
        .rev()
        .map(|seq| {
            if seq % 3 == 0 {
                Entry::delete("hot", seq)
            } else {
                Entry::put("hot", seq, format!("value-{seq}"))
            }
        })
        .collect();
    entries.push(Entry::put("hou", 5, "next"));
    for c in COMPRESSIONS {
        let (_, p) = check_round_trip(&entries, opts(c));
        assert!(p.blocks.len() > 10);
        assert_eq!(p.index.find_block(b"hot"), Some(0));
        assert_eq!(p.index.find_block(b"hou"), Some(p.blocks.len() - 1));
        for seq in [5_000, 3_456, 2, 1, 0] {
            let got = lookup(&p, b"hot", seq);
            let want = entries
                .iter()
                .find(|e| &e.key[..] == b"hot" && e.seq <= seq);
            assert_eq!(got.as_ref(), want, "seq {seq}");
        }
    }
}

/// Newest version of `key` with seq <= `seq`, read like the engine: index, then blocks.
fn lookup(p: &Parsed, key: &[u8], seq: u64) -> Option<Entry> {
    let first = p.index.find_block(key)?;
    for block in &p.blocks[first..] {
        let i = block.seek(key, seq);
        if let Some(e) = block.entries().get(i) {
            return (e.key == key).then(|| e.clone());
        }
    }
    None
}

#[test]
fn sst_tombstones_and_ttl_are_preserved() {
    let entries = vec![
        Entry::delete("a", 9),
        Entry {
            key: Bytes::from_static(b"a"),
            seq: 3,
            kind: Kind::Put,
            expires_at_ms: 500,
            value: Bytes::from_static(b"old"),
        },
        Entry {
            key: Bytes::from_static(b"b"),
            seq: 4,
            kind: Kind::Delete,
            expires_at_ms: 900,
            value: Bytes::new(),
        },
        Entry::put("c", 1, ""),
    ];
    for c in COMPRESSIONS {
        let (_, p) = check_round_trip(&entries, opts(c));
        assert_eq!(p.props.tombstones, 2);
        assert_eq!(p.props.expiring, 2);
        assert_eq!(p.props.max_expires_at_ms, 900);
        assert_eq!((p.props.min_seq, p.props.max_seq), (1, 9));
        assert_eq!(p.props.data_bytes, 4 + 3);
    }
}

#[test]
fn sst_random_contents_round_trip_with_every_option() {
    let mut r = rng(7);
    for round in 0..24 {
        let n = r.random_range(1..1500);
        let entries = random_entries(&mut r, n, 500);
        let o = SstOptions {
            block_size: r.random_range(1..8192),
            restart_interval: r.random_range(0..40),
            compression: COMPRESSIONS[round % COMPRESSIONS.len()],
            bloom_bits_per_key: r.random_range(0..20),
        };
        check_round_trip(&entries, o);
    }
}

#[test]
fn find_block_and_seek_match_brute_force() {
    let mut r = rng(8);
    for round in 0..12 {
        let entries = random_entries(&mut r, 2000, 40);
        let o = SstOptions {
            block_size: [64, 256, 1024, 4096][round % 4],
            restart_interval: [1, 3, 16][round % 3],
            compression: COMPRESSIONS[round % COMPRESSIONS.len()],
            bloom_bits_per_key: 10,
        };
        let (_, p) = check_round_trip(&entries, o);
        for _ in 0..600 {
            let key: Vec<u8> = if r.random_bool(0.5) {
                entries[r.random_range(0..entries.len())].key.to_vec()
            } else {
                let len = r.random_range(0..13);
                (0..len).map(|_| b"abcde"[r.random_range(0..5)]).collect()
            };
            let seq = match r.random_range(0..4) {
                0 => u64::MAX,
                1 => 0,
                _ => r.random_range(0..1_000_000),
            };

            // find_block: first block whose last key >= key.
            let want_block = p
                .index
                .blocks
                .iter()
                .position(|(last, _)| last.as_ref() >= &key[..]);
            assert_eq!(p.index.find_block(&key), want_block);

            // Seek across the SST: first entry with internal key >= (key, seq).
            let want = entries
                .iter()
                .position(|e| internal_cmp(&e.key, e.seq, &key, seq).is_ge());
            let mut got = None;
            if let Some(b) = p.index.find_block(&key) {
                let mut before: usize = p.blocks[..b].iter().map(|b| b.entries().len()).sum();
                for block in &p.blocks[b..] {
                    let i = block.seek(&key, seq);
                    // Brute force within the block too.
                    let bi = block
                        .entries()
                        .iter()
                        .position(|e| internal_cmp(&e.key, e.seq, &key, seq).is_ge())
                        .unwrap_or(block.entries().len());
                    assert_eq!(i, bi);
                    if i < block.entries().len() {
                        got = Some(before + i);
                        break;
                    }
                    before += block.entries().len();
                }
            }
            assert_eq!(got, want, "key {key:?} seq {seq}");
        }
    }
}

#[test]
fn sst_bloom_has_no_false_negatives_and_few_false_positives() {
    let entries: Vec<Entry> = (0..50_000u32)
        .map(|i| Entry::put(format!("key-{i}"), 1, "v"))
        .collect();
    let mut entries = entries;
    entries.sort_by(|a, b| a.internal_cmp(b));
    let (_, p) = check_round_trip(&entries, opts(Compression::Lz4));
    assert!(entries.iter().all(|e| p.filter.may_contain(&e.key)));
    let trials = 100_000u32;
    let fp = (0..trials)
        .filter(|i| p.filter.may_contain(format!("miss-{i}").as_bytes()))
        .count();
    let rate = fp as f64 / f64::from(trials);
    assert!(rate < 0.02, "false positive rate {rate}");
}

#[test]
fn sst_builder_rejects_out_of_order_entries() {
    let mut b = SstBuilder::new(SstOptions::default());
    assert!(b.is_empty());
    b.add(&Entry::put("b", 5, "x")).unwrap();
    assert!(!b.is_empty());
    for bad in [
        Entry::put("a", 9, "x"),
        Entry::put("b", 5, "x"),
        Entry::put("b", 6, "x"),
    ] {
        assert!(
            matches!(b.add(&bad), Err(FormatError::Invalid(_))),
            "{bad:?}"
        );
    }
    // The builder is still usable after a rejected entry.
    b.add(&Entry::put("b", 4, "y")).unwrap();
    b.add(&Entry::put("c", 100, "z")).unwrap();
    let (sst, props) = b.finish().unwrap();
    assert_eq!(props.entries, 3);
    assert_eq!(read_all_entries(&sst).unwrap().len(), 3);
}

#[test]
fn sst_finish_without_entries_is_invalid() {
    let b = SstBuilder::new(SstOptions::default());
    assert!(matches!(b.finish(), Err(FormatError::Invalid(_))));
}

#[test]
fn sst_estimated_size_tracks_output() {
    let mut b = SstBuilder::new(opts(Compression::None));
    assert_eq!(b.estimated_size(), 0);
    let mut last = 0;
    for i in 0..10_000u32 {
        b.add(&Entry::put(format!("key{i:06}"), 1, vec![b'x'; 100]))
            .unwrap();
        let now = b.estimated_size();
        assert!(now >= last);
        last = now;
    }
    let (sst, _) = b.finish().unwrap();
    assert!(
        last <= sst.len() && sst.len() < last + last / 10,
        "{last} vs {}",
        sst.len()
    );
}

fn small_sst(c: Compression) -> (Bytes, Vec<Entry>) {
    let mut entries: Vec<Entry> = (0..24u32)
        .map(|i| {
            let mut e = Entry::put(
                format!("k{:02}", i / 2),
                100 - u64::from(i % 2),
                format!("value number {i}"),
            );
            if i % 5 == 0 {
                e = Entry::delete(e.key, e.seq);
            }
            if i % 3 == 0 {
                e.expires_at_ms = 10_000 + u64::from(i);
            }
            e
        })
        .collect();
    entries.sort_by(|a, b| a.internal_cmp(b));
    let o = SstOptions {
        block_size: 128,
        restart_interval: 4,
        compression: c,
        bloom_bits_per_key: 10,
    };
    (build(&entries, o).0, entries)
}

#[test]
fn sst_every_byte_flip_is_detected() {
    for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
        let (sst, entries) = small_sst(c);
        assert_eq!(read_all_entries(&sst).unwrap(), entries);
        for mask in [0x01, 0x80, 0xff] {
            for (i, bad) in flips(&sst, mask) {
                assert!(
                    read_all_entries(&bad).is_err(),
                    "{c:?}: mask {mask:#x} at byte {i}"
                );
            }
        }
    }
}

#[test]
fn sst_every_flip_in_each_part_is_detected_by_its_decoder() {
    for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
        let (sst, _) = small_sst(c);
        let p = parse(&sst);
        let tail = &sst[sst.len() - SST_FOOTER_LEN..];
        for (i, bad) in flips(tail, 0x04) {
            assert!(SstFooter::decode(&bad).is_err(), "footer byte {i}");
        }
        for (i, bad) in flips(&sst[p.footer.index.range()], 0x04) {
            assert!(SstIndex::decode(&bad).is_err(), "index byte {i}");
        }
        for (i, bad) in flips(&sst[p.footer.filter.range()], 0x04) {
            assert!(BloomFilter::decode(&bad).is_err(), "filter byte {i}");
        }
        for (i, bad) in flips(&sst[p.footer.props.range()], 0x04) {
            assert!(decode_props(&bad).is_err(), "props byte {i}");
        }
        for (_, h) in &p.index.blocks {
            for (i, bad) in flips(&sst[h.range()], 0x04) {
                assert!(
                    DataBlock::decode(&bad).is_err(),
                    "{c:?} block {h:?} byte {i}"
                );
            }
        }
        // A block decoded from the wrong handle (shifted by one byte) is rejected.
        let (_, h) = p.index.blocks[1];
        assert!(DataBlock::decode(&sst[h.offset as usize - 1..h.end() as usize - 1]).is_err());
        assert!(DataBlock::decode(&sst[h.offset as usize + 1..h.end() as usize + 1]).is_err());
    }
}

#[test]
fn sst_every_truncation_is_detected() {
    for c in [Compression::None, Compression::Lz4] {
        let (sst, _) = small_sst(c);
        for len in 0..sst.len() {
            assert!(read_all_entries(&sst[..len]).is_err(), "length {len}");
        }
        // Truncated blocks too.
        let p = parse(&sst);
        for (_, h) in &p.index.blocks {
            let raw = &sst[h.range()];
            for len in 0..raw.len() {
                assert!(DataBlock::decode(&raw[..len]).is_err());
            }
        }
        // Extra bytes before the footer are noticed.
        let mut longer = sst[..sst.len() - SST_FOOTER_LEN].to_vec();
        longer.push(0);
        longer.extend_from_slice(&sst[sst.len() - SST_FOOTER_LEN..]);
        assert!(read_all_entries(&longer).is_err());
    }
}

#[test]
fn sst_random_damage_never_panics() {
    let mut r = rng(9);
    for c in [Compression::None, Compression::Lz4, Compression::Zstd(1)] {
        let (sst, _) = small_sst(c);
        for _ in 0..3000 {
            let mut bad = sst.to_vec();
            for _ in 0..r.random_range(1..6) {
                let i = r.random_range(0..bad.len());
                bad[i] = r.random();
            }
            if bad[..] != sst[..] {
                assert!(read_all_entries(&bad).is_err());
            }
        }
    }
    for _ in 0..3000 {
        let len = r.random_range(0..300);
        let junk: Vec<u8> = (0..len).map(|_| r.random()).collect();
        assert!(read_all_entries(&junk).is_err());
        assert!(DataBlock::decode(&junk).is_err() || len >= 5);
        let _ = SstIndex::decode(&junk);
        let _ = BloomFilter::decode(&junk);
        let _ = decode_props(&junk);
        if junk.len() >= SST_FOOTER_LEN {
            assert!(SstFooter::decode(&junk[..SST_FOOTER_LEN]).is_err());
        }
    }
}

/// An SST handed over in parts as it fills is the same object, byte for byte, as one built
/// whole: block offsets count the bytes already handed over.
#[test]
fn an_sst_taken_in_parts_is_the_same_object() {
    let mut r = rng(0x5157);
    for compression in COMPRESSIONS {
        let entries = random_entries(&mut r, 3_000, 200);
        let (whole, props) = build(&entries, opts(compression));
        for min in [1usize, 4096, 100_000] {
            let mut b = SstBuilder::with_capacity(opts(compression), min);
            let mut parts = Vec::new();
            for e in &entries {
                b.add(e).unwrap();
                if let Some(p) = b.take_written(min) {
                    assert!(p.len() >= min, "a part under its minimum");
                    parts.push(p);
                }
            }
            let before = parts.len();
            let (tail, streamed_props) = b.finish().unwrap();
            parts.push(tail);
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            assert!(
                before > 0 || min > whole.len(),
                "nothing was handed over early"
            );
            assert_eq!(joined, whole.to_vec(), "{compression:?}, parts of {min}");
            assert_eq!(streamed_props, props);
            assert_eq!(read_all_entries(&Bytes::from(joined)).unwrap(), entries);
        }
    }
}

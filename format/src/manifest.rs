//! Manifests: one immutable object per version of a partition's LSM tree.
//!
//! ```text
//! 0        8  magic "STRATMAN"
//! 8        4  u32 format version (1)
//! 12       8  u64 body length B
//! 20       B  body
//! 20+B     4  u32 crc32c of bytes 0..20+B
//! body: u64 version | u64 writer_epoch | u64 last_flushed_seq | u64 wal_replay_from
//!       | u64 next_sst_id | u64 created_ms
//!       | u32 n, SstInfo * n                      (L0, newest first)
//!       | u32 levels, (u32 n, SstInfo * n) * levels   (L1, L2, ...)
//!       | format 2 only: u32 roots, (u32 len, url bytes, u8 owned, u32 n, u64 id * n) * roots
//! SstInfo: u64 id | u32 level | props payload (see the SST props block)
//! ```
//!
//! Format 1 is written whenever `roots` is empty, so stores that never restored keep
//! manifests older binaries read.

use bytes::Bytes;

use crate::codec::{len_u32, put_u32, put_u64, Reader};
use crate::error::{check_crc, corrupt, FormatError, Result};
use crate::sst::{encode_props_payload, read_props_payload, SstProps};

/// Magic at the start of every manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"STRATMAN";
/// The newest manifest format version this code writes and reads. Each manifest is written
/// in the oldest format that can hold it: 1 without roots or dropped tombstones, 2 with
/// roots, 3 with `dropped_tombstone_seq`.
pub const MANIFEST_FORMAT_VERSION: u32 = 3;

const WHAT: &str = "manifest";
const HEADER_LEN: usize = 20;
/// Smallest encoding of one SstInfo (id, level, props with empty keys).
const MIN_SST_INFO_LEN: usize = 8 + 4 + 64 + 4 + 4;

/// One SST as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SstInfo {
    /// SST id (names the object).
    pub id: u64,
    /// Level: 0 for L0, 1 for L1, ...
    pub level: u32,
    /// The SST's properties.
    pub props: SstProps,
}

/// One version of a partition's LSM tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Manifest version number (1, 2, 3, ...).
    pub version: u64,
    /// Epoch of the writer that produced it.
    pub writer_epoch: u64,
    /// Every write with seq <= this is in an SST listed here.
    pub last_flushed_seq: u64,
    /// First WAL segment id that recovery must replay.
    pub wal_replay_from: u64,
    /// Next unused SST id.
    pub next_sst_id: u64,
    /// L0 SSTs, newest first.
    pub l0: Vec<SstInfo>,
    /// `levels[0]` is L1; each level sorted by smallest key, non-overlapping.
    pub levels: Vec<Vec<SstInfo>>,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// SSTs listed above that live under another store root (a keyspace restored from a
    /// snapshot reads its source's unchanged SSTs in place). Every other SST is under this
    /// store's own root.
    pub roots: Vec<SstRoot>,
    /// The highest seq of a deletion (a tombstone, or an expired value) that compaction
    /// removed together with an older version it hid (0: none). A reader of "what changed
    /// after seq S" (incremental export) sees every deletion after S only while this is at
    /// most S.
    pub dropped_tombstone_seq: u64,
}

/// SSTs of a manifest that live under another store root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SstRoot {
    /// The root's object store URL (`s3://BUCKET/PREFIX`, `file:///DIR`).
    pub url: String,
    /// The keyspace's own cold tier (its GC deletes these SSTs there once unreferenced), as
    /// opposed to another keyspace's root (a restore's source: never deleted from here).
    pub owned: bool,
    /// Ids of the SSTs there.
    pub ids: Vec<u64>,
}

impl Manifest {
    /// Every SST listed: L0 newest first, then each level in key order.
    pub fn ssts(&self) -> impl Iterator<Item = &SstInfo> {
        self.l0.iter().chain(self.levels.iter().flatten())
    }

    /// The root URL SST `id` lives under, or `None` for this store's own root. A scan of
    /// the roots table: for many lookups, build [`Manifest::root_index`] once.
    pub fn root_of(&self, id: u64) -> Option<&str> {
        self.roots
            .iter()
            .find(|r| r.ids.contains(&id))
            .map(|r| r.url.as_str())
    }

    /// SST id → the root entry it is listed under, for every SST not in this store's own
    /// root.
    pub fn root_index(&self) -> std::collections::HashMap<u64, &SstRoot> {
        self.roots
            .iter()
            .flat_map(|r| r.ids.iter().map(move |id| (*id, r)))
            .collect()
    }

    /// The SSTs of `level`: 0 is L0 (newest first), 1 is L1 (`levels[0]`), and so on; empty
    /// for a level the manifest does not have.
    pub fn level(&self, level: usize) -> &[SstInfo] {
        match level {
            0 => &self.l0,
            n => self
                .levels
                .get(n - 1)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        }
    }

    /// Checks the invariants every manifest keeps, so that a violation is an error naming the
    /// manifest, never a manifest written or read:
    /// - every SST id is listed once;
    /// - every SST's `level` field is the level it is listed in;
    /// - every SST's key range and seq range are ordered (smallest ≤ largest);
    /// - each level below L0 is sorted by smallest key, and its SSTs' key ranges are disjoint;
    /// - no SST holds a seq above `last_flushed_seq` (recovery replays the WAL from above it,
    ///   so a newer seq in an SST would be data the replay point claims is not flushed).
    pub fn validate(&self) -> Result<()> {
        let fail = |detail: String| {
            Err(FormatError::Invalid(format!(
                "manifest version {} (writer {:x}): {detail}",
                self.version, self.writer_epoch
            )))
        };
        let mut ids = std::collections::HashSet::new();
        for (level, ssts) in std::iter::once(&self.l0)
            .chain(self.levels.iter())
            .enumerate()
        {
            for (i, f) in ssts.iter().enumerate() {
                if !ids.insert(f.id) {
                    return fail(format!("SST {} is listed twice", f.id));
                }
                if f.level as usize != level {
                    return fail(format!(
                        "SST {} is listed in L{level} but says it is in L{}",
                        f.id, f.level
                    ));
                }
                let p = &f.props;
                if p.entries > 0 && p.smallest_key > p.largest_key {
                    return fail(format!("SST {}: smallest key above largest key", f.id));
                }
                if p.entries > 0 && p.min_seq > p.max_seq {
                    return fail(format!("SST {}: min seq above max seq", f.id));
                }
                if p.max_seq > self.last_flushed_seq {
                    return fail(format!(
                        "SST {} holds seq {} above last_flushed_seq {}",
                        f.id, p.max_seq, self.last_flushed_seq
                    ));
                }
                let prev = i.checked_sub(1).and_then(|j| ssts.get(j));
                if let Some(prev) = prev.filter(|_| level > 0) {
                    if prev.props.largest_key >= p.smallest_key {
                        return fail(format!(
                            "L{level}: SST {} (up to {:?}) is not below SST {} (from {:?}): \
                             the level is unsorted or overlaps",
                            prev.id,
                            String::from_utf8_lossy(&prev.props.largest_key),
                            f.id,
                            String::from_utf8_lossy(&p.smallest_key)
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops root entries of SSTs the manifest no longer lists (compacted away).
    pub fn prune_roots(&mut self) {
        if self.roots.is_empty() {
            return;
        }
        let listed: std::collections::HashSet<u64> = self.ssts().map(|f| f.id).collect();
        for r in &mut self.roots {
            r.ids.retain(|id| listed.contains(id));
        }
        self.roots.retain(|r| !r.ids.is_empty());
    }
}

/// Encodes a manifest.
///
/// # Panics
/// If a list holds 2^32 SSTs or more, or a key is 4 GiB or larger.
pub fn encode_manifest(m: &Manifest) -> Bytes {
    let mut out = Vec::new();
    out.extend_from_slice(&MANIFEST_MAGIC);
    let format = if m.dropped_tombstone_seq != 0 {
        3
    } else if !m.roots.is_empty() {
        2
    } else {
        1
    };
    put_u32(&mut out, format);
    put_u64(&mut out, 0); // body length, patched below
    for v in [
        m.version,
        m.writer_epoch,
        m.last_flushed_seq,
        m.wal_replay_from,
        m.next_sst_id,
        m.created_ms,
    ] {
        put_u64(&mut out, v);
    }
    put_ssts(&mut out, &m.l0);
    put_u32(&mut out, len_u32(m.levels.len(), "level count"));
    for level in &m.levels {
        put_ssts(&mut out, level);
    }
    if format >= 2 {
        put_u32(&mut out, len_u32(m.roots.len(), "root count"));
        for r in &m.roots {
            put_u32(&mut out, len_u32(r.url.len(), "root url"));
            out.extend_from_slice(r.url.as_bytes());
            out.push(u8::from(r.owned));
            put_u32(&mut out, len_u32(r.ids.len(), "root sst count"));
            for id in &r.ids {
                put_u64(&mut out, *id);
            }
        }
    }
    if format >= 3 {
        put_u64(&mut out, m.dropped_tombstone_seq);
    }
    let body_len = (out.len() - HEADER_LEN) as u64;
    if let Some(slot) = out.get_mut(12..HEADER_LEN) {
        slot.copy_from_slice(&body_len.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    put_u32(&mut out, crc);
    Bytes::from(out)
}

fn put_ssts(out: &mut Vec<u8>, ssts: &[SstInfo]) {
    put_u32(out, len_u32(ssts.len(), "sst count"));
    for s in ssts {
        put_u64(out, s.id);
        put_u32(out, s.level);
        encode_props_payload(&s.props, out);
    }
}

/// Decodes and verifies a manifest.
pub fn decode_manifest(data: &[u8]) -> Result<Manifest> {
    let mut r = Reader::new(data, WHAT);
    let magic: [u8; 8] = r.array("magic")?;
    if magic != MANIFEST_MAGIC {
        return Err(corrupt(WHAT, format!("bad magic {magic:02x?}")));
    }
    let version = r.u32("format version")?;
    if !(1..=MANIFEST_FORMAT_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion {
            what: WHAT,
            version,
        });
    }
    let body_len = r.u64("body length")?;
    let expected_len = (HEADER_LEN as u64)
        .checked_add(body_len)
        .and_then(|n| n.checked_add(4));
    if expected_len != Some(data.len() as u64) {
        return Err(corrupt(
            WHAT,
            format!(
                "body length {body_len} does not match object size {} (truncated?)",
                data.len()
            ),
        ));
    }
    let (covered, crc) = data
        .split_last_chunk::<4>()
        .ok_or_else(|| corrupt(WHAT, "missing checksum"))?;
    check_crc(WHAT, u32::from_le_bytes(*crc), crc32c::crc32c(covered))?;

    let body = covered.get(HEADER_LEN..).unwrap_or_default();
    let mut r = Reader::new(body, WHAT);
    let mut m = Manifest {
        version: r.u64("version")?,
        writer_epoch: r.u64("writer_epoch")?,
        last_flushed_seq: r.u64("last_flushed_seq")?,
        wal_replay_from: r.u64("wal_replay_from")?,
        next_sst_id: r.u64("next_sst_id")?,
        created_ms: r.u64("created_ms")?,
        ..Manifest::default()
    };
    m.l0 = read_ssts(&mut r)?;
    let levels = r.u32("level count")? as usize;
    m.levels = Vec::with_capacity(levels.min(r.remaining() / 4));
    for _ in 0..levels {
        m.levels.push(read_ssts(&mut r)?);
    }
    if version >= 2 {
        let n = r.u32("root count")? as usize;
        for _ in 0..n {
            let len = r.u32("root url length")? as usize;
            let url = r.bytes(len, "root url")?;
            let url = String::from_utf8(url.to_vec())
                .map_err(|_| corrupt(WHAT, "root url is not UTF-8"))?;
            let owned = match r.u8("root owned flag")? {
                0 => false,
                1 => true,
                other => return Err(corrupt(WHAT, format!("root owned flag {other}"))),
            };
            let count = r.u32("root sst count")? as usize;
            let mut ids = Vec::with_capacity(count.min(r.remaining() / 8));
            for _ in 0..count {
                ids.push(r.u64("root sst id")?);
            }
            m.roots.push(SstRoot { url, ids, owned });
        }
    }
    if version >= 3 {
        m.dropped_tombstone_seq = r.u64("dropped_tombstone_seq")?;
    }
    r.finish()?;
    // A well-formed object can still describe an impossible tree: refuse it like corruption.
    m.validate()
        .map_err(|e| corrupt(WHAT, format!("fails its invariants: {e}")))?;
    Ok(m)
}

fn read_ssts(r: &mut Reader<'_>) -> Result<Vec<SstInfo>> {
    let n = r.u32("sst count")? as usize;
    let mut ssts = Vec::with_capacity(n.min(r.remaining() / MIN_SST_INFO_LEN));
    for _ in 0..n {
        ssts.push(SstInfo {
            id: r.u64("sst id")?,
            level: r.u32("sst level")?,
            props: read_props_payload(r)?,
        });
    }
    Ok(ssts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sst(id: u64, level: u32, keys: (&str, &str), seqs: (u64, u64)) -> SstInfo {
        SstInfo {
            id,
            level,
            props: SstProps {
                smallest_key: Bytes::copy_from_slice(keys.0.as_bytes()),
                largest_key: Bytes::copy_from_slice(keys.1.as_bytes()),
                min_seq: seqs.0,
                max_seq: seqs.1,
                entries: 2,
                tombstones: 0,
                expiring: 0,
                max_expires_at_ms: 0,
                data_bytes: 10,
                file_size: 100,
            },
        }
    }

    #[test]
    fn validate_accepts_a_sound_tree_and_names_each_broken_invariant() {
        let good = Manifest {
            version: 7,
            last_flushed_seq: 100,
            l0: vec![
                sst(5, 0, ("a", "z"), (90, 100)),
                sst(4, 0, ("b", "c"), (80, 89)),
            ],
            levels: vec![vec![
                sst(1, 1, ("a", "f"), (1, 50)),
                sst(2, 1, ("g", "m"), (2, 60)),
            ]],
            ..Manifest::default()
        };
        good.validate().expect("sound");
        assert_eq!(good.level(1).len(), 2);
        assert!(good.level(3).is_empty());
        decode_manifest(&encode_manifest(&good)).expect("round trip");

        let broken = |f: &dyn Fn(&mut Manifest), needle: &str| {
            let mut m = good.clone();
            f(&mut m);
            let e = m.validate().expect_err(needle).to_string();
            assert!(
                e.contains(needle) && e.contains("manifest version 7"),
                "{e}"
            );
            // And a stored copy of it does not decode.
            let e = decode_manifest(&encode_manifest(&m)).expect_err(needle);
            assert!(e.to_string().contains(needle), "{e}");
        };
        broken(&|m| m.levels[0][1].id = 5, "listed twice");
        broken(&|m| m.levels[0][0].level = 2, "says it is in L2");
        broken(&|m| m.levels[0].swap(0, 1), "unsorted or overlaps");
        broken(
            &|m| m.levels[0][1].props.smallest_key = Bytes::from_static(b"c"),
            "unsorted or overlaps",
        );
        broken(&|m| m.l0[0].props.max_seq = 101, "above last_flushed_seq");
        broken(
            &|m| m.l0[1].props.smallest_key = Bytes::from_static(b"d"),
            "smallest key above largest key",
        );
    }

    #[test]
    fn roots_round_trip_in_format_2_and_format_1_stays_without_them() {
        let mut m = Manifest {
            version: 3,
            ..Manifest::default()
        };
        let plain = encode_manifest(&m);
        assert_eq!(plain.get(8..12), Some(&1u32.to_le_bytes()[..]));
        assert_eq!(decode_manifest(&plain).unwrap(), m);
        m.roots = vec![
            SstRoot {
                url: "s3://bucket/old".into(),
                ids: vec![7, 9],
                owned: false,
            },
            SstRoot {
                url: "file:///srv/older".into(),
                ids: vec![1],
                owned: true,
            },
        ];
        let enc = encode_manifest(&m);
        assert_eq!(enc.get(8..12), Some(&2u32.to_le_bytes()[..]));
        let back = decode_manifest(&enc).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.root_of(9), Some("s3://bucket/old"));
        assert_eq!(back.root_of(1), Some("file:///srv/older"));
        assert_eq!(back.root_of(2), None);
        // Truncated root tables are corruption, not garbage.
        let mut cut = enc.to_vec();
        cut.truncate(cut.len() - 12);
        assert!(decode_manifest(&cut).is_err());
    }

    #[test]
    fn dropped_tombstones_round_trip_in_format_3() {
        let mut m = Manifest {
            version: 4,
            dropped_tombstone_seq: 1234,
            ..Manifest::default()
        };
        let enc = encode_manifest(&m);
        assert_eq!(enc.get(8..12), Some(&3u32.to_le_bytes()[..]));
        assert_eq!(decode_manifest(&enc).unwrap(), m);
        m.roots = vec![SstRoot {
            url: "s3://b/p".into(),
            ids: vec![5],
            owned: true,
        }];
        let enc = encode_manifest(&m);
        assert_eq!(enc.get(8..12), Some(&3u32.to_le_bytes()[..]));
        assert_eq!(decode_manifest(&enc).unwrap(), m);
        // A format-3 body cut before the field is corruption.
        let mut cut = enc.to_vec();
        cut.truncate(cut.len() - 8);
        assert!(decode_manifest(&cut).is_err());
    }

    #[test]
    fn prune_roots_keeps_only_listed_ssts() {
        let info = |id| SstInfo {
            id,
            level: 0,
            props: crate::sst::SstProps {
                smallest_key: Bytes::from_static(b"a"),
                largest_key: Bytes::from_static(b"b"),
                min_seq: 1,
                max_seq: 1,
                entries: 1,
                tombstones: 0,
                expiring: 0,
                max_expires_at_ms: 0,
                data_bytes: 1,
                file_size: 1,
            },
        };
        let mut m = Manifest {
            l0: vec![info(7)],
            roots: vec![
                SstRoot {
                    url: "a".into(),
                    ids: vec![7, 8],
                    owned: false,
                },
                SstRoot {
                    url: "b".into(),
                    ids: vec![9],
                    owned: true,
                },
            ],
            ..Manifest::default()
        };
        m.prune_roots();
        assert_eq!(
            m.roots,
            vec![SstRoot {
                url: "a".into(),
                ids: vec![7],
                owned: false,
            }]
        );
    }
}

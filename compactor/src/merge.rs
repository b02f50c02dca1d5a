//! The pure part of a compaction job: merging sorted inputs, deciding what survives, and
//! cutting the survivors into output SSTs.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use bytes::Bytes;
use bytes::BytesMut;
use strata_format::{Entry, Kind, SstBuilder, SstInfo, SstOptions, SstProps};

use crate::error::{Result, ResultExt};

/// Counters of one merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MergeCounts {
    pub entries_in: u64,
    pub entries_out: u64,
    pub dropped_tombstones: u64,
    pub dropped_expired: u64,
    /// The highest seq of a dropped tombstone or expired value that hid an older version
    /// (0: none): a deletion a reader of changes can no longer see.
    pub max_dropped_tombstone_seq: u64,
}

impl MergeCounts {
    /// Adds the counts of another part of the same job.
    pub(crate) fn add(&mut self, other: &MergeCounts) {
        self.entries_in += other.entries_in;
        self.entries_out += other.entries_out;
        self.dropped_tombstones += other.dropped_tombstones;
        self.dropped_expired += other.dropped_expired;
        self.max_dropped_tombstone_seq = self
            .max_dropped_tombstone_seq
            .max(other.max_dropped_tombstone_seq);
    }
}

/// Answers "does any level deeper than the output level hold a file whose key range covers
/// this key?" for keys asked in ascending order, in amortized constant time per key.
pub(crate) struct DeeperRanges<'a> {
    /// Per deeper level, its files sorted by smallest key (non-overlapping within a level).
    levels: &'a [Vec<SstInfo>],
    /// Per level, the first file whose largest key is not below the last key asked.
    pos: Vec<usize>,
}

impl<'a> DeeperRanges<'a> {
    pub(crate) fn new(levels: &'a [Vec<SstInfo>]) -> Self {
        DeeperRanges {
            levels,
            pos: vec![0; levels.len()],
        }
    }

    /// True if some deeper file may hold `key`. Keys must be asked in ascending order.
    pub(crate) fn covers(&mut self, key: &[u8]) -> bool {
        let mut covered = false;
        for (files, pos) in self.levels.iter().zip(self.pos.iter_mut()) {
            while files
                .get(*pos)
                .is_some_and(|f| f.props.largest_key.as_ref() < key)
            {
                *pos += 1;
            }
            if files
                .get(*pos)
                .is_some_and(|f| f.props.smallest_key.as_ref() <= key)
            {
                covered = true;
            }
        }
        covered
    }
}

/// The head of one input in the merge heap.
struct Head {
    entry: Entry,
    /// Index of the input; lower wins ties (inputs are given newest first).
    src: usize,
}

impl Head {
    fn order(&self, other: &Head) -> Ordering {
        self.entry
            .internal_cmp(&other.entry)
            .then_with(|| self.src.cmp(&other.src))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.order(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the smallest internal key first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.order(self)
    }
}

/// Merges `sources` (each in internal key order; given newest first so that the first
/// source wins a tie) and hands every surviving entry, in internal key order, to `emit`.
///
/// Only the newest version of each key survives. A newest version that is a tombstone or
/// has expired at `now_ms` is dropped when no file of `deeper` may hold its key (the output
/// is the bottom for that key); otherwise it is kept unchanged so that it keeps shadowing
/// the older versions below.
///
/// Sources are streams (`stream.rs`): an entry is pulled only when its predecessor from the
/// same source leaves the heap, so the merge holds one entry per source, and a source's read
/// error fails the merge.
pub(crate) fn merge<I>(
    sources: Vec<I>,
    now_ms: u64,
    deeper: &[Vec<SstInfo>],
    emit: impl FnMut(Entry) -> Result<()>,
) -> Result<MergeCounts>
where
    I: Iterator<Item = Result<Entry>>,
{
    merge_inner(sources, now_ms, Some(deeper), emit)
}

/// Merges `sources` as [`merge`] does but keeps the newest version of every key, deletions
/// and expired values included: the partition as a reader of changes sees it (the export).
pub(crate) fn merge_newest<I>(sources: Vec<I>, emit: impl FnMut(Entry) -> Result<()>) -> Result<()>
where
    I: Iterator<Item = Result<Entry>>,
{
    merge_inner(sources, 0, None, emit).map(|_| ())
}

/// `deeper` `None`: nothing is dropped but older versions.
fn merge_inner<I>(
    sources: Vec<I>,
    now_ms: u64,
    deeper: Option<&[Vec<SstInfo>]>,
    mut emit: impl FnMut(Entry) -> Result<()>,
) -> Result<MergeCounts>
where
    I: Iterator<Item = Result<Entry>>,
{
    let mut iters = sources;
    let mut heap = BinaryHeap::with_capacity(iters.len());
    for (src, it) in iters.iter_mut().enumerate() {
        if let Some(entry) = it.next().transpose()? {
            heap.push(Head { entry, src });
        }
    }
    let mut deeper = deeper.map(DeeperRanges::new);
    let mut counts = MergeCounts::default();
    let mut last_key: Option<Bytes> = None;
    // The seq of the current key's dropped deletion, until an older version it hid shows up.
    let mut dropped_hiding: Option<u64> = None;
    while let Some(Head { entry, src }) = heap.pop() {
        if let Some(next) = iters.get_mut(src).and_then(Iterator::next).transpose()? {
            heap.push(Head { entry: next, src });
        }
        counts.entries_in += 1;
        if last_key.as_ref() == Some(&entry.key) {
            // An older version of a key whose newest version was already decided. If that
            // was a deletion now dropped, a reader of changes who holds this version can no
            // longer learn it is gone: record the deletion's seq. (A dropped deletion that
            // hid nothing loses nothing: no older version of the key is left anywhere, and
            // a reader applies a value's own expiry from its `expires_at`.)
            if let Some(seq) = dropped_hiding.take() {
                counts.max_dropped_tombstone_seq = counts.max_dropped_tombstone_seq.max(seq);
            }
            continue;
        }
        last_key = Some(entry.key.clone());
        dropped_hiding = None;
        let tombstone = entry.kind == Kind::Delete;
        let expired = !tombstone && entry.is_expired(now_ms);
        if (tombstone || expired) && deeper.as_mut().is_some_and(|d| !d.covers(&entry.key)) {
            dropped_hiding = Some(entry.seq);
            if tombstone {
                counts.dropped_tombstones += 1;
            } else {
                counts.dropped_expired += 1;
            }
            continue;
        }
        counts.entries_out += 1;
        emit(entry)?;
    }
    Ok(counts)
}

/// What [`Cutter`] hands over as it cuts.
#[derive(Debug)]
pub(crate) enum Cut {
    /// The next bytes of the output being built (at least the cutter's part size).
    Part(Bytes),
    /// The last bytes of an output, and its properties: the output is whole.
    Done(Bytes, SstProps),
}

/// Cuts a stream of entries (in internal key order) into SSTs of about `target` bytes, each
/// handed over as it fills in parts of exactly `part` bytes but its last (some stores want
/// every part but the last the same size), so an output being built holds about one part
/// however large it grows.
pub(crate) struct Cutter {
    opts: SstOptions,
    target: u64,
    part: usize,
    builder: Option<SstBuilder>,
    /// Bytes of the output being built that the builder handed over and no part holds yet
    /// (fewer than `part` between calls).
    carry: BytesMut,
}

impl Cutter {
    pub(crate) fn new(opts: SstOptions, target: u64, part: usize) -> Self {
        Cutter {
            opts,
            target: target.max(1),
            part: part.max(1),
            builder: None,
            carry: BytesMut::new(),
        }
    }

    /// Adds an entry; returns the parts and finished SST it completed, in order. Since only
    /// one version of a key reaches here, a key never straddles two outputs.
    pub(crate) fn add(&mut self, e: &Entry) -> Result<Vec<Cut>> {
        let part = self.part;
        let builder = self
            .builder
            // Reserved for a part and a block or entry beyond it, so the buffer is not
            // doubled past it (an entry larger than that grows it, once).
            .get_or_insert_with(|| {
                let cap = part.min(1 << 30) + (1 << 20);
                SstBuilder::with_capacity(self.opts.clone(), cap)
            });
        builder
            .add(e)
            .context("adding a merged entry to an output SST")?;
        if builder.estimated_size() as u64 >= self.target {
            return self.finish();
        }
        let mut cuts = Vec::new();
        if let Some(b) = builder.take_written(part - self.carry.len()) {
            self.carry.extend_from_slice(&b);
            while self.carry.len() >= part {
                cuts.push(Cut::Part(self.carry.split_to(part).freeze()));
            }
        }
        Ok(cuts)
    }

    /// Finishes the pending SST, if any entry is pending: its last parts and the rest.
    pub(crate) fn finish(&mut self) -> Result<Vec<Cut>> {
        match self.builder.take() {
            Some(b) if !b.is_empty() => {
                let (tail, props) = b.finish().context("finishing an output SST")?;
                self.carry.extend_from_slice(&tail);
                let mut cuts = Vec::new();
                while self.carry.len() > self.part {
                    cuts.push(Cut::Part(self.carry.split_to(self.part).freeze()));
                }
                cuts.push(Cut::Done(self.carry.split().freeze(), props));
                Ok(cuts)
            }
            _ => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_format::read_all_entries;

    fn info(id: u64, level: u32, lo: &str, hi: &str) -> SstInfo {
        SstInfo {
            id,
            level,
            props: SstProps {
                smallest_key: Bytes::copy_from_slice(lo.as_bytes()),
                largest_key: Bytes::copy_from_slice(hi.as_bytes()),
                min_seq: 0,
                max_seq: 0,
                entries: 1,
                tombstones: 0,
                expiring: 0,
                max_expires_at_ms: 0,
                data_bytes: 1,
                file_size: 100,
            },
        }
    }

    fn run(sources: Vec<Vec<Entry>>, deeper: &[Vec<SstInfo>]) -> (Vec<Entry>, MergeCounts) {
        let mut out = Vec::new();
        let sources = sources.into_iter().map(|s| s.into_iter().map(Ok)).collect();
        let counts = merge(sources, 1_000, deeper, |e| {
            out.push(e);
            Ok(())
        })
        .unwrap();
        (out, counts)
    }

    fn expiring(key: &str, seq: u64, value: &str, at: u64) -> Entry {
        let mut e = Entry::put(key.to_string(), seq, value.to_string());
        e.expires_at_ms = at;
        e
    }

    #[test]
    fn keeps_only_the_newest_version() {
        let newer = vec![Entry::put("a", 5, "a5"), Entry::put("c", 6, "c6")];
        let older = vec![
            Entry::put("a", 1, "a1"),
            Entry::put("b", 2, "b2"),
            Entry::put("c", 3, "c3"),
        ];
        let (out, counts) = run(vec![newer, older], &[]);
        assert_eq!(
            out,
            vec![
                Entry::put("a", 5, "a5"),
                Entry::put("b", 2, "b2"),
                Entry::put("c", 6, "c6")
            ]
        );
        assert_eq!(counts.entries_in, 5);
        assert_eq!(counts.entries_out, 3);
        // Several versions inside one source too.
        let one = vec![Entry::put("k", 9, "new"), Entry::put("k", 3, "old")];
        let (out, _) = run(vec![one], &[]);
        assert_eq!(out, vec![Entry::put("k", 9, "new")]);
    }

    #[test]
    fn tombstones_drop_only_at_the_bottom() {
        let src = vec![
            Entry::delete("a", 9),
            Entry::put("a", 1, "old"),
            Entry::delete("m", 8),
            Entry::delete("z", 7),
        ];
        // Nothing deeper: every tombstone goes, with the versions it shadows.
        let (out, counts) = run(vec![src.clone()], &[]);
        assert!(out.is_empty());
        assert_eq!(counts.dropped_tombstones, 3);
        assert_eq!(counts.entries_in, 4);
        // A deeper file covers "k".."n": the tombstone of "m" stays.
        let deeper = vec![vec![info(1, 3, "k", "n")]];
        let (out, counts) = run(vec![src], &deeper);
        assert_eq!(out, vec![Entry::delete("m", 8)]);
        assert_eq!(counts.dropped_tombstones, 2);
    }

    #[test]
    fn expired_values_drop_at_the_bottom_and_stay_as_is_above() {
        let src = vec![
            expiring("a", 3, "gone", 1_000),
            Entry::put("a", 1, "older"),
            expiring("b", 4, "live", 1_001),
            expiring("c", 5, "gone", 10),
        ];
        let (out, counts) = run(vec![src.clone()], &[]);
        assert_eq!(out, vec![expiring("b", 4, "live", 1_001)]);
        assert_eq!(counts.dropped_expired, 2);
        let deeper = vec![vec![info(1, 2, "a", "a")], vec![info(2, 3, "c", "d")]];
        let (out, counts) = run(vec![src], &deeper);
        assert_eq!(
            out,
            vec![
                expiring("a", 3, "gone", 1_000),
                expiring("b", 4, "live", 1_001),
                expiring("c", 5, "gone", 10)
            ]
        );
        assert_eq!(counts.dropped_expired, 0);
    }

    #[test]
    fn deeper_ranges_sweep() {
        let levels = vec![
            vec![info(1, 2, "b", "d"), info(2, 2, "f", "f")],
            vec![info(3, 3, "e", "e"), info(4, 3, "x", "y")],
        ];
        let mut d = DeeperRanges::new(&levels);
        let asked: Vec<bool> = ["a", "b", "c", "d", "da", "e", "f", "g", "x", "xx", "z"]
            .iter()
            .map(|k| d.covers(k.as_bytes()))
            .collect();
        assert_eq!(
            asked,
            vec![false, true, true, true, false, true, true, false, true, true, false]
        );
    }

    #[test]
    fn cutter_cuts_at_target() {
        // Outputs of about 1,000 bytes, handed over in parts of 300: joined, each is an SST.
        let opts = SstOptions {
            block_size: 256,
            ..SstOptions::default()
        };
        let mut c = Cutter::new(opts, 1_000, 300);
        let mut outs = Vec::new();
        let mut parts = 0;
        let mut building = Vec::new();
        let mut take = |cut: Cut, outs: &mut Vec<(Bytes, SstProps)>| match cut {
            Cut::Part(p) => {
                assert_eq!(p.len(), 300, "parts but the last are all the same size");
                parts += 1;
                building.extend_from_slice(&p);
            }
            Cut::Done(tail, props) => {
                building.extend_from_slice(&tail);
                outs.push((Bytes::from(std::mem::take(&mut building)), props));
            }
        };
        for i in 0..200u32 {
            let e = Entry::put(format!("key{i:05}"), u64::from(i) + 1, vec![b'v'; 50]);
            for cut in c.add(&e).unwrap() {
                take(cut, &mut outs);
            }
        }
        for cut in c.finish().unwrap() {
            take(cut, &mut outs);
        }
        assert!(
            parts > outs.len(),
            "{parts} parts for {} outputs",
            outs.len()
        );
        assert!(outs.len() > 3, "{} outputs", outs.len());
        let mut total = 0;
        let mut prev_largest: Option<Bytes> = None;
        for (data, props) in &outs {
            assert_eq!(data.len() as u64, props.file_size);
            let entries = read_all_entries(data).unwrap();
            total += entries.len();
            if let Some(p) = &prev_largest {
                assert!(p < &props.smallest_key);
            }
            prev_largest = Some(props.largest_key.clone());
        }
        assert_eq!(total, 200);
        assert!(c.finish().unwrap().is_empty());
    }
}

//! Compaction inputs read as they are merged, block by block, never whole.
//!
//! A job used to GET every input whole and decode it into memory before merging, so its
//! memory was the size of its inputs (gigabytes for an L0 pile-up of 64 MiB files). Here each
//! input is opened with two ranged GETs (footer, index), then a task per input and key range
//! reads runs of consecutive data blocks of about `chunk_bytes` with one ranged GET each,
//! verifies and decodes them, and hands the entries to the merge through a channel of one
//! chunk. A job's input memory is therefore about `inputs × parts × 3 × chunk_bytes` (the
//! chunk being merged, the one in the channel, the one being read), and the job sizes the
//! chunk from its memory budget (`CompactionOptions::memory_bytes`).
//!
//! Every byte is still checked: the footer and index carry checksums, every data block is
//! checksum-verified on decode, the footer must agree with the manifest's size, and a stream
//! over a whole file must yield exactly the manifest's entry count.

use std::sync::Arc;

use bytes::Bytes;
use strata_format::{DataBlock, Entry, SstFooter, SstIndex, SstInfo, SST_FOOTER_LEN};
use strata_objstore::Store;
use tokio::sync::mpsc;

use crate::error::{CompactorError, Result, ResultExt};

/// Smallest and largest read of one input stream (a single block may be larger).
pub(crate) const MIN_CHUNK_BYTES: u64 = 4 << 10;
pub(crate) const MAX_CHUNK_BYTES: u64 = 8 << 20;

/// An opened input: where it is and its index.
#[derive(Debug)]
pub(crate) struct Input {
    pub info: SstInfo,
    /// Its key in `store`.
    pub key: String,
    /// How errors name it (with its root).
    pub display: String,
    pub store: Arc<dyn Store>,
    pub index: SstIndex,
}

impl Input {
    /// Reads and verifies the footer and index of `info` at `key`.
    pub(crate) async fn open(
        store: Arc<dyn Store>,
        key: String,
        display: String,
        info: SstInfo,
    ) -> Result<Input> {
        let size = info.props.file_size;
        if size < SST_FOOTER_LEN as u64 {
            return Err(CompactorError::Corrupt(format!(
                "{display}: the manifest says {size} bytes, smaller than a footer"
            )));
        }
        let tail = store
            .get_range(&key, size - SST_FOOTER_LEN as u64..size)
            .await
            .with_context(|| format!("reading the footer of {display}"))?;
        let footer = SstFooter::decode(&tail).with_context(|| format!("{display} is corrupt"))?;
        if footer.file_size() != size {
            return Err(CompactorError::Corrupt(format!(
                "{display} is {} bytes by its footer, the manifest says {size}",
                footer.file_size()
            )));
        }
        let raw = store
            .get_range(&key, footer.index.offset..footer.index.end())
            .await
            .with_context(|| format!("reading the index of {display}"))?;
        let index = SstIndex::decode(&raw).with_context(|| format!("{display} is corrupt"))?;
        if index.data_end() != footer.data_end() {
            return Err(CompactorError::Corrupt(format!(
                "{display} is corrupt: its index ends the data at {}, its footer at {}",
                index.data_end(),
                footer.data_end()
            )));
        }
        Ok(Input {
            info,
            key,
            display,
            store,
            index,
        })
    }

    /// The last key of each data block: where the input can be cut into key ranges.
    pub(crate) fn block_keys(&self) -> impl Iterator<Item = &Bytes> {
        self.index.blocks.iter().map(|(k, _)| k)
    }
}

/// The entries of one input with user keys in `[lo, hi)` (`None`: unbounded), in internal
/// key order, as they are read. Yields an error (and then nothing) if a read or a check fails.
pub(crate) struct EntryStream {
    /// Chunks of entries; `Ok(None)` marks the end. A channel that closes without that
    /// marker means the reader task died (a panic, an abort): an error, never a short input
    /// that the merge would take for the whole of it.
    rx: mpsc::Receiver<Result<Option<Vec<Entry>>>>,
    buf: std::vec::IntoIter<Entry>,
    /// The last entry handed out, to check that the stream is in internal key order across
    /// blocks and chunks (a block checks only its own order).
    last: Option<(Bytes, u64)>,
    display: String,
    failed: bool,
    ended: bool,
}

impl Iterator for EntryStream {
    type Item = Result<Entry>;

    /// Blocks the calling thread while the next chunk is read: call it from a blocking
    /// thread (the merge runs in `spawn_blocking`), never from an async task.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.ended {
            return None;
        }
        loop {
            if let Some(e) = self.buf.next() {
                // Internal key order: user key ascending, then seq descending.
                if let Some((k, seq)) = &self.last {
                    if !(e.key > *k || (e.key == *k && e.seq < *seq)) {
                        self.failed = true;
                        return Some(Err(CompactorError::Corrupt(format!(
                            "compaction input {} is out of order: {:?}@{} after {:?}@{}",
                            self.display, e.key, e.seq, k, seq
                        ))));
                    }
                }
                self.last = Some((e.key.clone(), e.seq));
                return Some(Ok(e));
            }
            match self.rx.blocking_recv() {
                Some(Ok(Some(v))) => self.buf = v.into_iter(),
                Some(Ok(None)) => {
                    self.ended = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                None => {
                    self.failed = true;
                    return Some(Err(CompactorError::Internal(format!(
                        "the task reading compaction input {} stopped before its end",
                        self.display
                    ))));
                }
            }
        }
    }
}

/// What a stream keeps of an input.
#[derive(Debug, Clone, Default)]
pub(crate) struct Range {
    pub lo: Option<Bytes>,
    pub hi: Option<Bytes>,
    /// Only keys whose hash is in this range (`None`: all; see `keep`).
    pub hash_range: Option<(u64, Option<u64>)>,
}

/// Starts reading `input`'s entries in `range`, `chunk_bytes` at a time, on the current
/// runtime.
pub(crate) fn spawn(input: Arc<Input>, range: Range, chunk_bytes: u64) -> EntryStream {
    let (tx, rx) = mpsc::channel(1);
    let display = input.display.clone();
    tokio::spawn(async move {
        let end = match read(&input, &range, chunk_bytes, &tx).await {
            Ok(()) => Ok(None),
            Err(e) => Err(e),
        };
        let _ = tx.send(end).await;
    });
    EntryStream {
        rx,
        buf: Vec::new().into_iter(),
        last: None,
        display,
        failed: false,
        ended: false,
    }
}

async fn read(
    input: &Input,
    range: &Range,
    chunk_bytes: u64,
    tx: &mpsc::Sender<Result<Option<Vec<Entry>>>>,
) -> Result<()> {
    let blocks = &input.index.blocks;
    let whole = range.lo.is_none() && range.hi.is_none();
    let mut bi = match &range.lo {
        // The first block whose last key is >= lo holds lo's first version.
        Some(lo) => input.index.find_block(lo).unwrap_or(blocks.len()),
        None => 0,
    };
    let chunk_bytes = chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
    let mut decoded = 0u64;
    while bi < blocks.len() {
        // A run of consecutive blocks of about chunk_bytes (at least one block).
        let start = blocks[bi].1.offset;
        let mut bj = bi;
        let mut end = start;
        while bj < blocks.len() && (bj == bi || end - start < chunk_bytes) {
            end = blocks[bj].1.end();
            bj += 1;
        }
        let raw = input
            .store
            .get_range(&input.key, start..end)
            .await
            .with_context(|| format!("reading compaction input {}", input.display))?;
        if raw.len() as u64 != end - start {
            return Err(CompactorError::Corrupt(format!(
                "compaction input {}: asked for {} bytes at {start}, got {}",
                input.display,
                end - start,
                raw.len()
            )));
        }
        let handles: Vec<_> = blocks[bi..bj]
            .iter()
            .map(|(k, h)| (k.clone(), *h))
            .collect();
        let display = input.display.clone();
        let range = range.clone();
        let (entries, n, done) = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut n = 0u64;
            let mut done = false;
            for (index_key, h) in handles {
                let (s, e) = ((h.offset - start) as usize, (h.end() - start) as usize);
                let block = raw
                    .get(s..e)
                    .ok_or_else(|| {
                        CompactorError::Corrupt(format!(
                            "{display}: block at {} outside the read",
                            h.offset
                        ))
                    })
                    .and_then(|b| {
                        DataBlock::decode(b).with_context(|| {
                            format!(
                                "compaction input {display} is corrupt (block at offset {})",
                                h.offset
                            )
                        })
                    })?;
                n += block.len() as u64;
                let entries = block.into_entries();
                // The index, which picks the blocks a part reads, must agree with the block:
                // a part that skipped blocks by a wrong index key would silently lose entries.
                if entries.last().map(|e| &e.key) != Some(&index_key) {
                    return Err(CompactorError::Corrupt(format!(
                        "compaction input {display} is corrupt: the block at offset {} ends \
                         at {:?}, its index entry says {:?}",
                        h.offset,
                        entries.last().map(|e| &e.key),
                        index_key
                    )));
                }
                for entry in entries {
                    if range.lo.as_ref().is_some_and(|lo| entry.key < *lo) {
                        continue;
                    }
                    if range.hi.as_ref().is_some_and(|hi| entry.key >= *hi) {
                        done = true;
                        break;
                    }
                    if range
                        .hash_range
                        .is_some_and(|r| !crate::compactor::keep_key(&entry.key, r))
                    {
                        continue;
                    }
                    out.push(entry);
                }
                if done {
                    break;
                }
            }
            Ok::<_, CompactorError>((out, n, done))
        })
        .await
        .with_context(|| format!("the task decoding {} failed", input.display))??;
        decoded += n;
        if !entries.is_empty() && tx.send(Ok(Some(entries))).await.is_err() {
            // The merge stopped (it failed elsewhere): nothing more to read.
            return Ok(());
        }
        if done {
            return Ok(());
        }
        bi = bj;
    }
    if whole && decoded != input.info.props.entries {
        return Err(CompactorError::Corrupt(format!(
            "compaction input {} holds {decoded} entries, the manifest says {}",
            input.display, input.info.props.entries
        )));
    }
    Ok(())
}

/// Cuts the key space of `inputs` into at most `parts` ranges of about equal data, at block
/// boundaries (quantiles of every input's block last keys). All versions of a key fall in
/// one range. Returns the boundaries: range `i` is `[b(i-1), b(i))`.
pub(crate) fn split_points(inputs: &[Arc<Input>], parts: usize) -> Vec<Bytes> {
    if parts <= 1 {
        return Vec::new();
    }
    let mut keys: Vec<&Bytes> = inputs.iter().flat_map(|i| i.block_keys()).collect();
    if keys.len() < parts * 2 {
        return Vec::new();
    }
    keys.sort();
    let mut bounds: Vec<Bytes> = (1..parts)
        .filter_map(|i| keys.get(i * keys.len() / parts).map(|k| (*k).clone()))
        .collect();
    bounds.dedup();
    // A bound equal to the smallest key would leave the first range empty.
    if bounds.first().is_some_and(|b| Some(&b) == keys.first()) {
        bounds.remove(0);
    }
    bounds
}

/// The bytes one stream may read at a time so that `streams` of them, three chunks each,
/// stay within `budget`.
pub(crate) fn chunk_bytes(budget: u64, streams: usize) -> u64 {
    (budget / (streams.max(1) as u64 * 3)).clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
}

//! Reading one SST: metadata (index, bloom) pinned in memory, data blocks through the
//! block cache, each miss one ranged GET. Every block is checksum-verified on every decode,
//! including blocks that come back from the cache's disk tier.

use crate::error::{EngineError, EngineResult};
use bytes::Bytes;
use std::sync::Arc;
use strata_cache::{BlockCache, BlockKey};
use strata_format::{BloomFilter, DataBlock, Entry, SstFooter, SstIndex, SstInfo, SST_FOOTER_LEN};
use strata_manifest::layout::sst_path;
use strata_objstore::Store;

/// Where an SST's blocks come from.
#[derive(Clone, Debug)]
pub struct BlockSource {
    pub store: Arc<dyn Store>,
    pub cache: BlockCache,
    pub store_uid: u64,
    /// Other store roots a manifest may name for some of its SSTs.
    pub roots: strata_objstore::Roots,
}

impl BlockSource {
    /// The source for SSTs under another root: that root's store, and a cache uid of its
    /// own (derived from the URL, so cached blocks survive restarts and never mix with this
    /// store's SSTs of the same id).
    pub fn at_root(&self, url: &str) -> EngineResult<BlockSource> {
        let store = self.roots.get(url).map_err(EngineError::from)?;
        Ok(BlockSource {
            store,
            cache: self.cache.clone(),
            store_uid: self.store_uid ^ xxhash_rust::xxh3::xxh3_64(url.as_bytes()),
            roots: self.roots.clone(),
        })
    }
}

impl std::fmt::Debug for SstReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SstReader")
            .field("id", &self.info.id)
            .field("path", &self.path)
            .finish()
    }
}

/// An open SST.
pub struct SstReader {
    pub info: SstInfo,
    pub partition: u32,
    path: String,
    index: SstIndex,
    bloom: BloomFilter,
    src: BlockSource,
}

fn meta_err(path: &str, e: strata_format::FormatError) -> EngineError {
    EngineError::Corruption(format!("SST {path}: {e}"))
}

impl SstReader {
    /// The cache uid of the store this reader reads from (differs per root).
    pub fn store_uid(&self) -> u64 {
        self.src.store_uid
    }

    /// Opens an SST from storage: one GET for the footer, one for filter+index+props.
    pub async fn open(src: BlockSource, partition: u32, info: SstInfo) -> EngineResult<Self> {
        let path = sst_path(partition, info.id);
        let size = info.props.file_size;
        if size < SST_FOOTER_LEN as u64 {
            return Err(EngineError::Corruption(format!(
                "SST {path}: manifest says {size} bytes, smaller than a footer"
            )));
        }
        let tail = src
            .store
            .get_range(&path, size - SST_FOOTER_LEN as u64..size)
            .await
            .map_err(|e| with_path(e.into(), &path))?;
        let footer = SstFooter::decode(&tail).map_err(|e| meta_err(&path, e))?;
        if footer.file_size() != size {
            return Err(EngineError::Corruption(format!(
                "SST {path}: footer implies {} bytes, manifest says {size}",
                footer.file_size()
            )));
        }
        let span = footer.meta_span();
        let meta = src
            .store
            .get_range(&path, span.offset..span.offset + span.len)
            .await
            .map_err(|e| with_path(e.into(), &path))?;
        Self::from_meta(src, partition, info, path, &footer, &meta, span.offset)
    }

    /// Opens an SST whose bytes are at hand (just written by a flush or a compaction), and
    /// warms the cache with its data blocks so fresh data reads without a GET.
    pub fn from_bytes(
        src: BlockSource,
        partition: u32,
        info: SstInfo,
        data: &Bytes,
    ) -> EngineResult<Self> {
        let path = sst_path(partition, info.id);
        let len = data.len();
        if len < SST_FOOTER_LEN {
            return Err(EngineError::Corruption(format!("SST {path}: too short")));
        }
        let footer =
            SstFooter::decode(&data[len - SST_FOOTER_LEN..]).map_err(|e| meta_err(&path, e))?;
        let span = footer.meta_span();
        let (start, end) = (span.offset as usize, (span.offset + span.len) as usize);
        if end > len || start > end {
            return Err(EngineError::Corruption(format!(
                "SST {path}: metadata out of bounds"
            )));
        }
        let meta = data.slice(start..end);
        let reader = Self::from_meta(src, partition, info, path, &footer, &meta, span.offset)?;
        for (_, h) in &reader.index.blocks {
            let (s, e) = (h.offset as usize, (h.offset + h.len) as usize);
            if e <= len && s < e {
                // A copy, not a slice: a slice would keep the whole SST's buffer alive for
                // as long as any of its blocks stays cached, many times what the cache
                // counts (the flood profile: 1.2 GB of flushed SST buffers pinned this way).
                reader.src.cache.insert(
                    reader.block_key(h.offset),
                    Bytes::copy_from_slice(&data[s..e]),
                );
            }
        }
        Ok(reader)
    }

    fn from_meta(
        src: BlockSource,
        partition: u32,
        info: SstInfo,
        path: String,
        footer: &SstFooter,
        meta: &[u8],
        meta_offset: u64,
    ) -> EngineResult<Self> {
        let slice = |h: strata_format::BlockHandle| -> EngineResult<&[u8]> {
            let s = h.offset.checked_sub(meta_offset).map(|v| v as usize);
            match s {
                Some(s) if s + h.len as usize <= meta.len() => Ok(&meta[s..s + h.len as usize]),
                _ => Err(EngineError::Corruption(format!(
                    "SST {path}: block {h:?} outside metadata"
                ))),
            }
        };
        let bloom = BloomFilter::decode(slice(footer.filter)?).map_err(|e| meta_err(&path, e))?;
        let index = SstIndex::decode(slice(footer.index)?).map_err(|e| meta_err(&path, e))?;
        Ok(SstReader {
            info,
            partition,
            path,
            index,
            bloom,
            src,
        })
    }

    fn block_key(&self, offset: u64) -> BlockKey {
        BlockKey {
            store_uid: self.src.store_uid,
            partition: self.partition,
            sst_id: self.info.id,
            offset,
        }
    }

    async fn block(&self, i: usize) -> EngineResult<DataBlock> {
        let Some((_, h)) = self.index.blocks.get(i) else {
            return Err(EngineError::Internal(format!(
                "SST {}: block {i} out of range",
                self.path
            )));
        };
        let h = *h;
        let store = self.src.store.clone();
        let path = self.path.clone();
        let raw = self
            .src
            .cache
            .get_or_fetch(self.block_key(h.offset), move || async move {
                store
                    .get_range(&path, h.offset..h.offset + h.len)
                    .await
                    .map_err(anyhow::Error::from)
            })
            .await
            .map_err(|e| EngineError::Unavailable(format!("reading SST {}: {e:#}", self.path)))?;
        match DataBlock::decode(&raw) {
            Ok(b) => Ok(b),
            Err(cached_err) => {
                // The cached copy may be the bad one (a disk tier is only a cache): drop it and
                // read the object store once more before calling the SST corrupt.
                self.src.cache.remove(&self.block_key(h.offset));
                let raw = self
                    .src
                    .store
                    .get_range(&self.path, h.offset..h.offset + h.len)
                    .await?;
                let block = DataBlock::decode(&raw).map_err(|e| {
                    EngineError::Corruption(format!(
                        "SST {} block at offset {}: {e}",
                        self.path, h.offset
                    ))
                })?;
                tracing::warn!(sst = %self.path, offset = h.offset, error = %cached_err, "cached block was corrupt; re-read from the object store");
                self.src.cache.insert(self.block_key(h.offset), raw);
                Ok(block)
            }
        }
    }

    /// Whether `key` is inside this SST's key range.
    pub fn covers(&self, key: &[u8]) -> bool {
        key >= self.info.props.smallest_key.as_ref() && key <= self.info.props.largest_key.as_ref()
    }

    /// The newest entry of `key` with seq <= `read_seq`.
    pub async fn get(&self, key: &[u8], read_seq: u64) -> EngineResult<Option<Entry>> {
        if !self.covers(key) || !self.bloom.may_contain(key) {
            return Ok(None);
        }
        let Some(mut bi) = self.index.find_block(key) else {
            return Ok(None);
        };
        // Versions of one key may spill over block boundaries.
        loop {
            let block = self.block(bi).await?;
            let entries = block.entries();
            let pos = block.seek(key, read_seq);
            if let Some(e) = entries.get(pos) {
                return Ok((e.key.as_ref() == key).then(|| e.clone()));
            }
            bi += 1;
            match self.index.blocks.get(bi) {
                Some((first_key_bound, _)) if first_key_bound.as_ref() >= key => {}
                _ => return Ok(None),
            }
            // The next block's last key is >= key; it may start with more versions of key.
        }
    }

    /// For each distinct key in `[start, end)`, the newest entry with seq <= `read_seq`, in
    /// key order, at most `max_keys`, and no more once their keys and values hold `max_bytes`
    /// (at least one). Returns true if it stopped because of either bound.
    pub async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        read_seq: u64,
        max_keys: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> EngineResult<bool> {
        if end.is_some_and(|e| self.info.props.smallest_key.as_ref() >= e)
            || self.info.props.largest_key.as_ref() < start
        {
            return Ok(false);
        }
        let Some(mut bi) = self.index.find_block(start) else {
            return Ok(false);
        };
        let mut last_key: Option<Bytes> = None;
        let mut n = 0;
        let mut bytes = 0usize;
        while bi < self.index.blocks.len() {
            let block = self.block(bi).await?;
            let entries = block.entries();
            let from = block.seek(start, u64::MAX);
            for e in entries.iter().skip(from) {
                if end.is_some_and(|end| e.key.as_ref() >= end) {
                    return Ok(false);
                }
                if e.seq > read_seq || last_key.as_ref() == Some(&e.key) {
                    continue;
                }
                if n == max_keys || bytes >= max_bytes {
                    return Ok(true);
                }
                last_key = Some(e.key.clone());
                bytes += e.key.len() + e.value.len();
                out.push(e.clone());
                n += 1;
            }
            bi += 1;
        }
        Ok(false)
    }
}

fn with_path(e: EngineError, path: &str) -> EngineError {
    match e {
        EngineError::Corruption(m) => EngineError::Corruption(format!("SST {path}: {m}")),
        other => other,
    }
}

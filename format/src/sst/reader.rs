//! Whole-object decoding, with every cross-check between the SST's parts.

use crate::entry::{internal_cmp, Entry, Kind};
use crate::error::{corrupt, Result};
use crate::sst::block::DataBlock;
use crate::sst::bloom::BloomFilter;
use crate::sst::footer::{BlockHandle, SstFooter, SST_FOOTER_LEN};
use crate::sst::index::SstIndex;
use crate::sst::props::{decode_props, SstProps};

const WHAT: &str = "sst";

fn slice<'a>(sst: &'a [u8], h: BlockHandle, name: &str) -> Result<&'a [u8]> {
    sst.get(h.range())
        .ok_or_else(|| corrupt(WHAT, format!("{name} block {h:?} is outside the object")))
}

/// Decodes every entry of a whole SST object, verifying all checksums and that the footer,
/// index, blocks, filter and props agree with each other. Meant for tests, tools and small
/// SSTs; the engine reads blocks one by one.
pub fn read_all_entries(sst: &[u8]) -> Result<Vec<Entry>> {
    let tail_at = sst.len().checked_sub(SST_FOOTER_LEN).ok_or_else(|| {
        corrupt(
            WHAT,
            format!("{} bytes is shorter than the footer", sst.len()),
        )
    })?;
    let footer = SstFooter::decode(sst.get(tail_at..).unwrap_or_default())?;
    if footer.file_size() != sst.len() as u64 {
        return Err(corrupt(
            WHAT,
            format!(
                "footer implies {} bytes, object has {}",
                footer.file_size(),
                sst.len()
            ),
        ));
    }
    let index = SstIndex::decode(slice(sst, footer.index, "index")?)?;
    if index.data_end() != footer.data_end() {
        return Err(corrupt(WHAT, "index does not cover the data region"));
    }
    let filter = BloomFilter::decode(slice(sst, footer.filter, "filter")?)?;
    let props = decode_props(slice(sst, footer.props, "props")?)?;

    let mut entries: Vec<Entry> = Vec::new();
    for (last_key, h) in &index.blocks {
        let block = DataBlock::decode(slice(sst, *h, "data")?)?;
        let block_last = block.entries().last().map(|e| &e.key);
        if block_last != Some(last_key) {
            return Err(corrupt(
                WHAT,
                format!("block {h:?} does not end at its index key"),
            ));
        }
        if let (Some(prev), Some(first)) = (entries.last(), block.entries().first()) {
            if internal_cmp(&prev.key, prev.seq, &first.key, first.seq) != std::cmp::Ordering::Less
            {
                return Err(corrupt(
                    WHAT,
                    format!("block {h:?} overlaps its predecessor"),
                ));
            }
        }
        entries.extend(block.into_entries());
    }

    if let Some(e) = entries.iter().find(|e| !filter.may_contain(&e.key)) {
        return Err(corrupt(
            WHAT,
            format!("bloom filter misses key {:?}", e.key),
        ));
    }
    let expected = props_of(&entries, sst.len() as u64);
    if expected.as_ref() != Some(&props) {
        return Err(corrupt(WHAT, "props block disagrees with the entries"));
    }
    Ok(entries)
}

/// The props an SST holding `entries` (in order) must carry.
fn props_of(entries: &[Entry], file_size: u64) -> Option<SstProps> {
    let first = entries.first()?;
    let last = entries.last()?;
    let expiring = entries.iter().filter(|e| e.expires_at_ms != 0);
    Some(SstProps {
        smallest_key: first.key.clone(),
        largest_key: last.key.clone(),
        min_seq: entries.iter().map(|e| e.seq).min()?,
        max_seq: entries.iter().map(|e| e.seq).max()?,
        entries: entries.len() as u64,
        tombstones: entries.iter().filter(|e| e.kind == Kind::Delete).count() as u64,
        expiring: expiring.clone().count() as u64,
        max_expires_at_ms: expiring.map(|e| e.expires_at_ms).max().unwrap_or(0),
        data_bytes: entries
            .iter()
            .map(|e| (e.key.len() + e.value.len()) as u64)
            .sum(),
        file_size,
    })
}

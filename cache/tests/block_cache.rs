//! Scenario tests of `BlockCache`, each named for what it proves.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use std::{
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use strata_cache::{BlockCache, BlockKey, CacheConfig};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn key(sst_id: u64, offset: u64) -> BlockKey {
    BlockKey {
        store_uid: 0xfeed_beef,
        partition: 3,
        sst_id,
        offset,
    }
}

fn block(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
}

async fn memory_only(memory_bytes: usize) -> BlockCache {
    BlockCache::open(CacheConfig {
        memory_bytes,
        disk_dir: None,
        ..CacheConfig::default()
    })
    .await
    .unwrap()
}

async fn with_disk(dir: &Path, memory_bytes: usize) -> BlockCache {
    BlockCache::open(CacheConfig {
        memory_bytes,
        disk_dir: Some(dir.to_path_buf()),
        disk_bytes: 64 << 20,
    })
    .await
    .unwrap()
}

#[derive(Debug)]
struct ObjectStoreDown;

impl std::fmt::Display for ObjectStoreDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("object store down")
    }
}

impl std::error::Error for ObjectStoreDown {}

#[tokio::test]
async fn memory_only_get_insert_counts_hits_and_misses() {
    let cache = memory_only(4 * MIB).await;
    assert_eq!(cache.get(&key(1, 0)).await.unwrap(), None);

    let v = block(4 * KIB, 1);
    cache.insert(key(1, 0), v.clone());
    assert_eq!(cache.get(&key(1, 0)).await.unwrap(), Some(v));
    assert_eq!(cache.get(&key(1, 4096)).await.unwrap(), None);

    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.inserts, s.disk_hits), (1, 2, 1, 0));
    assert!(s.memory_used_bytes >= 4 * KIB as u64);
    assert_eq!(s.disk_capacity_bytes, 0);
    assert_eq!(cache.max_disk_value_len(), None);
}

#[tokio::test]
async fn get_or_fetch_fetches_on_miss_then_hits() {
    let cache = memory_only(4 * MIB).await;
    let v = block(8 * KIB, 2);

    let v2 = v.clone();
    let got = cache
        .get_or_fetch(key(2, 0), move || async move { Ok(v2) })
        .await
        .unwrap();
    assert_eq!(got, v);

    let got = cache
        .get_or_fetch(key(2, 0), || async {
            panic!("must not fetch a cached block")
        })
        .await
        .unwrap();
    assert_eq!(got, v);
    assert_eq!(cache.get(&key(2, 0)).await.unwrap(), Some(v));

    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.inserts, s.fetches), (2, 1, 1, 1));
}

#[tokio::test]
async fn get_or_fetch_returns_fetch_error_and_does_not_cache_it() {
    let cache = memory_only(4 * MIB).await;

    let err = cache
        .get_or_fetch(key(3, 0), || async {
            Err(anyhow::Error::new(ObjectStoreDown))
        })
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<ObjectStoreDown>().is_some(), "{err:#}");
    assert_eq!(cache.get(&key(3, 0)).await.unwrap(), None);

    let v = block(100, 3);
    let v2 = v.clone();
    let got = cache
        .get_or_fetch(key(3, 0), move || async move { Ok(v2) })
        .await
        .unwrap();
    assert_eq!(got, v);

    let s = cache.stats();
    assert_eq!((s.fetches, s.fetch_errors, s.inserts), (2, 1, 1));
}

#[tokio::test]
async fn concurrent_get_or_fetch_share_one_fetch() {
    let cache = memory_only(4 * MIB).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let v = block(16 * KIB, 4);

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            let calls = calls.clone();
            let v = v.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch(key(4, 0), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        strata_clock::sleep(Duration::from_millis(100)).await;
                        Ok(v)
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), v);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!((s.fetches, s.inserts, s.hits + s.misses), (1, 1, 8));
}

#[tokio::test]
async fn concurrent_callers_sharing_a_failed_fetch_all_get_an_error() {
    let cache = memory_only(4 * MIB).await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch(key(5, 0), || async {
                        strata_clock::sleep(Duration::from_millis(50)).await;
                        Err(anyhow::Error::new(ObjectStoreDown))
                    })
                    .await
            })
        })
        .collect();
    let mut originals = 0;
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(format!("{err:#}").contains("object store down"), "{err:#}");
        if err.downcast_ref::<ObjectStoreDown>().is_some() {
            originals += 1;
        }
    }
    assert_eq!(
        originals, 1,
        "exactly the caller whose fetch ran gets the original error"
    );
    assert_eq!(cache.stats().fetches, 1);
}

#[tokio::test]
async fn memory_budget_is_counted_in_bytes() {
    let budget = MIB;
    let cache = memory_only(budget).await;
    let n = 10 * budget / (64 * KIB); // 10x the budget in 64 KiB blocks
    for i in 0..n {
        cache.insert(key(6, i as u64), block(64 * KIB, i as u8));
        assert!(cache.stats().memory_used_bytes <= budget as u64);
    }
    let used = cache.stats().memory_used_bytes;
    assert!(used >= budget as u64 / 2, "used {used}");

    // With an entry-counting weighter all of them would still be resident.
    let mut resident = 0;
    for i in 0..n {
        if cache.get(&key(6, i as u64)).await.unwrap().is_some() {
            resident += 1;
        }
    }
    assert!(
        resident >= 1 && resident <= budget / (64 * KIB),
        "resident {resident}"
    );
    assert!(cache.get(&key(6, n as u64 - 1)).await.unwrap().is_some());
}

#[tokio::test]
async fn disk_tier_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = vec![
        (key(7, 0), block(4 * KIB, 7)),
        (key(7, 4096), block(100, 8)),
        (key(7, 8192), block(MIB + 8 * KIB, 9)), // a 1 MiB value plus key and framing
        (key(8, 0), block(MIB + MIB / 2, 10)),
        (key(8, 2 * MIB as u64), block(3 * MIB, 11)),
    ];

    let cache = with_disk(dir.path(), 16 * MIB).await;
    for (k, v) in &blocks {
        cache.insert(*k, v.clone());
    }
    cache.close().await.unwrap();
    cache.close().await.unwrap(); // idempotent
    let s = cache.stats();
    assert_eq!(s.disk_write_drops, 0);
    assert_eq!(s.disk_oversize_skips, 0);
    assert!(s.disk_write_bytes >= 5 * MIB as u64, "{s:?}");
    drop(cache);

    let cache = with_disk(dir.path(), 16 * MIB).await;
    assert_eq!(cache.stats().memory_used_bytes, 0);
    for (k, v) in &blocks {
        assert_eq!(cache.get(k).await.unwrap().as_ref(), Some(v), "{k:?}");
    }
    let s = cache.stats();
    assert_eq!((s.hits, s.disk_hits, s.misses), (5, 5, 0));

    // Served from memory now.
    let got = cache
        .get_or_fetch(key(8, 0), || async { panic!("cached") })
        .await
        .unwrap();
    assert_eq!(got, blocks[3].1);
    assert_eq!(cache.stats().disk_hits, 5);

    // Another store's blocks are never served.
    let other = BlockKey {
        store_uid: 1,
        ..key(7, 0)
    };
    assert_eq!(cache.get(&other).await.unwrap(), None);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn get_or_fetch_reads_the_disk_tier_after_memory_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let cache = with_disk(dir.path(), 2 * MIB).await;
    let big = block(MIB + 4 * KIB, 12);
    cache.insert(key(9, 0), big.clone());
    cache.wait_for_disk_writes().await;

    // Push it out of the 2 MiB memory tier.
    for i in 0..8u64 {
        cache.insert(key(10, i), block(512 * KIB, i as u8));
    }
    cache.wait_for_disk_writes().await;

    let got = cache
        .get_or_fetch(key(9, 0), || async { panic!("must come from disk") })
        .await
        .unwrap();
    assert_eq!(got, big);
    assert_eq!(cache.stats().disk_hits, 1);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn values_larger_than_a_disk_block_stay_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cache = with_disk(dir.path(), 16 * MIB).await;
    let max = cache.max_disk_value_len().unwrap();
    assert!(max > MIB + 8 * KIB && max < 4 * MIB, "max {max}");

    let huge = block(max + 1, 13);
    cache.insert(key(11, 0), huge.clone());
    assert_eq!(cache.get(&key(11, 0)).await.unwrap(), Some(huge));
    assert_eq!(cache.stats().disk_oversize_skips, 1);
    cache.close().await.unwrap();
    drop(cache);

    let cache = with_disk(dir.path(), 16 * MIB).await;
    assert_eq!(cache.get(&key(11, 0)).await.unwrap(), None);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn a_directory_is_used_by_one_open_cache_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = with_disk(dir.path(), 4 * MIB).await;
    let err = BlockCache::open(CacheConfig {
        memory_bytes: 4 * MIB,
        disk_dir: Some(dir.path().to_path_buf()),
        disk_bytes: 64 << 20,
    })
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("in use"), "{err:#}");

    first.insert(key(12, 0), block(10, 1));
    first.close().await.unwrap();

    // Closed: the directory is free, and the old handle still serves from memory.
    let second = with_disk(dir.path(), 4 * MIB).await;
    first.insert(key(12, 1), block(10, 2));
    assert!(first.get(&key(12, 1)).await.unwrap().is_some());
    assert_eq!(second.get(&key(12, 0)).await.unwrap(), Some(block(10, 1)));
    second.close().await.unwrap();
}

#[tokio::test]
async fn invalid_configs_are_rejected() {
    assert!(BlockCache::open(CacheConfig {
        memory_bytes: 0,
        ..CacheConfig::default()
    })
    .await
    .is_err());

    let dir = tempfile::tempdir().unwrap();
    let err = BlockCache::open(CacheConfig {
        memory_bytes: MIB,
        disk_dir: Some(dir.path().join("nested").join("cache")),
        disk_bytes: 1 << 20,
    })
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("too small"), "{err:#}");
}

/// Env var that turns `disk_tier_survives_a_crash_after_its_writes_land` into the crashing
/// child process.
const CRASH_CHILD_DIR: &str = "STRATA_CACHE_TEST_CRASH_CHILD_DIR";

fn crash_blocks() -> Vec<(BlockKey, Bytes)> {
    vec![
        (key(20, 0), block(16 * KIB, 20)),
        (key(20, 16384), block(MIB + 8 * KIB, 21)),
    ]
}

/// Like `kill -9`: the child inserts, waits for the disk writes, and aborts without
/// closing. Writes go to disk on insertion, so the next open recovers them.
#[test]
fn disk_tier_survives_a_crash_after_its_writes_land() {
    let rt = tokio::runtime::Runtime::new().unwrap();

    if let Ok(dir) = std::env::var(CRASH_CHILD_DIR) {
        rt.block_on(async {
            let cache = with_disk(Path::new(&dir), 16 * MIB).await;
            for (k, v) in crash_blocks() {
                cache.insert(k, v);
            }
            cache.wait_for_disk_writes().await;
        });
        std::process::abort();
    }

    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "disk_tier_survives_a_crash_after_its_writes_land",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have crashed");

    rt.block_on(async {
        let cache = with_disk(dir.path(), 16 * MIB).await;
        for (k, v) in crash_blocks() {
            assert_eq!(cache.get(&k).await.unwrap(), Some(v), "{k:?}");
        }
        assert_eq!(cache.stats().disk_hits, 2);
        cache.close().await.unwrap();
    });
}

#[tokio::test]
async fn remove_drops_a_block_from_memory_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = with_disk(dir.path(), 4 * MIB).await;
    cache.insert(key(21, 0), block(8 * KIB, 1));
    cache.wait_for_disk_writes().await;
    cache.remove(&key(21, 0));
    assert_eq!(cache.get(&key(21, 0)).await.unwrap(), None);

    // A re-fetch after removal replaces the bad copy.
    let good = block(8 * KIB, 2);
    let g = good.clone();
    let got = cache
        .get_or_fetch(key(21, 0), move || async move { Ok(g) })
        .await
        .unwrap();
    assert_eq!(got, good);
    assert_eq!(cache.get(&key(21, 0)).await.unwrap(), Some(good));
    cache.close().await.unwrap();

    // After close only the memory copy can be dropped; the disk copy is read back.
    let disk_hits = cache.stats().disk_hits;
    cache.remove(&key(21, 0));
    assert_eq!(
        cache.get(&key(21, 0)).await.unwrap(),
        Some(block(8 * KIB, 2))
    );
    assert_eq!(cache.stats().disk_hits, disk_hits + 1);
}

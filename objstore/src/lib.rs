//! The object store seam of Strata.
//!
//! Everything that touches object storage goes through [`Store`], a deliberately small trait:
//! whole-object puts (plain or create-if-absent), whole and ranged gets, listing and deletion.
//! Backends:
//! - [`LocalStore`]: a local directory with real durability (fsync of file and directory),
//!   used by the embedded default;
//! - [`ObjectStoreBackend`]: any `object_store` implementation (S3-compatible servers,
//!   in-memory for unit tests).
//!
//! Wrappers add what every backend needs: [`Metered`] counts requests (cost is a first-class
//! metric), [`Retrying`] retries transient failures and resolves ambiguous conditional creates,
//! [`FaultInjecting`] makes failures on demand in tests.

mod error;
mod fault;
pub mod lifecycle;
mod local;
mod metered;
mod open;
mod remote;
mod retry;

pub use error::{StoreError, StoreResult};
pub use fault::{FaultInjecting, Faults};
pub use lifecycle::{AppliedRules, LifecyclePlan, RuleSummary, TierTransition};
pub use local::LocalStore;
pub use metered::{Metered, RequestCounts};
pub use open::{open_store, Roots, S3Settings, StoreConfig};
pub use remote::ObjectStoreBackend;
pub use retry::{RetryPolicy, Retrying};

use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// How a put treats an object that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Create only if absent; otherwise fail with [`StoreError::AlreadyExists`].
    /// This is the primitive that fencing and manifest versioning are built on.
    Create,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full path, relative to the store's root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// The operations Strata needs from an object store.
///
/// Paths are `/`-separated, relative to the store's root, made of `[A-Za-z0-9/_.-]`.
/// Objects are immutable by convention: Strata never overwrites data objects.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Writes a whole object. It is durable when this returns `Ok`.
    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> StoreResult<()>;
    /// Writes (overwrites) an object in an S3 storage class (`x-amz-storage-class`, e.g.
    /// `STANDARD_IA`). Stores without classes just write it.
    async fn put_class(&self, path: &str, data: Bytes, storage_class: &str) -> StoreResult<()> {
        let _ = storage_class;
        self.put(path, data, PutMode::Overwrite).await
    }
    /// Starts writing (overwriting) an object in parts, for objects too large to hold in
    /// memory whole; `None` when this store has no such upload (then [`start_upload`]
    /// gathers the parts and writes them with one `put`). Nothing appears at `path` before
    /// [`Upload::complete`] returns `Ok`.
    async fn put_parts(&self, path: &str) -> StoreResult<Option<Box<dyn Upload>>> {
        let _ = path;
        Ok(None)
    }
    /// Reads a whole object.
    async fn get(&self, path: &str) -> StoreResult<Bytes>;
    /// Reads `range` of an object; a range past the end is an error.
    async fn get_range(&self, path: &str, range: Range<u64>) -> StoreResult<Bytes>;
    /// Size of an object.
    async fn head(&self, path: &str) -> StoreResult<u64>;
    /// Objects whose path starts with `prefix`, sorted by path.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>>;
    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, path: &str) -> StoreResult<()>;
    /// Human description, for logs.
    fn describe(&self) -> String;
}

/// The smallest part of an [`Upload`] but its last (S3's minimum part size).
pub const MIN_PART_BYTES: usize = 5 << 20;

/// An object being written in parts ([`Store::put_parts`], [`start_upload`]).
///
/// Parts are appended in the order given; every part but the last is at least
/// [`MIN_PART_BYTES`], and all of them but the last have the same size (R2 requires it).
/// The object appears at its path, whole, when [`complete`](Self::complete) returns `Ok`
/// (and is durable then); an upload aborted or dropped leaves the path as it was (an S3
/// backend may leave an unfinished upload, cleaned by the bucket's abort rule).
///
/// A `put_part` that fails appended nothing and may be called again with the same bytes
/// (the retrying layer does), and so may a failed `complete`.
#[async_trait]
pub trait Upload: Send {
    /// Appends the object's next bytes.
    async fn put_part(&mut self, data: Bytes) -> StoreResult<()>;
    /// Makes the object whole and visible; nothing may be called after it succeeds.
    async fn complete(&mut self) -> StoreResult<()>;
    /// Gives the upload up; the path stays as it was.
    async fn abort(&mut self) -> StoreResult<()>;
    /// Bytes appended so far.
    fn bytes(&self) -> u64;
}

/// Starts writing `path` in parts on `store`: through the store's own upload when it has
/// one, otherwise by gathering the parts in memory and writing them with one overwriting
/// `put` at `complete`.
pub async fn start_upload(store: &Arc<dyn Store>, path: &str) -> StoreResult<Box<dyn Upload>> {
    validate_path(path)?;
    Ok(match store.put_parts(path).await? {
        Some(u) => u,
        None => Box::new(Gathered {
            store: store.clone(),
            path: path.to_string(),
            parts: Vec::new(),
            bytes: 0,
        }),
    })
}

/// The upload of a store without one: parts kept until `complete`.
struct Gathered {
    store: Arc<dyn Store>,
    path: String,
    parts: Vec<Bytes>,
    bytes: u64,
}

#[async_trait]
impl Upload for Gathered {
    async fn put_part(&mut self, data: Bytes) -> StoreResult<()> {
        self.bytes += data.len() as u64;
        self.parts.push(data);
        Ok(())
    }
    async fn complete(&mut self) -> StoreResult<()> {
        let data = if self.parts.len() == 1 {
            self.parts[0].clone()
        } else {
            let mut all = Vec::with_capacity(self.parts.iter().map(Bytes::len).sum());
            for p in &self.parts {
                all.extend_from_slice(p);
            }
            Bytes::from(all)
        };
        self.store.put(&self.path, data, PutMode::Overwrite).await
    }
    async fn abort(&mut self) -> StoreResult<()> {
        self.parts.clear();
        Ok(())
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// 64 random bits (staging names, placeholders), without a seeded generator: uniqueness is
/// all that is asked.
pub(crate) fn nonce() -> u64 {
    strata_clock::unique_u64()
}

pub(crate) fn validate_path(path: &str) -> StoreResult<()> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains("//")
        && !path.split('/').any(|seg| seg == "." || seg == "..")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidPath(path.to_string()))
    }
}

/// What every store's upload in parts must do, checked on each backend's tests.
#[cfg(test)]
pub(crate) async fn check_upload(store: Arc<dyn Store>) {
    #![allow(clippy::unwrap_used, reason = "a test helper")]
    let parts: Vec<Bytes> = (0..3u8)
        .map(|i| Bytes::from(vec![b'a' + i; 1000 + usize::from(i)]))
        .collect();
    let mut u = start_upload(&store, "dir/big.obj").await.unwrap();
    for p in &parts {
        u.put_part(p.clone()).await.unwrap();
    }
    assert!(
        matches!(store.get("dir/big.obj").await, Err(StoreError::NotFound(_))),
        "an object appeared before its upload completed"
    );
    u.complete().await.unwrap();
    assert_eq!(store.get("dir/big.obj").await.unwrap(), parts.concat());

    // Aborted or dropped: nothing appears, and an existing object is left as it was.
    let mut u = start_upload(&store, "dir/big.obj").await.unwrap();
    u.put_part(Bytes::from_static(b"other")).await.unwrap();
    u.abort().await.unwrap();
    let mut u = start_upload(&store, "dir/gone.obj").await.unwrap();
    u.put_part(Bytes::from_static(b"other")).await.unwrap();
    drop(u);
    assert_eq!(store.get("dir/big.obj").await.unwrap(), parts.concat());
    assert!(matches!(
        store.get("dir/gone.obj").await,
        Err(StoreError::NotFound(_))
    ));
    let listed: Vec<String> = store
        .list("dir/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert_eq!(listed, vec!["dir/big.obj".to_string()]);
}

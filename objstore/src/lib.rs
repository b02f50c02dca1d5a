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

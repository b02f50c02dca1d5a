//! A fault-injecting wrapper for tests: transient failures, lost responses, outages, latency.

use crate::{ObjectInfo, PutMode, Store, StoreError, StoreResult, Upload};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    fail_next: u32,
    lose_next_put_response: bool,
    down: bool,
    latency: Duration,
    fail_puts_matching: Option<String>,
    fail_upload_parts: bool,
}

/// A handle that controls the faults of a [`FaultInjecting`] store; clone it freely.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

impl Faults {
    /// The next `n` requests fail with a transient error without reaching the store.
    pub fn fail_next(&self, n: u32) {
        self.state.lock().fail_next = n;
    }
    /// The next put reaches the store, but the caller gets a transient error.
    pub fn lose_next_put_response(&self) {
        self.state.lock().lose_next_put_response = true;
    }
    /// While down, every request fails with a transient error.
    pub fn set_down(&self, down: bool) {
        self.state.lock().down = down;
    }
    /// Latency added to every request.
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().latency = latency;
    }
    /// Puts whose path contains `pattern` fail with a transient error (None clears).
    pub fn fail_puts_matching(&self, pattern: Option<&str>) {
        self.state.lock().fail_puts_matching = pattern.map(str::to_string);
    }

    /// While set, every part of an upload in parts fails with a transient error (starting
    /// one and plain puts still work).
    pub fn fail_upload_parts(&self, on: bool) {
        self.state.lock().fail_upload_parts = on;
    }

    fn before(&self, op: &'static str, path: &str) -> (Duration, StoreResult<()>) {
        let mut s = self.state.lock();
        let err = || StoreError::Unavailable {
            op,
            path: path.to_string(),
            detail: "injected fault".to_string(),
        };
        let res = if s.down {
            Err(err())
        } else if s.fail_next > 0 {
            s.fail_next -= 1;
            Err(err())
        } else if (op == "put_part" && s.fail_upload_parts)
            || ((op == "put" || op == "put_part")
                && s.fail_puts_matching
                    .as_deref()
                    .is_some_and(|p| path.contains(p)))
        {
            Err(err())
        } else {
            Ok(())
        };
        (s.latency, res)
    }
}

/// Wraps a store and injects the faults its [`Faults`] handle asks for.
#[derive(Debug, Clone)]
pub struct FaultInjecting {
    inner: Arc<dyn Store>,
    faults: Faults,
}

impl FaultInjecting {
    /// Wraps `inner`, controlled by `faults`.
    pub fn new(inner: Arc<dyn Store>, faults: Faults) -> Self {
        FaultInjecting { inner, faults }
    }

    async fn gate(&self, op: &'static str, path: &str) -> StoreResult<()> {
        let (latency, res) = self.faults.before(op, path);
        if !latency.is_zero() {
            strata_clock::sleep(latency).await;
        }
        res
    }
}

#[async_trait]
impl Store for FaultInjecting {
    async fn put_class(&self, path: &str, data: Bytes, storage_class: &str) -> StoreResult<()> {
        self.gate("put", path).await?;
        self.inner.put_class(path, data, storage_class).await
    }
    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> StoreResult<()> {
        self.gate("put", path).await?;
        let r = self.inner.put(path, data, mode).await;
        let lose = std::mem::take(&mut self.faults.state.lock().lose_next_put_response);
        if lose && r.is_ok() {
            return Err(StoreError::Unavailable {
                op: "put",
                path: path.to_string(),
                detail: "injected lost response".to_string(),
            });
        }
        r
    }
    async fn put_parts(&self, path: &str) -> StoreResult<Option<Box<dyn Upload>>> {
        self.gate("put_parts", path).await?;
        let inner = self.inner.put_parts(path).await?;
        Ok(inner.map(|inner| {
            Box::new(FaultyUpload {
                inner,
                store: self.clone(),
                path: path.to_string(),
            }) as Box<dyn Upload>
        }))
    }
    async fn get(&self, path: &str) -> StoreResult<Bytes> {
        self.gate("get", path).await?;
        self.inner.get(path).await
    }
    async fn get_range(&self, path: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.gate("get", path).await?;
        self.inner.get_range(path, range).await
    }
    async fn head(&self, path: &str) -> StoreResult<u64> {
        self.gate("head", path).await?;
        self.inner.head(path).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.gate("list", prefix).await?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, path: &str) -> StoreResult<()> {
        self.gate("delete", path).await?;
        self.inner.delete(path).await
    }
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}

/// An upload whose parts and completion see the faults of its store.
struct FaultyUpload {
    inner: Box<dyn Upload>,
    store: FaultInjecting,
    path: String,
}

#[async_trait]
impl Upload for FaultyUpload {
    async fn put_part(&mut self, data: Bytes) -> StoreResult<()> {
        self.store.gate("put_part", &self.path).await?;
        self.inner.put_part(data).await
    }
    async fn complete(&mut self) -> StoreResult<()> {
        self.store.gate("complete", &self.path).await?;
        self.inner.complete().await
    }
    async fn abort(&mut self) -> StoreResult<()> {
        self.inner.abort().await
    }
    fn bytes(&self) -> u64 {
        self.inner.bytes()
    }
}

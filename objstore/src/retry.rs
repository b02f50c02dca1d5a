//! Retries with backoff and per-attempt timeouts, and resolution of ambiguous creates.
//!
//! A conditional create that timed out may have succeeded. Retrying it then fails with
//! `AlreadyExists` although the object is ours. Every object Strata creates conditionally
//! carries something unique to its writer (writer epoch and creation time in the header), so
//! on `AlreadyExists` we read the object back: the same bytes mean our own earlier attempt won.

use crate::{ObjectInfo, PutMode, Store, StoreError, StoreResult, Upload};
use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// How hard to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time, capped at `max_backoff`.
    pub base_backoff: Duration,
    /// Longest delay between attempts.
    pub max_backoff: Duration,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Deadline of the whole operation, retries included.
    pub total_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
        }
    }
}

/// Wraps a store with retries.
#[derive(Debug, Clone)]
pub struct Retrying {
    inner: Arc<dyn Store>,
    policy: RetryPolicy,
}

impl Retrying {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: Arc<dyn Store>, policy: RetryPolicy) -> Self {
        Retrying { inner, policy }
    }

    async fn run<T, F, Fut>(&self, op: &'static str, path: &str, f: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = StoreResult<T>> + Send,
    {
        self.run_tracked(op, path, f).await.0
    }

    /// Like `run`, and also says whether some attempt had an unknown outcome (a transient
    /// error or a timeout: the request may have taken effect).
    async fn run_tracked<T, F, Fut>(
        &self,
        op: &'static str,
        path: &str,
        mut f: F,
    ) -> (StoreResult<T>, bool)
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = StoreResult<T>> + Send,
    {
        let mut ambiguous = false;
        let start = strata_clock::now();
        let mut backoff = self.policy.base_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = match strata_clock::timeout(self.policy.attempt_timeout, f()).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable {
                    op,
                    path: path.to_string(),
                    detail: format!("attempt timed out after {:?}", self.policy.attempt_timeout),
                }),
            };
            match res {
                Err(e)
                    if e.is_transient()
                        && attempt < self.policy.max_attempts
                        && start.elapsed() + backoff < self.policy.total_timeout =>
                {
                    ambiguous = true;
                    tracing::debug!(op, path, attempt, error = %e, "retrying object store request");
                    strata_clock::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                }
                other => return (other, ambiguous),
            }
        }
    }
}

#[async_trait]
impl Store for Retrying {
    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> StoreResult<()> {
        let (res, ambiguous) = self
            .run_tracked("put", path, || self.inner.put(path, data.clone(), mode))
            .await;
        match (res, mode) {
            (Err(StoreError::AlreadyExists(p)), PutMode::Create) if ambiguous => {
                // Did an earlier attempt of ours, whose outcome we never learned, win?
                match self.run("get", path, || self.inner.get(path)).await {
                    Ok(existing) if existing == data => Ok(()),
                    _ => Err(StoreError::AlreadyExists(p)),
                }
            }
            (r, _) => r,
        }
    }
    async fn put_class(&self, path: &str, data: Bytes, storage_class: &str) -> StoreResult<()> {
        // An overwrite of identical bytes: retrying after an unknown outcome is harmless.
        self.run("put", path, || {
            self.inner.put_class(path, data.clone(), storage_class)
        })
        .await
    }
    async fn put_parts(&self, path: &str) -> StoreResult<Option<Box<dyn Upload>>> {
        // Starting is retried (an upload started by an attempt whose answer was lost is never
        // completed: the bucket's abort rule cleans it), and so are parts and completion.
        let started = self
            .run("put_parts", path, || self.inner.put_parts(path))
            .await?;
        Ok(started.map(|inner| {
            Box::new(RetryingUpload {
                inner: Arc::new(tokio::sync::Mutex::new(inner)),
                retry: self.clone(),
                path: path.to_string(),
                bytes: 0,
            }) as Box<dyn Upload>
        }))
    }
    async fn get(&self, path: &str) -> StoreResult<Bytes> {
        self.run("get", path, || self.inner.get(path)).await
    }
    async fn get_range(&self, path: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.run("get_range", path, || {
            self.inner.get_range(path, range.clone())
        })
        .await
    }
    async fn head(&self, path: &str) -> StoreResult<u64> {
        self.run("head", path, || self.inner.head(path)).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.run("list", prefix, || self.inner.list(prefix)).await
    }
    async fn delete(&self, path: &str) -> StoreResult<()> {
        self.run("delete", path, || self.inner.delete(path)).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// An upload whose parts and completion are retried: a failed part appended nothing and is
/// sent again (under its own part number on S3).
struct RetryingUpload {
    /// Shared with each attempt's future (an attempt that timed out is dropped).
    inner: Arc<tokio::sync::Mutex<Box<dyn Upload>>>,
    retry: Retrying,
    path: String,
    /// Bytes of the parts that succeeded.
    bytes: u64,
}

#[async_trait]
impl Upload for RetryingUpload {
    async fn put_part(&mut self, data: Bytes) -> StoreResult<()> {
        let (inner, len) = (&self.inner, data.len() as u64);
        self.retry
            .run("put_part", &self.path, || {
                let (inner, data) = (inner.clone(), data.clone());
                async move { inner.lock().await.put_part(data).await }
            })
            .await?;
        self.bytes += len;
        Ok(())
    }
    async fn complete(&mut self) -> StoreResult<()> {
        let inner = &self.inner;
        let (res, ambiguous) = self
            .retry
            .run_tracked("complete", &self.path, || {
                let inner = inner.clone();
                async move { inner.lock().await.complete().await }
            })
            .await;
        match res {
            // An attempt whose answer was lost may have completed it (S3 then knows the
            // upload no more): the object being there, whole, says so.
            Err(StoreError::NotFound(_)) if ambiguous => {
                let want = self.bytes;
                let path = self.path.as_str();
                match self
                    .retry
                    .run("head", path, || self.retry.inner.head(path))
                    .await
                {
                    Ok(n) if n == want => Ok(()),
                    _ => res,
                }
            }
            r => r,
        }
    }
    async fn abort(&mut self) -> StoreResult<()> {
        self.inner.lock().await.abort().await
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FaultInjecting, Faults, ObjectStoreBackend};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            attempt_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried() {
        let faults = Faults::default();
        let base: Arc<dyn Store> = Arc::new(ObjectStoreBackend::memory());
        let s = Retrying::new(Arc::new(FaultInjecting::new(base, faults.clone())), fast());
        faults.fail_next(3);
        s.put("a", Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(s.get("a").await.unwrap(), &b"x"[..]);
        faults.fail_next(10);
        assert!(s.get("a").await.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn ambiguous_create_that_succeeded_is_recognised() {
        let faults = Faults::default();
        let base: Arc<dyn Store> = Arc::new(ObjectStoreBackend::memory());
        let s = Retrying::new(
            Arc::new(FaultInjecting::new(base.clone(), faults.clone())),
            fast(),
        );
        // The first attempt reaches the store but its answer is lost.
        faults.lose_next_put_response();
        s.put("seg/1", Bytes::from_static(b"mine"), PutMode::Create)
            .await
            .unwrap();
        // Someone else's object with the same name is still a conflict.
        base.put("seg/2", Bytes::from_static(b"theirs"), PutMode::Create)
            .await
            .unwrap();
        assert!(matches!(
            s.put("seg/2", Bytes::from_static(b"mine"), PutMode::Create)
                .await
                .unwrap_err(),
            StoreError::AlreadyExists(_)
        ));
    }
}

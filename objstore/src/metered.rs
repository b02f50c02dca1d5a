//! Request counting: the number of requests per operation is our cost metric.

use crate::{ObjectInfo, PutMode, Store, StoreResult, Upload};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_clock::Instant;

/// Counts of requests sent to the object store, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    /// PUT requests (all modes).
    pub puts: u64,
    /// GET requests (whole and ranged).
    pub gets: u64,
    /// HEAD requests.
    pub heads: u64,
    /// LIST requests.
    pub lists: u64,
    /// DELETE requests.
    pub deletes: u64,
    /// Failed requests of any kind.
    pub errors: u64,
    /// Bytes sent in PUT bodies.
    pub bytes_put: u64,
    /// Bytes received in GET bodies.
    pub bytes_got: u64,
}

impl RequestCounts {
    /// Estimated request cost in US dollars at S3 Standard list prices
    /// ($0.005 per 1,000 PUT/LIST, $0.0004 per 1,000 GET/HEAD).
    pub fn estimated_cost_usd(&self) -> f64 {
        (self.puts + self.lists) as f64 * 0.005 / 1000.0
            + (self.gets + self.heads) as f64 * 0.0004 / 1000.0
    }
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    errors: AtomicU64,
    bytes_put: AtomicU64,
    bytes_got: AtomicU64,
}

/// Wraps a store and counts every request sent through it.
#[derive(Debug, Clone)]
pub struct Metered {
    inner: Arc<dyn Store>,
    c: Arc<Counters>,
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Metered {
            inner,
            c: Arc::default(),
        }
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> RequestCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            puts: l(&self.c.puts),
            gets: l(&self.c.gets),
            heads: l(&self.c.heads),
            lists: l(&self.c.lists),
            deletes: l(&self.c.deletes),
            errors: l(&self.c.errors),
            bytes_put: l(&self.c.bytes_put),
            bytes_got: l(&self.c.bytes_got),
        }
    }

    /// Counts a failure, and records the request's latency by operation
    /// (`strata_objstore_request_duration_seconds{op, outcome}`, through the `metrics` facade:
    /// a no-op until a recorder is installed).
    fn done<T>(&self, op: &'static str, started: Instant, r: StoreResult<T>) -> StoreResult<T> {
        let outcome = if r.is_err() {
            self.c.errors.fetch_add(1, Ordering::Relaxed);
            "error"
        } else {
            "ok"
        };
        metrics::histogram!(
            "strata_objstore_request_duration_seconds",
            "op" => op,
            "outcome" => outcome
        )
        .record(started.elapsed().as_secs_f64());
        r
    }
}

#[async_trait]
impl Store for Metered {
    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> StoreResult<()> {
        self.c.puts.fetch_add(1, Ordering::Relaxed);
        self.c
            .bytes_put
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.put(path, data, mode).await;
        self.done("put", started, r)
    }
    async fn put_class(&self, path: &str, data: Bytes, storage_class: &str) -> StoreResult<()> {
        self.c.puts.fetch_add(1, Ordering::Relaxed);
        self.c
            .bytes_put
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.put_class(path, data, storage_class).await;
        self.done("put", started, r)
    }
    async fn put_parts(&self, path: &str) -> StoreResult<Option<Box<dyn Upload>>> {
        // Starting, each part and completing are each a PUT-priced request on S3 (a store
        // without uploads of its own answers `None` without a request).
        let started = strata_clock::now();
        let r = self.inner.put_parts(path).await;
        if !matches!(r, Ok(None)) {
            self.c.puts.fetch_add(1, Ordering::Relaxed);
        }
        let r = self.done("put_parts", started, r)?;
        Ok(r.map(|inner| {
            Box::new(MeteredUpload {
                inner,
                m: self.clone(),
            }) as Box<dyn Upload>
        }))
    }
    async fn get(&self, path: &str) -> StoreResult<Bytes> {
        self.c.gets.fetch_add(1, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.get(path).await;
        if let Ok(b) = &r {
            self.c
                .bytes_got
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        self.done("get", started, r)
    }
    async fn get_range(&self, path: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.c.gets.fetch_add(1, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.get_range(path, range).await;
        if let Ok(b) = &r {
            self.c
                .bytes_got
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        self.done("get_range", started, r)
    }
    async fn head(&self, path: &str) -> StoreResult<u64> {
        self.c.heads.fetch_add(1, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.head(path).await;
        self.done("head", started, r)
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.c.lists.fetch_add(1, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.list(prefix).await;
        self.done("list", started, r)
    }
    async fn delete(&self, path: &str) -> StoreResult<()> {
        self.c.deletes.fetch_add(1, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.delete(path).await;
        self.done("delete", started, r)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Counts the requests of an upload in parts.
struct MeteredUpload {
    inner: Box<dyn Upload>,
    m: Metered,
}

#[async_trait]
impl Upload for MeteredUpload {
    async fn put_part(&mut self, data: Bytes) -> StoreResult<()> {
        self.m.c.puts.fetch_add(1, Ordering::Relaxed);
        self.m
            .c
            .bytes_put
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.put_part(data).await;
        self.m.done("put_part", started, r)
    }
    async fn complete(&mut self) -> StoreResult<()> {
        self.m.c.puts.fetch_add(1, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.complete().await;
        self.m.done("complete", started, r)
    }
    async fn abort(&mut self) -> StoreResult<()> {
        self.m.c.deletes.fetch_add(1, Ordering::Relaxed);
        let started = strata_clock::now();
        let r = self.inner.abort().await;
        self.m.done("abort", started, r)
    }
    fn bytes(&self) -> u64 {
        self.inner.bytes()
    }
}

//! Building a store from a URL: `file:///dir` (or a plain path), `s3://bucket/prefix`,
//! `memory://` (unit tests only).

use crate::{
    LocalStore, Metered, ObjectStoreBackend, RetryPolicy, Retrying, Store, StoreError, StoreResult,
};
use std::sync::Arc;
use std::time::Duration;

/// S3 connection settings. Built explicitly (not from every `AWS_*` variable in the
/// environment) so stray variables cannot leak into tests. `Debug` never shows the secret
/// key or the session token.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// Endpoint of a non-AWS server, e.g. `http://127.0.0.1:9000`. Implies path-style
    /// addressing, and plain HTTP when the URL says `http`.
    pub endpoint: Option<String>,
    /// Region; defaults to `us-east-1`.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .finish()
    }
}

impl S3Settings {
    /// Reads the usual AWS variables: `AWS_ENDPOINT_URL`, `AWS_REGION` (or
    /// `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        S3Settings {
            endpoint: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
        }
    }
}

/// What to open.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `file:///abs/dir`, a plain directory path, `s3://bucket[/prefix]` or `memory://`.
    pub url: String,
    /// Settings used for `s3://` URLs.
    pub s3: S3Settings,
    /// Retry policy applied to every request.
    pub retry: RetryPolicy,
}

/// Opens the store a config names: backend, request counting, retries. Returns the store to
/// use and the meter that counts its requests.
pub fn open_store(cfg: &StoreConfig) -> StoreResult<(Arc<dyn Store>, Metered)> {
    let backend: Arc<dyn Store> = if let Some(rest) = cfg.url.strip_prefix("s3://") {
        Arc::new(open_s3(rest, &cfg.s3)?)
    } else if cfg.url.starts_with("memory://") {
        Arc::new(ObjectStoreBackend::memory())
    } else {
        let dir = cfg.url.strip_prefix("file://").unwrap_or(&cfg.url);
        if dir.is_empty() {
            return Err(config_err(&cfg.url, "empty directory path"));
        }
        Arc::new(LocalStore::open(dir)?)
    };
    let metered = Metered::new(backend);
    let store: Arc<dyn Store> =
        Arc::new(Retrying::new(Arc::new(metered.clone()), cfg.retry.clone()));
    Ok((store, metered))
}

fn config_err(url: &str, detail: &str) -> StoreError {
    StoreError::Other {
        op: "open",
        path: url.to_string(),
        detail: detail.to_string(),
    }
}

fn open_s3(rest: &str, s: &S3Settings) -> StoreResult<ObjectStoreBackend> {
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    };
    if bucket.is_empty() {
        return Err(config_err(
            rest,
            "s3 URL needs a bucket: s3://BUCKET[/PREFIX]",
        ));
    }
    let client = object_store::ClientOptions::new()
        .with_timeout(Duration::from_secs(30))
        .with_connect_timeout(Duration::from_secs(5));
    let mut b = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(s.region.clone().unwrap_or_else(|| "us-east-1".to_string()))
        // Our own Retrying layer decides about retries, with deadlines the engine knows.
        .with_retry(object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        // Every object we write carries its own crc32c checksums, verified on every read, so
        // hashing each body with SHA-256 for the signature buys no integrity, and it was the
        // largest single CPU cost of a write (12% of a node's CPU at 9K writes/s).
        .with_unsigned_payload(true);
    if let Some(ep) = &s.endpoint {
        b = b
            .with_endpoint(ep.clone())
            .with_virtual_hosted_style_request(false)
            .with_allow_http(ep.starts_with("http://"));
    }
    let client = if s
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
    {
        client.with_allow_http(true)
    } else {
        client
    };
    b = b.with_client_options(client);
    if let Some(v) = &s.access_key_id {
        b = b.with_access_key_id(v.clone());
    }
    if let Some(v) = &s.secret_access_key {
        b = b.with_secret_access_key(v.clone());
    }
    if let Some(v) = &s.session_token {
        b = b.with_token(v.clone());
    }
    let store = b
        .build()
        .map_err(|e| config_err(&format!("s3://{rest}"), &e.to_string()))?;
    let store = Arc::new(store);
    Ok(
        ObjectStoreBackend::new(store.clone(), prefix, format!("s3://{rest}"))
            .with_multipart(store),
    )
}

/// Stores under other roots, opened on demand with this process's settings and cached: a
/// keyspace restored from a snapshot reads its source's unchanged SSTs where they are.
#[derive(Clone)]
pub struct Roots {
    s3: S3Settings,
    retry: RetryPolicy,
    opened: Arc<parking_lot::Mutex<std::collections::HashMap<String, Arc<dyn Store>>>>,
}

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roots")
            .field("opened", &self.opened.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Roots {
    /// S3 settings from the usual AWS variables, default retries.
    fn default() -> Self {
        Roots::new(S3Settings::from_env(), RetryPolicy::default())
    }
}

impl Roots {
    /// Roots opened with these settings.
    pub fn new(s3: S3Settings, retry: RetryPolicy) -> Self {
        Roots {
            s3,
            retry,
            opened: Default::default(),
        }
    }

    /// `own` for `None`, else the store of root `url`: where an SST listed under that root
    /// (or under none) is read and deleted.
    pub fn store_for(
        &self,
        own: &Arc<dyn Store>,
        url: Option<&str>,
    ) -> StoreResult<Arc<dyn Store>> {
        match url {
            None => Ok(own.clone()),
            Some(url) => self.get(url),
        }
    }

    /// The store at `url` (`s3://BUCKET/PREFIX` or `file:///DIR`). `memory://` is refused: a
    /// fresh in-memory store would be empty, never another root.
    pub fn get(&self, url: &str) -> StoreResult<Arc<dyn Store>> {
        if let Some(s) = self.opened.lock().get(url) {
            return Ok(s.clone());
        }
        if url.starts_with("memory://") {
            return Err(config_err(url, "an in-memory store cannot be another root"));
        }
        let (store, _) = open_store(&StoreConfig {
            url: url.to_string(),
            s3: self.s3.clone(),
            retry: self.retry.clone(),
        })?;
        self.opened.lock().insert(url.to_string(), store.clone());
        Ok(store)
    }
}

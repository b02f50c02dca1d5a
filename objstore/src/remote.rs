//! Any `object_store` implementation (S3-compatible servers, in-memory) behind [`Store`].

use crate::{validate_path, ObjectInfo, PutMode, Store, StoreError, StoreResult, Upload};
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use std::ops::Range;
use std::sync::Arc;

/// An `object_store` backend, optionally under a key prefix.
#[derive(Clone)]
pub struct ObjectStoreBackend {
    inner: Arc<dyn ObjectStore>,
    /// The same store's multipart API, for uploads in parts (`None`: parts are gathered).
    multipart: Option<Arc<dyn MultipartStore>>,
    prefix: String,
    label: String,
}

impl std::fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("inner", &self.inner)
            .field("multipart", &self.multipart.is_some())
            .field("prefix", &self.prefix)
            .field("label", &self.label)
            .finish()
    }
}

impl ObjectStoreBackend {
    /// Wraps `inner`; every path is placed under `prefix` (no leading or trailing `/`).
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str, label: impl Into<String>) -> Self {
        ObjectStoreBackend {
            inner,
            multipart: None,
            prefix: prefix.trim_matches('/').to_string(),
            label: label.into(),
        }
    }

    /// Uploads in parts go through `multipart`, which must be the same store as `inner`.
    pub fn with_multipart(mut self, multipart: Arc<dyn MultipartStore>) -> Self {
        self.multipart = Some(multipart);
        self
    }

    /// An in-memory store, for unit tests only.
    pub fn memory() -> Self {
        let mem = Arc::new(object_store::memory::InMemory::new());
        Self::new(mem.clone(), "", "memory://").with_multipart(mem)
    }

    fn location(&self, path: &str) -> StoreResult<Path> {
        validate_path(path)?;
        Ok(Path::from(self.full(path)))
    }

    fn full(&self, path: &str) -> String {
        if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{}", self.prefix, path)
        }
    }

    fn strip(&self, full: &str) -> String {
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&self.prefix)
                .map(|s| s.trim_start_matches('/').to_string())
                .unwrap_or_else(|| full.to_string())
        }
    }
}

fn map_err(op: &'static str, path: &str, e: object_store::Error) -> StoreError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => StoreError::NotFound(path.to_string()),
        // S3 answers a lost create race with 412, and sometimes 409 ConditionalRequestConflict:
        // both mean "someone else got there"; the caller re-reads before deciding.
        E::AlreadyExists { .. } | E::Precondition { .. } => {
            StoreError::AlreadyExists(path.to_string())
        }
        E::InvalidPath { .. } | E::NotSupported { .. } | E::NotImplemented { .. } => {
            StoreError::Other {
                op,
                path: path.to_string(),
                detail: e.to_string(),
            }
        }
        other => {
            let detail = other.to_string();
            if detail.contains("409") && detail.contains("Conflict") {
                return StoreError::AlreadyExists(path.to_string());
            }
            // A client error (bad range, denied, bad request) will not go away on retry;
            // timeouts (408), throttling (429) and server errors (5xx) may.
            if let Some(code) = http_status(&detail) {
                if (400..500).contains(&code) && code != 408 && code != 429 {
                    return StoreError::Other {
                        op,
                        path: path.to_string(),
                        detail,
                    };
                }
            }
            StoreError::Unavailable {
                op,
                path: path.to_string(),
                detail,
            }
        }
    }
}

/// The HTTP status an `object_store` error message carries, if any.
fn http_status(detail: &str) -> Option<u16> {
    // Messages look like "... Received redirect/error ... status: 416 Range Not Satisfiable".
    let i = detail.find("status")?;
    detail[i..]
        .split(|c: char| !c.is_ascii_digit())
        .find(|t| t.len() == 3)
        .and_then(|t| t.parse().ok())
}

/// A multipart upload (S3: CreateMultipartUpload, UploadPart…, CompleteMultipartUpload)
/// through the low-level API, so a failed part can be sent again under its own number.
struct RemoteUpload {
    store: Arc<dyn MultipartStore>,
    loc: Path,
    path: String,
    id: MultipartId,
    /// The parts that succeeded, in order.
    parts: Vec<PartId>,
    bytes: u64,
    /// Completed or aborted: nothing to abort on drop.
    over: bool,
}

#[async_trait]
impl Upload for RemoteUpload {
    async fn put_part(&mut self, data: Bytes) -> StoreResult<()> {
        let len = data.len() as u64;
        let part = self
            .store
            .put_part(
                &self.loc,
                &self.id,
                self.parts.len(),
                PutPayload::from_bytes(data),
            )
            .await
            .map_err(|e| map_err("put_part", &self.path, e))?;
        self.parts.push(part);
        self.bytes += len;
        Ok(())
    }
    async fn complete(&mut self) -> StoreResult<()> {
        self.store
            .complete_multipart(&self.loc, &self.id, self.parts.clone())
            .await
            .map_err(|e| map_err("complete", &self.path, e))?;
        self.over = true;
        Ok(())
    }
    async fn abort(&mut self) -> StoreResult<()> {
        self.over = true;
        self.store
            .abort_multipart(&self.loc, &self.id)
            .await
            .map_err(|e| map_err("abort", &self.path, e))
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for RemoteUpload {
    fn drop(&mut self) {
        // An upload dropped unfinished is aborted in the background where a runtime runs
        // (otherwise the bucket's abort-incomplete-uploads rule cleans it).
        if !self.over {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (store, loc, id) = (self.store.clone(), self.loc.clone(), self.id.clone());
                rt.spawn(async move {
                    let _ = store.abort_multipart(&loc, &id).await;
                });
            }
        }
    }
}

impl ObjectStoreBackend {
    async fn put_with(&self, path: &str, data: Bytes, opts: PutOptions) -> StoreResult<()> {
        let loc = self.location(path)?;
        self.inner
            .put_opts(&loc, PutPayload::from_bytes(data), opts)
            .await
            .map(|_| ())
            .map_err(|e| map_err("put", path, e))
    }
}

#[async_trait]
impl Store for ObjectStoreBackend {
    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> StoreResult<()> {
        let opts = PutOptions {
            mode: match mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create => object_store::PutMode::Create,
            },
            ..Default::default()
        };
        self.put_with(path, data, opts).await
    }

    async fn put_class(&self, path: &str, data: Bytes, storage_class: &str) -> StoreResult<()> {
        let mut attributes = object_store::Attributes::new();
        attributes.insert(
            object_store::Attribute::StorageClass,
            storage_class.to_string().into(),
        );
        let opts = PutOptions {
            attributes,
            ..Default::default()
        };
        self.put_with(path, data, opts).await
    }

    async fn put_parts(&self, path: &str) -> StoreResult<Option<Box<dyn Upload>>> {
        let Some(store) = self.multipart.clone() else {
            return Ok(None);
        };
        let loc = self.location(path)?;
        let id = store
            .create_multipart(&loc)
            .await
            .map_err(|e| map_err("put_parts", path, e))?;
        Ok(Some(Box::new(RemoteUpload {
            store,
            loc,
            path: path.to_string(),
            id,
            parts: Vec::new(),
            bytes: 0,
            over: false,
        })))
    }

    async fn get(&self, path: &str) -> StoreResult<Bytes> {
        let loc = self.location(path)?;
        let res = self
            .inner
            .get(&loc)
            .await
            .map_err(|e| map_err("get", path, e))?;
        res.bytes().await.map_err(|e| map_err("get", path, e))
    }

    async fn get_range(&self, path: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let loc = self.location(path)?;
        let want = range.end.saturating_sub(range.start);
        let data = self
            .inner
            .get_range(&loc, range)
            .await
            .map_err(|e| map_err("get_range", path, e))?;
        if data.len() as u64 != want {
            return Err(StoreError::Other {
                op: "get_range",
                path: path.to_string(),
                detail: format!("short read: wanted {want} bytes, got {}", data.len()),
            });
        }
        Ok(data)
    }

    async fn head(&self, path: &str) -> StoreResult<u64> {
        let loc = self.location(path)?;
        self.inner
            .head(&loc)
            .await
            .map(|m| m.size)
            .map_err(|e| map_err("head", path, e))
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        // object_store lists by path segments; list the directory part, filter the rest.
        let full = self.full(prefix);
        let dir = match full.rfind('/') {
            Some(i) => full[..i].to_string(),
            None => String::new(),
        };
        let dir_path = if dir.is_empty() {
            None
        } else {
            Some(Path::from(dir))
        };
        let metas: Vec<_> = self
            .inner
            .list(dir_path.as_ref())
            .try_collect()
            .await
            .map_err(|e| map_err("list", prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter(|m| m.location.as_ref().starts_with(&full))
            .map(|m| ObjectInfo {
                path: self.strip(m.location.as_ref()),
                size: m.size,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn delete(&self, path: &str) -> StoreResult<()> {
        let loc = self.location(path)?;
        match self.inner.delete(&loc).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err("delete", path, e)),
        }
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upload_in_parts_appears_whole_at_completion() {
        crate::check_upload(Arc::new(ObjectStoreBackend::memory())).await;
        // A store without uploads of its own gathers the parts.
        #[derive(Debug)]
        struct Plain(ObjectStoreBackend);
        #[async_trait]
        impl Store for Plain {
            async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> StoreResult<()> {
                self.0.put(path, data, mode).await
            }
            async fn get(&self, path: &str) -> StoreResult<Bytes> {
                self.0.get(path).await
            }
            async fn get_range(&self, path: &str, range: Range<u64>) -> StoreResult<Bytes> {
                self.0.get_range(path, range).await
            }
            async fn head(&self, path: &str) -> StoreResult<u64> {
                self.0.head(path).await
            }
            async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
                self.0.list(prefix).await
            }
            async fn delete(&self, path: &str) -> StoreResult<()> {
                self.0.delete(path).await
            }
            fn describe(&self) -> String {
                "plain".into()
            }
        }
        crate::check_upload(Arc::new(Plain(ObjectStoreBackend::memory()))).await;
        // Faults reach the parts: a failed part fails the upload, and nothing appears.
        let faults = crate::Faults::default();
        let faulty =
            crate::FaultInjecting::new(Arc::new(ObjectStoreBackend::memory()), faults.clone());
        crate::check_upload(Arc::new(faulty.clone())).await;
        let store: Arc<dyn Store> = Arc::new(faulty);
        let mut u = crate::start_upload(&store, "x/failed").await.unwrap();
        faults.fail_upload_parts(true);
        assert!(u.put_part(Bytes::from_static(b"part")).await.is_err());
        drop(u);
        assert!(matches!(
            store.get("x/failed").await,
            Err(StoreError::NotFound(_))
        ));
        faults.fail_upload_parts(false);
        // Through the retrying layer a part or a completion that fails once is sent again:
        // the object is whole, each part once.
        let retrying: Arc<dyn Store> =
            Arc::new(crate::Retrying::new(store.clone(), Default::default()));
        let mut u = crate::start_upload(&retrying, "x/retried").await.unwrap();
        let parts = [Bytes::from(vec![1u8; 300]), Bytes::from(vec![2u8; 200])];
        faults.fail_next(1);
        u.put_part(parts[0].clone()).await.unwrap();
        u.put_part(parts[1].clone()).await.unwrap();
        faults.fail_next(1);
        u.complete().await.unwrap();
        assert_eq!(u.bytes(), 500);
        assert_eq!(store.get("x/retried").await.unwrap(), parts.concat());
    }

    #[tokio::test]
    async fn memory_backend_semantics() {
        let s = ObjectStoreBackend::new(
            Arc::new(object_store::memory::InMemory::new()),
            "pre/fix",
            "mem",
        );
        s.put("w/1", Bytes::from_static(b"abc"), PutMode::Create)
            .await
            .unwrap();
        assert!(matches!(
            s.put("w/1", Bytes::from_static(b"x"), PutMode::Create)
                .await
                .unwrap_err(),
            StoreError::AlreadyExists(_)
        ));
        s.put("w/2", Bytes::from_static(b"def"), PutMode::Create)
            .await
            .unwrap();
        let l = s.list("w/").await.unwrap();
        assert_eq!(
            l.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
            vec!["w/1", "w/2"]
        );
        assert_eq!(s.get_range("w/2", 1..3).await.unwrap(), &b"ef"[..]);
        assert!(matches!(
            s.get("w/3").await.unwrap_err(),
            StoreError::NotFound(_)
        ));
    }
}

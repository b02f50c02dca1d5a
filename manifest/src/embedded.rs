//! Embedded manifest store: manifest versions as objects, version N+1 created with a
//! conditional put. The object store's create-if-absent is the only arbiter, so two
//! processes sharing a store can never both commit the same version.

use crate::layout::{manifest_path, manifest_prefix, parse_manifest_path};
use crate::{ManifestError, ManifestResult, ManifestStore, Watchers};
use async_trait::async_trait;
use std::sync::Arc;
use strata_format::{decode_manifest, Manifest};
use strata_objstore::{PutMode, Store, StoreError};
use tokio::sync::watch;

/// Manifests kept in the object store itself.
#[derive(Debug)]
pub struct EmbeddedManifestStore {
    store: Arc<dyn Store>,
    watchers: Watchers,
}

impl EmbeddedManifestStore {
    /// A manifest store on `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        EmbeddedManifestStore {
            store,
            watchers: Watchers::default(),
        }
    }

    async fn read_version(&self, partition: u32, version: u64) -> ManifestResult<Manifest> {
        let path = manifest_path(partition, version);
        let data = self.store.get(&path).await?;
        decode_manifest(&data).map_err(|source| ManifestError::Corrupt { path, source })
    }
}

#[async_trait]
impl ManifestStore for EmbeddedManifestStore {
    async fn load_latest(&self, partition: u32) -> ManifestResult<Option<Arc<Manifest>>> {
        let listed = self.store.list(&manifest_prefix(partition)).await?;
        let Some(latest) = listed
            .iter()
            .filter_map(|o| parse_manifest_path(&o.path))
            .max()
        else {
            return Ok(None);
        };
        let m = Arc::new(self.read_version(partition, latest).await?);
        if m.version != latest {
            return Err(ManifestError::Corrupt {
                path: manifest_path(partition, latest),
                source: strata_format::FormatError::Corrupt {
                    what: "manifest",
                    detail: format!("object named version {latest} holds version {}", m.version),
                },
            });
        }
        self.watchers.publish(partition, m.clone());
        Ok(Some(m))
    }

    async fn commit(&self, partition: u32, next: &Manifest) -> ManifestResult<()> {
        let path = manifest_path(partition, next.version);
        match self
            .store
            .put(
                &path,
                crate::encode_valid(partition, next)?,
                PutMode::Create,
            )
            .await
        {
            Ok(()) => {
                self.watchers.publish(partition, Arc::new(next.clone()));
                Ok(())
            }
            Err(StoreError::AlreadyExists(_)) => Err(ManifestError::Conflict {
                partition,
                version: next.version,
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn subscribe(&self, partition: u32) -> watch::Receiver<Option<Arc<Manifest>>> {
        self.watchers.subscribe(partition)
    }
}

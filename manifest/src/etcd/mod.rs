//! The cluster's control plane in etcd: node registry, partition ownership under leases,
//! writer epochs, and per partition a pointer to its current manifest object.
//!
//! Key layout under a cluster prefix `P` (default `/strata`):
//! - `P/config`              cluster config (partition count), created once, never changed
//! - `P/nodes/{node}`        a live node's address, under the node's lease
//! - `P/owners/{p:05}`       the owner of partition p, under the owner's lease
//! - `P/epochs/{p:05}`       the writer epoch that may commit p's manifests, under the owner's lease
//! - `P/manifests/{p:05}`    p's current manifest: version and object path (no lease)
//! - `P/drain/{node}`        present while an operator wants the node drained (no lease)
//! - `P/stats/{node}`        a node's published per-partition progress, under its lease
//!
//! Invariants:
//! - A manifest pointer moves only in a transaction that compares the pointer's revision
//!   (no lost update) and either the epoch key (the owner's writer epoch, or a compactor
//!   building on that owner's manifest) or the owner key's creation revision (the owner
//!   installing its new epoch). When the owner's lease expires, its owner and epoch keys
//!   vanish, so nothing built on its epoch can commit any more.
//! - Manifest bodies are immutable objects with a unique name per attempt: a commit whose
//!   transaction fails leaves an unreferenced object behind, never a half-visible one.
//!
//! Submodules, by key prefix (methods are on [`Etcd`] unless noted):
//! - this module: the client ([`Etcd::connect`]), leases, the whole-cluster read
//!   ([`Etcd::view`], [`ClusterView`]) and watch ([`Etcd::watch_changes`]) of `P/`, and
//!   the key helpers the submodules share;
//! - `settings`: `P/config` and `P/compaction-settings` (and `P/partmap` when a restored
//!   cluster is initialised);
//! - `membership`: `P/nodes/`, `P/compactors/`, `P/stats/` and `P/drain/`;
//! - `ownership`: `P/owners/` and `P/epochs/` (acquire, release) and `P/compaction/`
//!   (compaction claims);
//! - `jobs`: task claims `P-tasks/` and job records `P-jobs/`;
//! - `txn_records`: cross-partition transaction records `P-txns/`;
//! - `manifests`: [`EtcdManifestStore`] and the pointers `P/manifests/` (plus `P/epochs/`
//!   when a commit installs an epoch, and `P/partmap` on a split).

mod jobs;
mod manifests;
mod membership;
mod ownership;
mod settings;
mod txn_records;

pub use manifests::EtcdManifestStore;
pub use membership::{CompactorInfo, NodeInfo, PartitionProgress};
pub use ownership::{OwnerInfo, Ownership};
pub use settings::{ClusterConfig, CompactionSettings};
pub use txn_records::{TxnRecord, TxnState};

use crate::{ManifestError, ManifestResult};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use manifests::Pointer;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdSettings {
    /// Client URLs, e.g. `http://127.0.0.1:2379` (`https://` with [`EtcdSettings::tls`]).
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster (several clusters can share one etcd).
    pub prefix: String,
    /// Deadline of every etcd request: a request to an etcd that is down fails after this
    /// instead of hanging.
    pub request_timeout: Duration,
    /// etcd's user and password (etcd's `auth enable`): the client authenticates at connect
    /// and again whenever its token expires.
    pub user: Option<EtcdUser>,
    /// TLS to etcd: the CAs to trust and, for etcd's `--client-cert-auth`, a client
    /// certificate. `https://` endpoints without it trust the system's roots.
    pub tls: Option<EtcdTls>,
}

/// etcd's user name and password.
#[derive(Clone)]
pub struct EtcdUser {
    /// User name.
    pub name: String,
    /// Password (never printed: `Debug` shows `<redacted>`).
    pub password: String,
}

/// TLS settings for etcd connections, as PEM.
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// CA certificates that sign etcd's server certificate; none: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and its private key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("request_timeout", &self.request_timeout)
            .field("user", &self.user.as_ref().map(|u| (&u.name, "<redacted>")))
            .field(
                "tls",
                &self
                    .tls
                    .as_ref()
                    .map(|t| (t.ca_pem.is_some(), t.identity.is_some())),
            )
            .finish()
    }
}

impl EtcdSettings {
    /// Settings for the given endpoints with the default prefix and timeout, no user and no
    /// TLS settings.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdSettings {
            endpoints,
            prefix: "/strata".into(),
            request_timeout: Duration::from_secs(2),
            user: None,
            tls: None,
        }
    }

    /// The connect options of these settings.
    fn connect_options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.request_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(Duration::from_secs(2), self.request_timeout)
            .with_keep_alive_while_idle(true);
        if let Some(u) = &self.user {
            // etcd's tokens expire (5 minutes idle by default): a long-lived node must take a
            // new one, not fail every request from then on.
            opts = opts
                .with_user(u.name.clone(), u.password.clone())
                .with_auto_token_refresh(true);
        }
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        if self.tls.is_some() || https {
            let t = self.tls.clone().unwrap_or_default();
            let mut cfg = etcd_client::TlsOptions::new();
            cfg = match &t.ca_pem {
                Some(ca) => cfg.ca_certificate(etcd_client::Certificate::from_pem(ca)),
                None => cfg.with_enabled_roots(),
            };
            if let Some((cert, key)) = &t.identity {
                cfg = cfg.identity(etcd_client::Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(cfg);
        }
        opts
    }
}

fn unavailable(op: &'static str, e: impl std::fmt::Display) -> ManifestError {
    let text = e.to_string();
    if STALE_AUTH.iter().any(|m| text.contains(m)) {
        // The client's token is no longer good; its own refresh covers only expiry.
        AUTH_STALE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    ManifestError::Etcd(format!("{op}: {text}"))
}

/// What etcd answers a request whose token it no longer takes. etcd-client refreshes its
/// token by itself only on the first kind (an expired token); "revision of auth store is
/// old" follows any change to etcd's users or roles, and would fail every request of a
/// long-lived node from then on (its token, used every 500 ms, never expires).
const STALE_AUTH: [&str; 3] = [
    "revision of auth store is old",
    "invalid auth token",
    "user name is empty",
];

/// Bumped by every error of [`STALE_AUTH`]: each client with a user refreshes its token when
/// it sees this move (see [`refresh_tokens`]).
static AUTH_STALE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How often a client with a user refreshes its token regardless (a watch that etcd cancels
/// for a stale token reports no error to bump [`AUTH_STALE`]).
const TOKEN_REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Keeps `client`'s token fresh: soon after an error of [`STALE_AUTH`] (checked every
/// 200 ms), and every [`TOKEN_REFRESH_EVERY`]. A login that fails (etcd down, the password
/// changed, the user deleted) is tried again after a backoff doubling from 1 s to
/// [`TOKEN_REFRESH_EVERY`]: each login costs etcd a bcrypt check, and a fleet of nodes
/// retrying at once must not take etcd's CPU from the leases. Runs until aborted (when the
/// last clone of its [`Etcd`] drops).
async fn refresh_tokens(client: Client) {
    let mut seen = AUTH_STALE.load(std::sync::atomic::Ordering::Relaxed);
    let mut last = strata_clock::now();
    let mut backoff = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        strata_clock::sleep(Duration::from_millis(200).max(backoff)).await;
        let now = AUTH_STALE.load(std::sync::atomic::Ordering::Relaxed);
        if now == seen && last.elapsed() < TOKEN_REFRESH_EVERY {
            continue;
        }
        match client.refresh_token().await {
            Ok(()) => {
                seen = now;
                last = strata_clock::now();
                backoff = Duration::ZERO;
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                backoff = (backoff * 2).clamp(Duration::from_secs(1), TOKEN_REFRESH_EVERY);
                if failures == 3 {
                    tracing::warn!(error = %e, "logging in to etcd again keeps failing");
                } else {
                    tracing::debug!(error = %e, "refreshing the etcd token failed");
                }
            }
        }
    }
}

/// Aborts the token refresher when the last clone of its [`Etcd`] is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A handle on the cluster's etcd keys. Cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    /// The token refresher of a client with a user (see [`refresh_tokens`]).
    _refresher: Option<Arc<AbortOnDrop>>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Etcd {
    /// Connects (lazily: an etcd that is down makes requests fail, not this call hang —
    /// except with a user, whose login is part of connecting).
    pub async fn connect(s: &EtcdSettings) -> ManifestResult<Self> {
        if s.tls.is_some() {
            if let Some(plain) = s.endpoints.iter().find(|e| !e.starts_with("https://")) {
                return Err(ManifestError::Etcd(format!(
                    "etcd TLS settings are given but the endpoint {plain} is not https://"
                )));
            }
        }
        let opts = s.connect_options();
        let client = strata_clock::timeout(
            s.request_timeout * 2,
            Client::connect(s.endpoints.clone(), Some(opts)),
        )
        .await
        .map_err(|_| unavailable("connect", format!("no answer from {:?}", s.endpoints)))?
        .map_err(|e| unavailable("connect", e))?;
        let refresher = s.user.is_some().then(|| {
            Arc::new(AbortOnDrop(
                tokio::spawn(refresh_tokens(client.clone())).abort_handle(),
            ))
        });
        Ok(Etcd {
            client,
            prefix: s.prefix.trim_end_matches('/').to_string(),
            _refresher: refresher,
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    fn owner_key(&self, p: u32) -> String {
        self.key(&format!("owners/{p:05}"))
    }

    fn epoch_key(&self, p: u32) -> String {
        self.key(&format!("epochs/{p:05}"))
    }

    fn pointer_key(&self, p: u32) -> String {
        self.key(&format!("manifests/{p:05}"))
    }

    /// Grants a lease of `ttl_secs`; returns its id and granted TTL.
    pub async fn grant_lease(&self, ttl_secs: i64) -> ManifestResult<(i64, i64)> {
        let r = self
            .client
            .clone()
            .lease_grant(ttl_secs, None)
            .await
            .map_err(|e| unavailable("lease grant", e))?;
        Ok((r.id(), r.ttl()))
    }

    /// Renews a lease once; returns the remaining TTL in seconds (0: the lease is gone).
    pub async fn keep_alive(&self, lease: i64) -> ManifestResult<i64> {
        // etcd answers an expired (or revoked) lease with "lease not found", at whichever step
        // it notices: that is an answer (the lease is gone), not an outage.
        let gone = |e: &etcd_client::Error| e.to_string().contains("lease not found");
        let (mut keeper, mut stream) = match self.client.clone().lease_keep_alive(lease).await {
            Ok(ks) => ks,
            Err(e) if gone(&e) => return Ok(0),
            Err(e) => return Err(unavailable("lease keep-alive", e)),
        };
        match keeper.keep_alive().await {
            Ok(()) => {}
            Err(e) if gone(&e) => return Ok(0),
            Err(e) => return Err(unavailable("lease keep-alive", e)),
        }
        match stream.message().await {
            Ok(Some(r)) => Ok(r.ttl()),
            Ok(None) => Err(unavailable("lease keep-alive", "stream closed")),
            Err(e) if gone(&e) => Ok(0),
            Err(e) => Err(unavailable("lease keep-alive", e)),
        }
    }

    /// Revokes a lease: every key under it goes at once.
    pub async fn revoke(&self, lease: i64) -> ManifestResult<()> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| unavailable("lease revoke", e))?;
        Ok(())
    }

    /// Creates `key` = `holder` under `lease` if it does not exist: its creation revision,
    /// or `None` if it exists.
    async fn claim_key(
        &self,
        key: String,
        holder: &str,
        lease: i64,
        what: &'static str,
    ) -> ManifestResult<Option<i64>> {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                holder,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable(what, e))?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Deletes `key` if its creation revision is `create_revision` (a claim still ours).
    async fn release_key(
        &self,
        key: String,
        create_revision: i64,
        what: &'static str,
    ) -> ManifestResult<bool> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                create_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable(what, e))?;
        Ok(resp.succeeded())
    }

    /// Creates `key` = `body` if it does not exist; fails (naming the key) if it does.
    async fn create_record(
        &self,
        key: String,
        body: Vec<u8>,
        what: &'static str,
    ) -> ManifestResult<()> {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), body, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable(what, e))?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(unavailable(what, format!("{key} exists")))
        }
    }

    /// Every key under `prefix`: (the rest of the key, value).
    async fn list_under(
        &self,
        prefix: String,
        what: &'static str,
    ) -> ManifestResult<Vec<(String, Vec<u8>)>> {
        let r = self
            .client
            .clone()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| unavailable(what, e))?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| {
                let id = kv.key_str().ok()?.strip_prefix(&prefix)?.to_string();
                Some((id, kv.value().to_vec()))
            })
            .collect())
    }

    /// Reads the whole cluster state in one request.
    pub async fn view(&self) -> ManifestResult<ClusterView> {
        let prefix = format!("{}/", self.prefix);
        let resp = self
            .client
            .clone()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| unavailable("read cluster", e))?;
        let mut v = ClusterView {
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            ..Default::default()
        };
        let mut epochs: HashMap<u32, u64> = HashMap::new();
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let rest = &key[prefix.len()..];
            let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
            match kind {
                "config" => v.config = serde_json::from_slice(kv.value()).ok(),
                "nodes" => {
                    if let Ok(n) = serde_json::from_slice::<NodeInfo>(kv.value()) {
                        v.nodes.insert(name.to_string(), n);
                    }
                }
                "owners" => {
                    if let (Ok(p), Ok(o)) = (
                        name.parse::<u32>(),
                        serde_json::from_slice::<OwnerInfo>(kv.value()),
                    ) {
                        v.owners.insert(
                            p,
                            Ownership {
                                owner: o,
                                create_revision: kv.create_revision(),
                                epoch: None,
                            },
                        );
                    }
                }
                "epochs" => {
                    if let (Ok(p), Some(e)) = (
                        name.parse::<u32>(),
                        kv.value_str().ok().and_then(|s| s.parse::<u64>().ok()),
                    ) {
                        epochs.insert(p, e);
                    }
                }
                "manifests" => {
                    if let (Ok(p), Ok(ptr)) = (
                        name.parse::<u32>(),
                        serde_json::from_slice::<Pointer>(kv.value()),
                    ) {
                        v.manifests.insert(p, ptr.version);
                    }
                }
                "drain" => v.draining.push(name.to_string()),
                "compactors" => {
                    if let Ok(c) = serde_json::from_slice::<CompactorInfo>(kv.value()) {
                        v.compactors.insert(name.to_string(), c);
                    }
                }
                "compaction" => {
                    if let (Ok(p), Ok(w)) = (name.parse::<u32>(), kv.value_str()) {
                        v.compaction_claims
                            .insert(p, (w.to_string(), kv.create_revision()));
                    }
                }
                "partmap" => {
                    // An undecodable map becomes an empty one, which `partition_map` refuses.
                    let r =
                        serde_json::from_slice::<Vec<(u64, u32)>>(kv.value()).unwrap_or_default();
                    v.partmap = Some((r, kv.mod_revision()));
                }
                "compaction-settings" => {
                    let parsed = serde_json::from_slice::<CompactionSettings>(kv.value())
                        .map_err(|e| format!("unreadable compaction settings: {e}"));
                    v.compaction_settings = Some((parsed, kv.mod_revision()));
                }
                "stats" => {
                    if let Ok(s) = serde_json::from_slice::<Vec<PartitionProgress>>(kv.value()) {
                        v.stats.insert(name.to_string(), s);
                    }
                }
                _ => {}
            }
        }
        for (p, o) in v.owners.iter_mut() {
            o.epoch = epochs.get(p).copied();
        }
        Ok(v)
    }

    /// Wakes `notify` whenever something under the cluster prefix changes other than the
    /// published progress (membership, ownership, epochs, pointers, drains), until `stop`.
    /// A broken watch is re-created after a pause; callers still poll as a fallback, since a
    /// watch can miss nothing that a later full read would not show.
    pub async fn watch_changes(
        &self,
        notify: Arc<tokio::sync::Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let prefix = format!("{}/", self.prefix);
        let stats = format!("{prefix}stats/");
        loop {
            let opened = self
                .client
                .clone()
                .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
                .await;
            if let Ok(mut stream) = opened {
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    match msg {
                        // etcd cancels a watch instead of failing it (a stale token, a
                        // compacted revision): open a new one.
                        Ok(Some(r)) if r.canceled() => break,
                        Ok(Some(r)) => {
                            let relevant = r.events().iter().any(|e| {
                                e.kv()
                                    .is_none_or(|kv| !kv.key().starts_with(stats.as_bytes()))
                            });
                            if relevant {
                                notify.notify_one();
                            }
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            tokio::select! {
                _ = strata_clock::sleep(Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Everything under the cluster prefix, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// etcd revision of the read.
    pub revision: i64,
    /// Cluster config, if the cluster was initialised.
    pub config: Option<ClusterConfig>,
    /// Live nodes by id.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Owners by partition.
    pub owners: BTreeMap<u32, Ownership>,
    /// Manifest versions by partition.
    pub manifests: BTreeMap<u32, u64>,
    /// Nodes an operator asked to drain.
    pub draining: Vec<String>,
    /// Published progress by node.
    pub stats: BTreeMap<String, Vec<PartitionProgress>>,
    /// Compactor workers registered (under their leases), by worker id.
    pub compactors: BTreeMap<String, CompactorInfo>,
    /// Compaction claims: partition -> (worker id, creation revision of the claim).
    pub compaction_claims: BTreeMap<u32, (String, i64)>,
    /// The partition map's ranges `(start hash, partition)` once a partition split, and the
    /// key's modification revision; `None` while the map is the uniform one of the config.
    pub partmap: Option<(Vec<(u64, u32)>, i64)>,
    /// The cluster's compaction settings and their key's modification revision (`None`:
    /// none set, workers use their flags). Unreadable settings read as `Err`.
    pub compaction_settings: Option<(Result<CompactionSettings, String>, i64)>,
}

impl ClusterView {
    /// The partition map in force (uniform over the configured count until a split), and the
    /// revision of the `partmap` key (0 while there is none). An unreadable map is an error:
    /// guessing could let two partitions serve one key.
    pub fn partition_map(&self) -> Result<(strata_format::PartitionMap, i64), String> {
        match (&self.partmap, &self.config) {
            (Some((r, rev)), _) => strata_format::PartitionMap::from_ranges(r.clone())
                .map(|m| (m, *rev))
                .map_err(|e| format!("partition map at revision {rev}: {e}")),
            (None, Some(c)) => Ok((strata_format::PartitionMap::uniform(c.partitions), 0)),
            (None, None) => Err("the cluster has no config yet".into()),
        }
    }

    /// [`ClusterView::partition_map`] for display: the uniform map when it cannot be read.
    pub fn partition_map_or_uniform(&self) -> strata_format::PartitionMap {
        self.partition_map().map(|(m, _)| m).unwrap_or_else(|_| {
            strata_format::PartitionMap::uniform(self.config.map_or(1, |c| c.partitions))
        })
    }
}

//! Strata's Rust client.
//!
//! It keeps the cluster's routing table (`strata.v1.Admin/ClusterMap`), hashes each key to
//! its partition exactly as the servers do ([`strata_format::partition_of`]) and sends the
//! request straight to the owner. When partitions move (a node joins, drains or dies) it
//! refreshes the table and retries, within a deadline, every failure that certainly applied
//! nothing: answers marked retry-safe by the server, and connections that could not even be
//! opened. A write whose outcome is unknown (the connection broke after sending it) is never
//! resent: that is the caller's decision, and it gets `UNAVAILABLE`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tonic::Status> {
//! let client = strata_client::Client::connect(&["127.0.0.1:50051"]).await?;
//! let version = client.put("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?.map(|(v, _)| v), Some("hello".into()));
//! # let _ = version; Ok(()) }
//! ```

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use pb::admin_client::AdminClient;
use pb::kv_client::KvClient;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::auth::{Bearer, ClientTls, Transport};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use strata_proto::headers::SESSION as SESSION_HEADER;
/// Generated protobuf and gRPC code for `strata.v1` (from `strata-proto`).
pub use strata_proto::pb;
/// Whether a failed attempt certainly applied nothing (the server marked it, or the connection
/// could not be opened).
pub use strata_proto::retry::is_retry_safe;
use strata_proto::MAX_MESSAGE_BYTES;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one attempt.
    pub request_timeout: Duration,
    /// How long a request keeps retrying while its partition moves.
    pub retry_budget: Duration,
    /// Bearer token sent with every request (a server with a tokens file requires one).
    /// Never printed: `Debug` shows it redacted.
    pub token: Bearer,
    /// TLS settings; with them (or `https://` seeds) every connection is TLS.
    pub tls: Option<ClientTls>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(20),
            retry_budget: Duration::from_secs(30),
            token: Bearer::default(),
            tls: None,
        }
    }
}

impl ClientOptions {
    /// These options with `token` sent on every request.
    pub fn with_token(mut self, token: &str) -> Result<Self, Status> {
        self.token = Bearer::new(Some(token))
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        Ok(self)
    }
}

#[derive(Debug, Default)]
struct Map {
    partitions: u32,
    /// Hash ranges after a split (`None`: uniform over `partitions`).
    ranges: Option<strata_format::PartitionMap>,
    /// Owner address per partition id ("" = none known).
    owners: Vec<String>,
    /// Every known node address.
    nodes: Vec<String>,
    revision: i64,
    /// The prefix the server stores this client's keys under (its tenant's namespace):
    /// partitions are computed on prefix + key.
    key_prefix: Bytes,
}

/// A routing client. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    seeds: Vec<String>,
    opts: ClientOptions,
    map: RwLock<Arc<Map>>,
    conns: Mutex<HashMap<String, Channel>>,
    /// Round-robin cursor over nodes for requests with no known owner.
    next: std::sync::atomic::AtomicUsize,
    /// This client's session: the newest version it wrote per partition (from the servers'
    /// session tokens), so its eventually consistent reads still see its own writes.
    session: Mutex<HashMap<u32, u64>>,
}

fn normalize(addr: &str) -> String {
    addr.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

impl Client {
    /// Connects through any of `seeds` (`host:port`) and loads the routing table.
    pub async fn connect(seeds: &[&str]) -> Result<Client, Status> {
        Self::connect_with(seeds, ClientOptions::default()).await
    }

    /// [`Client::connect`] with options.
    pub async fn connect_with(seeds: &[&str], opts: ClientOptions) -> Result<Client, Status> {
        if seeds.is_empty() {
            return Err(Status::invalid_argument(
                "seeds: at least one address needed",
            ));
        }
        let mut opts = opts;
        // An https:// seed asks for TLS on every connection (with the system's CAs unless
        // the options name some).
        if opts.tls.is_none() && seeds.iter().any(|s| s.starts_with("https://")) {
            opts.tls = Some(ClientTls::default());
        }
        let c = Client {
            inner: Arc::new(Inner {
                seeds: seeds.iter().map(|s| normalize(s)).collect(),
                opts,
                map: RwLock::new(Arc::new(Map::default())),
                conns: Mutex::new(HashMap::new()),
                next: Default::default(),
                session: Mutex::new(HashMap::new()),
            }),
        };
        c.refresh().await?;
        Ok(c)
    }

    fn channel(&self, addr: &str) -> Result<Transport, Status> {
        let bearer = self.inner.opts.token.clone();
        if let Some(c) = self.inner.conns.lock().get(addr) {
            return Ok(InterceptedService::new(c.clone(), bearer));
        }
        let ch = strata_proto::auth::endpoint(
            addr,
            self.inner.opts.tls.as_ref(),
            Duration::from_secs(2),
        )
        .map_err(|e| Status::invalid_argument(format!("bad address {addr}: {e}")))?
        .timeout(self.inner.opts.request_timeout)
        .connect_lazy();
        self.inner.conns.lock().insert(addr.to_string(), ch.clone());
        Ok(InterceptedService::new(ch, bearer))
    }

    fn kv(&self, addr: &str) -> Result<KvClient<Transport>, Status> {
        Ok(KvClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Re-reads the routing table from any reachable node.
    pub async fn refresh(&self) -> Result<(), Status> {
        let mut candidates: Vec<String> = self.inner.map.read().nodes.clone();
        for s in &self.inner.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let mut last = Status::unavailable("no node answered");
        for addr in candidates {
            let mut admin = AdminClient::new(self.channel(&addr)?);
            match admin.cluster_map(pb::ClusterMapRequest {}).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let ids = r.owners.iter().map(|o| o.partition + 1).max().unwrap_or(0);
                    let mut owners = vec![String::new(); r.partitions.max(1).max(ids) as usize];
                    for o in &r.owners {
                        if let Some(slot) = owners.get_mut(o.partition as usize) {
                            *slot = normalize(&o.addr);
                        }
                    }
                    let mut nodes: Vec<String> =
                        r.nodes.iter().map(|n| normalize(&n.addr)).collect();
                    if nodes.is_empty() {
                        nodes.push(addr.clone());
                    }
                    let mut map = self.inner.map.write();
                    // Never go back to an older table (answers from a lagging node).
                    if r.revision >= map.revision || map.partitions == 0 {
                        let ranges = (!r.ranges.is_empty())
                            .then(|| {
                                strata_format::PartitionMap::from_ranges(
                                    r.ranges.iter().map(|h| (h.start, h.partition)).collect(),
                                )
                                .ok()
                            })
                            .flatten();
                        *map = Arc::new(Map {
                            partitions: r.partitions.max(1),
                            ranges,
                            owners,
                            nodes,
                            revision: r.revision,
                            key_prefix: r.key_prefix,
                        });
                    }
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Number of partitions of the cluster (1 for a single node).
    pub fn partitions(&self) -> u32 {
        self.inner.map.read().partitions.max(1)
    }

    /// The partition `key` belongs to (by the partition map, once partitions split; under the
    /// tenant's namespace prefix, as the server stores it).
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        let map = self.inner.map.read();
        let stored;
        let key = if map.key_prefix.is_empty() {
            key
        } else {
            let mut k = Vec::with_capacity(map.key_prefix.len() + key.len());
            k.extend_from_slice(&map.key_prefix);
            k.extend_from_slice(key);
            stored = k;
            &stored
        };
        match &map.ranges {
            Some(r) => r.partition_of(key),
            None => strata_format::partition_of(key, map.partitions.max(1)),
        }
    }

    /// Where to send a request for `partition`: its owner, or any node (which forwards).
    fn target(&self, partition: Option<u32>) -> String {
        let map = self.inner.map.read().clone();
        if let Some(p) = partition {
            if let Some(a) = map.owners.get(p as usize).filter(|a| !a.is_empty()) {
                return a.clone();
            }
        }
        let nodes = if map.nodes.is_empty() {
            &self.inner.seeds
        } else {
            &map.nodes
        };
        let i = self
            .inner
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        nodes[i % nodes.len()].clone()
    }

    /// Runs `f` on the right node, retrying retry-safe failures (and, for `idempotent`
    /// requests, every `UNAVAILABLE`) with a fresh routing table until the budget is spent.
    async fn call<T, F, Fut>(
        &self,
        partition: Option<u32>,
        idempotent: bool,
        f: F,
    ) -> Result<T, Status>
    where
        F: Fn(KvClient<Transport>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = strata_clock::now() + self.inner.opts.retry_budget;
        let mut backoff = Duration::from_millis(20);
        loop {
            let addr = self.target(partition);
            let res = f(self.kv(&addr)?).await;
            match res {
                Err(s)
                    if (is_retry_safe(&s) || (idempotent && s.code() == Code::Unavailable))
                        && strata_clock::now() + backoff < deadline =>
                {
                    tracing::debug!(addr, error = %s, "retrying elsewhere");
                    strata_clock::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    // Best effort: with every node down the next attempt fails again anyway.
                    let _ = self.refresh().await;
                }
                other => return other,
            }
        }
    }

    /// The value and version of `key`, or `None`.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<(Bytes, u64)>, Status> {
        let key = key.into();
        let p = self.partition_of(&key);
        let r = self
            .call(Some(p), true, |mut c| {
                let key = key.clone();
                async move {
                    c.get(pb::GetRequest {
                        key,
                        consistency: pb::Consistency::Strong as i32,
                    })
                    .await
                }
            })
            .await?
            .into_inner();
        Ok(r.found.then_some((r.value, r.version)))
    }

    /// Remembers the session token of a write answer.
    fn note_session(&self, md: &tonic::metadata::MetadataMap) {
        let Some(v) = md.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
            return;
        };
        // One token per partition written (a batch across partitions carries several).
        let mut s = self.inner.session.lock();
        for (p, v) in v
            .split(',')
            .filter_map(|t| t.trim().split_once(':'))
            .filter_map(|(p, v)| Some((p.parse::<u32>().ok()?, v.parse::<u64>().ok()?)))
        {
            let e = s.entry(p).or_insert(0);
            *e = (*e).max(v);
        }
    }

    /// An eventually consistent read: any node may answer from flushed data (cheaper, and
    /// it spreads load), but never older than this client's own writes (read-your-writes).
    pub async fn get_eventual(
        &self,
        key: impl Into<Bytes>,
    ) -> Result<Option<(Bytes, u64)>, Status> {
        let key = key.into();
        let p = self.partition_of(&key);
        let token = self
            .inner
            .session
            .lock()
            .get(&p)
            .map(|v| format!("{p}:{v}"));
        let r = self
            .call(None, true, |mut c| {
                let (key, token) = (key.clone(), token.clone());
                async move {
                    let mut req = tonic::Request::new(pb::GetRequest {
                        key,
                        consistency: pb::Consistency::Eventual as i32,
                    });
                    if let Some(t) = token.and_then(|t| t.parse().ok()) {
                        req.metadata_mut().insert(SESSION_HEADER, t);
                    }
                    c.get(req).await
                }
            })
            .await?
            .into_inner();
        Ok(r.found.then_some((r.value, r.version)))
    }

    /// Stores `value` under `key`; returns the write's version.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64, Status> {
        self.put_request(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
    }

    /// A put with every option (TTL, conditions, durability).
    pub async fn put_request(&self, req: pb::PutRequest) -> Result<u64, Status> {
        let p = self.partition_of(&req.key);
        let r = self
            .call(Some(p), false, |mut c| {
                let req = req.clone();
                async move { c.put(req).await }
            })
            .await?;
        self.note_session(r.metadata());
        Ok(r.into_inner().version)
    }

    /// Deletes `key`; returns whether a live value was there, and the tombstone's version.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<(bool, u64), Status> {
        self.delete_request(pb::DeleteRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
    }

    /// A delete with every option.
    pub async fn delete_request(&self, req: pb::DeleteRequest) -> Result<(bool, u64), Status> {
        let p = self.partition_of(&req.key);
        let r = self
            .call(Some(p), false, |mut c| {
                let req = req.clone();
                async move { c.delete(req).await }
            })
            .await?;
        self.note_session(r.metadata());
        let r = r.into_inner();
        Ok((r.found, r.version))
    }

    /// Several keys; one result per key, in order. A reply that would pass the server's
    /// message limit comes back in part (`unprocessed_keys`); the rest is asked for again
    /// until every key has its result. Each round reads its own snapshot: keys answered in
    /// different rounds may reflect different moments.
    pub async fn batch_get(&self, keys: Vec<Bytes>) -> Result<Vec<pb::GetResponse>, Status> {
        let mut out = Vec::with_capacity(keys.len());
        let mut keys = keys;
        loop {
            let p = keys.first().map(|k| self.partition_of(k));
            let single = keys.iter().all(|k| Some(self.partition_of(k)) == p);
            let r = self
                .call(if single { p } else { None }, true, |mut c| {
                    let keys = keys.clone();
                    async move {
                        c.batch_get(pb::BatchGetRequest {
                            keys,
                            consistency: pb::Consistency::Strong as i32,
                        })
                        .await
                    }
                })
                .await?
                .into_inner();
            if r.results.is_empty() && !r.unprocessed_keys.is_empty() {
                return Err(Status::internal(
                    "the server read none of a BatchGet's keys and listed them all as unprocessed",
                ));
            }
            // Results answer the first keys in request order and the rest are listed, in
            // order: anything else would pair values with the wrong keys.
            let n = r.results.len();
            if n + r.unprocessed_keys.len() != keys.len() || r.unprocessed_keys[..] != keys[n..] {
                return Err(Status::internal(format!(
                    "a BatchGet reply of {n} results and {} unprocessed keys does not split \
                     the {} keys asked for",
                    r.unprocessed_keys.len(),
                    keys.len()
                )));
            }
            out.extend(r.results);
            if r.unprocessed_keys.is_empty() {
                return Ok(out);
            }
            keys = r.unprocessed_keys;
        }
    }

    /// An all-or-nothing batch. Keys in several partitions commit as a transaction (two-phase,
    /// through a durable record), coordinated by the node the batch is sent to.
    pub async fn batch_write(&self, req: pb::BatchWriteRequest) -> Result<Vec<u64>, Status> {
        let p = req.ops.iter().find_map(|o| match &o.op {
            Some(pb::write_op::Op::Put(p)) => Some(self.partition_of(&p.key)),
            Some(pb::write_op::Op::Delete(d)) => Some(self.partition_of(&d.key)),
            None => None,
        });
        let r = self
            .call(p, false, |mut c| {
                let req = req.clone();
                async move { c.batch_write(req).await }
            })
            .await?;
        self.note_session(r.metadata());
        Ok(r.into_inner().versions)
    }

    /// Every live entry of a scan, in key order (any node merges all partitions).
    pub async fn scan(&self, req: pb::ScanRequest) -> Result<Vec<pb::KeyValue>, Status> {
        self.call(None, true, |mut c| {
            let req = req.clone();
            async move {
                let mut st = c.scan(req).await?.into_inner();
                let mut out = Vec::new();
                while let Some(r) = st.next().await {
                    out.extend(r?.entries);
                }
                Ok(out)
            }
        })
        .await
    }
}

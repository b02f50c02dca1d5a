//! The gRPC `strata.v1.KV` service: request validation, routing (local engine or the
//! partition's owner) and mapping onto the engine.
//!
//! Validation happens before anything reaches the engine, so a bad op in a batch rejects
//! the whole batch with nothing applied, and every message names the field and the limit.

use super::auth::{principal, write_cost, Principal};
use super::status::{invalid, is_retry_safe, retry_safe};
use crate::cluster::{ClusterNode, Route};
use crate::pb;
use crate::pb::kv_client::KvClient;
use crate::pb::kv_server::{Kv, KvServer};
use crate::{MAX_KEY_BYTES, MAX_MESSAGE_BYTES, MAX_VALUE_BYTES};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use strata_clock::Instant;
use strata_engine::{prefix_end, Cond, Op, WriteOp};
use strata_engine::{Db, MAX_SNAPSHOT_AGE};
use strata_proto::reason;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Most entries in one scan response chunk.
const SCAN_CHUNK_ENTRIES: usize = 256;
/// Approximate largest scan response chunk.
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Most keys or ops in one batch.
pub const MAX_BATCH_OPS: usize = 10_000;
/// Room for the results of one BatchGet reply: the message limit less a margin for framing
/// and metadata.
const REPLY_BUDGET: usize = MAX_MESSAGE_BYTES - (64 << 10);
pub(crate) use strata_proto::headers::REPLY_BUDGET as REPLY_BUDGET_HEADER;

/// How long a request keeps retrying a partition that is moving (no owner yet, opening,
/// handing off) before it gets `UNAVAILABLE`: longer than a failover normally takes.
const MOVE_RETRY_BUDGET: Duration = Duration::from_secs(8);

// Metadata names: their meaning is documented in `strata_proto::headers`.
pub use strata_proto::headers::FLUSHED_SEQ as FLUSHED_SEQ_HEADER;
pub use strata_proto::headers::FORWARDED_PARTITION as FORWARDED_HEADER;
pub use strata_proto::headers::MAP_CHANGED as MAP_CHANGED_HEADER;
pub use strata_proto::headers::OWNER as OWNER_HEADER;
pub use strata_proto::headers::PARTITION as PARTITION_HEADER;
pub use strata_proto::headers::SESSION as SESSION_HEADER;
pub use strata_proto::headers::STALE_MS as STALE_MS_HEADER;
pub use strata_proto::headers::STALE_SEQS as STALE_SEQS_HEADER;

#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Single(Db),
    Cluster(ClusterNode),
}

/// The KV service. Until the engine has recovered (or the node joined its cluster), every
/// call answers `UNAVAILABLE`.
#[derive(Clone, Debug, Default)]
pub struct KvService {
    backend: Arc<OnceLock<Backend>>,
    peers: Arc<Mutex<HashMap<String, Channel>>>,
    /// This node's advertised address (for `x-strata-owner` on local answers).
    pub(super) me: Arc<OnceLock<String>>,
    /// Whether the server has a tokens file: then every request must carry the principal the
    /// auth layer found (see `auth.rs`).
    tenants: Arc<AtomicBool>,
    /// TLS settings of calls to peers (`None`: plaintext).
    peer_tls: Arc<Mutex<Option<strata_proto::auth::ClientTls>>>,
}

impl KvService {
    /// A service whose engine is not open yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires every request to have passed the auth layer with a token (a server with a
    /// tokens file).
    pub fn set_tenants(&self, on: bool) {
        self.tenants.store(on, Ordering::Release);
    }

    /// Makes calls to peers use TLS with these settings (again, after a certificate rotation:
    /// the channels to peers are then dropped, and calls from now on connect anew presenting
    /// the new certificate; calls in flight finish on the channel they hold).
    pub fn set_peer_tls(&self, tls: strata_proto::auth::ClientTls) {
        let mut cur = self.peer_tls.lock();
        *cur = Some(tls);
        self.peers.lock().clear();
    }

    /// The request's context, with the principal the auth layer found.
    pub(crate) fn ctx<T>(&self, req: &Request<T>) -> Result<Ctx, Status> {
        let who = principal(req, self.tenants.load(Ordering::Acquire))?;
        Ok(ctx(req, who))
    }

    /// Makes the service answer with `db` (a single node: one partition).
    pub fn set_db(&self, db: Db) {
        let _ = self.backend.set(Backend::Single(db));
    }

    /// Makes the service answer for a cluster node: local partitions from their engines,
    /// the others forwarded to their owners.
    pub fn set_cluster(&self, node: ClusterNode, advertise: String) {
        let _ = self.me.set(advertise);
        let _ = self.backend.set(Backend::Cluster(node));
    }

    pub(crate) fn backend(&self) -> Result<&Backend, Status> {
        self.backend
            .get()
            .ok_or_else(|| retry_safe(reason::NOT_READY, "server is recovering; retry shortly"))
    }

    fn partition_of(&self, key: &[u8]) -> Result<u32, Status> {
        Ok(match self.backend()? {
            Backend::Single(_) => 0,
            Backend::Cluster(n) => n.map().partition_of(key),
        })
    }

    pub(crate) fn route(&self, p: u32) -> Result<Route, Status> {
        match self.backend()? {
            Backend::Single(db) => Ok(Route::Local(db.clone())),
            Backend::Cluster(n) => n.route(p).map_err(status),
        }
    }

    /// The (lazily connected) channel to a peer node.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, Status> {
        if let Some(c) = self.peers.lock().get(addr) {
            return Ok(c.clone());
        }
        // The TLS settings are held across the insert: a channel built with settings that a
        // rotation has just replaced is never cached after the rotation cleared the cache.
        let tls = self.peer_tls.lock();
        let ch = strata_proto::auth::endpoint(addr, tls.as_ref(), Duration::from_secs(2))
            .map_err(|e| Status::internal(format!("peer {addr}: {e}")))?
            .connect_lazy();
        self.peers.lock().insert(addr.to_string(), ch.clone());
        drop(tls);
        Ok(ch)
    }

    fn peer(&self, addr: &str) -> Result<KvClient<Channel>, Status> {
        Ok(KvClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Runs `f` against partition `p`'s current route, retrying while the partition moves
    /// (answers marked retry-safe: nothing was applied). A forwarded request is not retried
    /// here: the node that forwarded it retries, with a fresh route.
    ///
    /// With `key`, the partition is looked up again on every attempt: a partition that split
    /// while the request waited sends the key to the half that now serves it.
    pub(crate) async fn on_partition<T, F, Fut>(
        &self,
        p: u32,
        key: Option<&[u8]>,
        ctx: &Ctx,
        f: F,
    ) -> Result<(T, String), Status>
    where
        F: Fn(Route, u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let forwarded = ctx.forwarded;
        let deadline = strata_clock::now() + ctx.budget;
        let map_rev = self.map_revision();
        let hard = ctx.answer_by.map(|d| strata_clock::now() + d);
        let mut backoff = Duration::from_millis(10);
        loop {
            let p = match key {
                Some(k) => self.partition_of(k)?,
                None => p,
            };
            let attempt = async {
                match self.route(p) {
                    Ok(Route::Remote(addr)) if forwarded => Err(retry_safe(
                        reason::NOT_OWNER,
                        format!("partition {p} is not served by this node (owner: {addr})"),
                    )),
                    Ok(Route::Remote(addr)) => f(Route::Remote(addr.clone()), p)
                        .await
                        .map(|t| (t, addr.clone()))
                        .map_err(|s| {
                            // The owner we know of cannot be reached (it may have just died):
                            // the request never got there, so it may go wherever the
                            // partition is next.
                            if unreachable_peer(&s) {
                                retry_safe(
                                    reason::NOT_OWNER,
                                    format!(
                                        "partition {p}: owner {addr} unreachable: {}",
                                        s.message()
                                    ),
                                )
                            } else {
                                s
                            }
                        }),
                    Ok(route) => f(route, p)
                        .await
                        .map(|t| (t, self.me.get().cloned().unwrap_or_default())),
                    Err(e) => Err(e),
                }
            };
            // Answer before the client's deadline: an UNAVAILABLE it can act on rather than
            // its own DEADLINE_EXCEEDED (or tonic's CANCELLED).
            let res = match hard {
                Some(at) => strata_clock::timeout_at(at, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(strata_proto::reason::with_reason(
                            Status::unavailable(
                                "outcome unknown: the request's deadline passed while the \
                                 partition or its storage did not answer",
                            ),
                            reason::DEADLINE,
                        ))
                    }),
                None => attempt.await,
            };
            match res {
                // A multi-key request grouped by an older map: let the caller group it again.
                Err(s)
                    if key.is_none()
                        && is_retry_safe(&s)
                        && (self.map_revision() != map_rev
                            || s.metadata().get(MAP_CHANGED_HEADER).is_some()) =>
                {
                    return Err(s)
                }
                Err(s)
                    if !forwarded
                        && is_retry_safe(&s)
                        && strata_clock::now() + backoff < deadline =>
                {
                    strata_clock::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// The tonic service with our message size limits (a larger request is answered
    /// `RESOURCE_EXHAUSTED`).
    pub fn into_server(self) -> super::message_limit::MessageLimit<KvServer<KvService>> {
        super::message_limit::MessageLimit::new(
            KvServer::new(self)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }
}

/// Whether a forwarded request failed because the peer could not be connected to (so it was
/// never sent).
fn unreachable_peer(s: &Status) -> bool {
    if s.code() != tonic::Code::Unavailable {
        return false;
    }
    let m = format!("{s:?}").to_ascii_lowercase();
    m.contains("tcp connect error") || m.contains("connection refused")
}

/// What a request allows: whether it was forwarded by a peer, and how long it may spend
/// waiting for its partition to settle (the retry budget, cut to the client's deadline).
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) forwarded: bool,
    pub(crate) budget: Duration,
    /// Time from now by which an answer must be sent (from the client's deadline).
    pub(crate) answer_by: Option<Duration>,
    /// Session tokens the request carries: newest version seen per partition.
    pub(crate) sessions: HashMap<u32, u64>,
    /// Who sent it (its namespace and rights).
    pub(crate) who: Principal,
    /// The client's `authorization` metadata, passed on with what this node forwards (the
    /// owner checks it again).
    pub(crate) bearer: Option<PassedBearer>,
}

/// A client's `authorization` value on its way to a peer: marked sensitive (HTTP/2 header
/// compression never indexes it) and never printed.
#[derive(Clone)]
pub(crate) struct PassedBearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl std::fmt::Debug for PassedBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn ctx<T>(req: &Request<T>, who: Principal) -> Ctx {
    let mut budget = MOVE_RETRY_BUDGET;
    let timeout = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    if let Some(t) = timeout {
        // Leave the last quarter of the client's deadline for the attempt itself.
        budget = budget.min(t.mul_f64(0.75));
    }
    Ctx {
        forwarded: forwarded_partition(req).is_some(),
        budget,
        answer_by: timeout.map(|t| t.mul_f64(0.9)),
        sessions: sessions(req),
        who,
        bearer: req
            .metadata()
            .get(strata_proto::headers::AUTHORIZATION)
            .cloned()
            .map(|mut v| {
                v.set_sensitive(true);
                PassedBearer(v)
            }),
    }
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, units H M S m u n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The partition a forwarded request names, if it is one.
pub(crate) fn forwarded_partition<T>(req: &Request<T>) -> Option<u32> {
    req.metadata()
        .get(FORWARDED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A request to forward to partition `p`'s owner, with the client's credentials.
pub(crate) fn forward<T>(p: u32, msg: T, cx: &Ctx) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from(p));
    if let Some(b) = &cx.bearer {
        r.metadata_mut()
            .insert(strata_proto::headers::AUTHORIZATION, b.0.clone());
    }
    r.set_timeout(MOVE_RETRY_BUDGET + Duration::from_secs(12));
    r
}

/// The newest write per partition that the request's session tokens say the client has seen.
fn sessions<T>(req: &Request<T>) -> HashMap<u32, u64> {
    let mut out: HashMap<u32, u64> = HashMap::new();
    let Some(v) = req
        .metadata()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return out;
    };
    for (p, seq) in v
        .split(',')
        .filter_map(|t| t.trim().split_once(':'))
        .filter_map(|(p, s)| Some((p.parse::<u32>().ok()?, s.parse::<u64>().ok()?)))
    {
        let e = out.entry(p).or_insert(0);
        *e = (*e).max(seq);
    }
    out
}

/// A write's response: routing hints plus the session token of the write.
fn answer_write<T>(msg: T, p: u32, owner: &str, version: u64) -> Response<T> {
    let mut r = answer(msg, p, owner);
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(format!("{p}:{version}")) {
        r.metadata_mut().insert(SESSION_HEADER, v);
    }
    r
}

/// A response with the routing hints.
fn answer<T>(msg: T, p: u32, owner: &str) -> Response<T> {
    let mut r = Response::new(msg);
    r.metadata_mut()
        .insert(PARTITION_HEADER, tonic::metadata::MetadataValue::from(p));
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(owner) {
        r.metadata_mut().insert(OWNER_HEADER, v);
    }
    r
}

fn check_value(field: &str, value: &[u8]) -> Result<(), Status> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(invalid(
            reason::VALUE_TOO_LARGE,
            format!(
                "{field}: must be at most {MAX_VALUE_BYTES} bytes, got {} bytes",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn check_consistency(field: &str, v: i32) -> Result<(), Status> {
    pb::Consistency::try_from(v).map(|_| ()).map_err(|_| {
        Status::invalid_argument(format!(
            "{field}: unknown consistency {v} (expected 0 = unspecified, 1 = strong, 2 = eventual)"
        ))
    })
}

fn durable(field: &str, v: i32) -> Result<bool, Status> {
    match pb::Durability::try_from(v) {
        Ok(pb::Durability::Buffered) => Ok(false),
        Ok(_) => Ok(true),
        Err(_) => Err(Status::invalid_argument(format!(
            "{field}: unknown durability {v} (expected 0 = unspecified, 1 = durable, 2 = buffered)"
        ))),
    }
}

fn check_batch_len(field: &str, n: usize) -> Result<(), Status> {
    if n > MAX_BATCH_OPS {
        return Err(invalid(
            reason::BATCH_TOO_LARGE,
            format!("{field}: at most {MAX_BATCH_OPS} per batch, got {n}"),
        ));
    }
    Ok(())
}

/// A put as the engine takes it, its key in stored form (see [`Principal::key_in`]).
pub(crate) fn put_op(
    field: &str,
    p: pb::PutRequest,
    who: &Principal,
    forwarded: bool,
) -> Result<WriteOp, Status> {
    let key = who.key_in(&format!("{field}key"), p.key, forwarded)?;
    who.check_put_key(&format!("{field}key"), &key)?;
    check_value(&format!("{field}value"), &p.value)?;
    let cond = match p.condition {
        None | Some(pb::put_request::Condition::IfAbsent(false)) => Cond::None,
        Some(pb::put_request::Condition::IfAbsent(true)) => Cond::IfAbsent,
        Some(pb::put_request::Condition::IfVersion(v)) => Cond::IfVersion(v),
    };
    Ok(WriteOp {
        key: owned(key),
        op: Op::Put {
            value: owned(p.value),
            ttl_ms: p.ttl_ms,
        },
        cond,
    })
}

/// An exactly sized copy of a key or value decoded from a request. Decoded, it is a slice of
/// the request's receive buffer (8 KiB at least, and for large values up to twice their size),
/// which the memtable would keep alive while its budget counts only the slice: heaptrack of a
/// 1 MiB write flood found 352 MB of receive buffers at the peak against a 256 MiB write budget
/// (76 MB with the copies). Copied here, on the request's own task, rather than in the
/// engine's single commit loop (there it cost buffered 1 KiB puts a fifth of their rate).
fn owned(b: Bytes) -> Bytes {
    Bytes::copy_from_slice(&b)
}

/// A delete as the engine takes it, its key in stored form.
pub(crate) fn delete_op(
    field: &str,
    d: pb::DeleteRequest,
    who: &Principal,
    forwarded: bool,
) -> Result<WriteOp, Status> {
    let key = who.key_in(&format!("{field}key"), d.key, forwarded)?;
    Ok(WriteOp {
        key: owned(key),
        op: Op::Delete,
        cond: d.if_version.map(Cond::IfVersion).unwrap_or(Cond::None),
    })
}

pub(crate) use super::status::status;

type ScanStream = Pin<Box<dyn Stream<Item = Result<pb::ScanResponse, Status>> + Send>>;

fn found(r: Option<(Bytes, u64)>) -> pb::GetResponse {
    match r {
        Some((value, version)) => pb::GetResponse {
            found: true,
            value,
            version,
        },
        None => pb::GetResponse::default(),
    }
}

/// Ordered entries of one partition for a scan: a local scanner, or the owner's stream.
enum PartScan {
    Local(strata_engine::Scanner),
    Remote(tonic::Streaming<pb::ScanResponse>),
}

impl PartScan {
    /// The next entries in key order; empty at the end.
    async fn next(&mut self, want: usize) -> Result<Vec<pb::KeyValue>, Status> {
        match self {
            PartScan::Local(s) => {
                if s.is_done() {
                    return Ok(Vec::new());
                }
                Ok(s.next_chunk(want)
                    .await
                    .map_err(status)?
                    .into_iter()
                    .map(|(key, value, version)| pb::KeyValue {
                        key,
                        value,
                        version,
                    })
                    .collect())
            }
            PartScan::Remote(st) => loop {
                match st.next().await {
                    None => return Ok(Vec::new()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(r)) if r.entries.is_empty() => continue,
                    Some(Ok(r)) => return Ok(r.entries),
                }
            },
        }
    }
}

/// One partition's pending entries during a merge.
struct Head {
    buf: std::collections::VecDeque<pb::KeyValue>,
    src: PartScan,
    done: bool,
}

impl KvService {
    /// An eventually consistent read served here from flushed data, if this node does not own
    /// the partition and the session allows it.
    async fn eventual_get(
        &self,
        p: u32,
        key: &[u8],
        session: Option<u64>,
    ) -> Result<Option<Response<pb::GetResponse>>, Status> {
        let Backend::Cluster(node) = self.backend()? else {
            return Ok(None);
        };
        let Some((read, stale)) = node.replica_get(p, key, session).await.map_err(status)? else {
            return Ok(None);
        };
        let mut resp = answer(found(read.value), p, "");
        let md = resp.metadata_mut();
        md.insert(
            FLUSHED_SEQ_HEADER,
            tonic::metadata::MetadataValue::from(read.flushed_seq),
        );
        md.insert(
            STALE_MS_HEADER,
            tonic::metadata::MetadataValue::from(
                node.clock().unix_ms().saturating_sub(read.manifest_ms),
            ),
        );
        if let Some(s) = stale {
            md.insert(STALE_SEQS_HEADER, tonic::metadata::MetadataValue::from(s));
        }
        Ok(Some(resp))
    }

    /// Eventually consistent reads of several keys of partition `p` from flushed data here,
    /// if allowed (see [`KvService::eventual_get`]).
    /// Reads keys in order until their values pass `budget` bytes (at least one key).
    async fn eventual_multi(
        &self,
        p: u32,
        keys: &[Bytes],
        session: Option<u64>,
        budget: usize,
    ) -> Result<Option<Vec<pb::GetResponse>>, Status> {
        let Backend::Cluster(node) = self.backend()? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(keys.len());
        let mut used = 0usize;
        for k in keys {
            match node.replica_get(p, k, session).await.map_err(status)? {
                Some((r, _)) => {
                    let g = found(r.value);
                    used += g.value.len() + strata_engine::READ_RESULT_OVERHEAD;
                    if used > budget && !out.is_empty() {
                        break;
                    }
                    out.push(g);
                }
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    async fn open_part_scan(
        &self,
        p: u32,
        cx: &Ctx,
        req: &pb::ScanRequest,
        start: &Bytes,
        end: &Option<Bytes>,
    ) -> Result<PartScan, Status> {
        if req.consistency == pb::Consistency::Eventual as i32 && !cx.forwarded {
            if let Backend::Cluster(node) = self.backend()? {
                if let Some(s) = node
                    .replica_scan(p, start.clone(), end.clone(), cx.sessions.get(&p).copied())
                    .await
                    .map_err(status)?
                {
                    return Ok(PartScan::Local(s));
                }
            }
        }
        let (src, _) = self
            .on_partition(p, None, cx, |route, p| {
                let req = req.clone();
                let (start, end) = (start.clone(), end.clone());
                async move {
                    match route {
                        Route::Local(db) => Ok(PartScan::Local(
                            db.scan_unlocked(start, end).await.map_err(status)?,
                        )),
                        Route::Remote(addr) => {
                            let mut c = self.peer(&addr)?;
                            let st = c.scan(forward(p, req, cx)).await?.into_inner();
                            Ok(PartScan::Remote(st))
                        }
                    }
                }
            })
            .await?;
        Ok(src)
    }
}

impl KvService {
    /// Bytes of keys and values in `[start, end)` on the partitions this node serves (read
    /// through a snapshot of each; for the `stored_bytes` quota of a namespace).
    pub async fn local_bytes_in(&self, start: &Bytes, end: &Bytes) -> Result<u64, Status> {
        let dbs = match self.backend()? {
            Backend::Single(db) => vec![db.clone()],
            Backend::Cluster(n) => n.serving(),
        };
        let mut total = 0u64;
        for db in dbs {
            let mut sc = db.scan(start.clone(), Some(end.clone())).map_err(status)?;
            while !sc.is_done() {
                let chunk = sc.next_chunk(SCAN_CHUNK_ENTRIES).await.map_err(status)?;
                if chunk.is_empty() {
                    break;
                }
                total += chunk
                    .iter()
                    .map(|(k, v, _)| (k.len() + v.len()) as u64)
                    .sum::<u64>();
                // Yield between chunks: this runs beside the node's requests.
                tokio::task::yield_now().await;
            }
        }
        Ok(total)
    }

    /// The revision of the partition map this node routes by (0 on a single node).
    fn map_revision(&self) -> i64 {
        match self.backend.get() {
            Some(Backend::Cluster(n)) => n.map_revision(),
            _ => 0,
        }
    }

    /// A peer said our partition map is outdated: read the current one before regrouping.
    async fn refresh_if_outdated(&self, s: &Status) {
        if s.metadata().get(MAP_CHANGED_HEADER).is_some() {
            if let Some(Backend::Cluster(n)) = self.backend.get() {
                n.refresh_view().await;
            }
        }
    }

    /// Runs `once` (a multi-key request, grouped by partition inside) again while a split
    /// moves its keys under it: re-reading the map when a peer says ours is outdated, and
    /// regrouping as long as the attempt applied nothing and the budget lasts.
    async fn regrouping<R, T, F, Fut>(&self, r: R, once: F, budget: Duration) -> Result<T, Status>
    where
        R: Clone,
        F: Fn(R) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = strata_clock::now() + budget;
        loop {
            let rev = self.map_revision();
            match once(r.clone()).await {
                Err(s) => {
                    self.refresh_if_outdated(&s).await;
                    if !self.regroup(&s, rev, deadline) {
                        return Err(s);
                    }
                }
                ok => return ok,
            }
        }
    }

    /// Whether a multi-key request that failed with `s` should be grouped by partition again
    /// and retried: it applied nothing, and the map changed since it was grouped.
    fn regroup(&self, s: &Status, rev: i64, deadline: Instant) -> bool {
        (is_retry_safe(s) || s.metadata().get(MAP_CHANGED_HEADER).is_some())
            && self.map_revision() != rev
            && strata_clock::now() < deadline
    }

    /// One attempt at a BatchGet, grouped by the partition map as it is now.
    ///
    /// The reply is bounded before it is built: each partition's group reads its keys in
    /// request order until its share of the reply budget is used (always at least one key), so
    /// the server never holds more than about the message limit of values for one request.
    /// The reply then holds the longest prefix of the request that every group read, and lists
    /// the rest as `unprocessed_keys`.
    async fn batch_get_once(
        &self,
        cx: &Ctx,
        r: pb::BatchGetRequest,
        budget: usize,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let cx = cx.clone();
        check_consistency("consistency", r.consistency)?;
        check_batch_len("keys", r.keys.len())?;
        // Keys grouped by partition; each group is read from one snapshot of its partition.
        let mut groups: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, k) in r.keys.iter().enumerate() {
            groups.entry(self.partition_of(k)?).or_default().push(i);
        }
        // The reply's room for results: the budget less what listing every key as unprocessed
        // could take, shared evenly by the groups (they read concurrently).
        let listed: usize = r.keys.iter().map(|k| k.len() + 6).sum();
        let share = budget.saturating_sub(listed) / groups.len().max(1);
        let cx = &cx;
        let reads = groups.into_iter().map(|(p, idx)| {
            let keys: Vec<Bytes> = idx.iter().map(|&i| r.keys[i].clone()).collect();
            let consistency = r.consistency;
            async move {
                if consistency == pb::Consistency::Eventual as i32 && !cx.forwarded {
                    if let Some(res) = self
                        .eventual_multi(p, &keys, cx.sessions.get(&p).copied(), share)
                        .await?
                    {
                        return Ok::<_, Status>((idx, res));
                    }
                }
                let (res, _) = self
                    .on_partition(p, None, cx, |route, p| {
                        let keys = keys.clone();
                        async move {
                            match route {
                                Route::Local(db) => Ok(db
                                    .multi_get_bounded(&keys, share)
                                    .await
                                    .map_err(status)?
                                    .into_iter()
                                    .map(found)
                                    .collect::<Vec<_>>()),
                                Route::Remote(addr) => {
                                    let mut req =
                                        forward(p, pb::BatchGetRequest { keys, consistency }, cx);
                                    req.metadata_mut().insert(
                                        REPLY_BUDGET_HEADER,
                                        tonic::metadata::MetadataValue::from(share as u64),
                                    );
                                    Ok(self.peer(&addr)?.batch_get(req).await?.into_inner().results)
                                }
                            }
                        }
                    })
                    .await?;
                if res.len() > idx.len() || res.is_empty() {
                    return Err(Status::internal(format!(
                        "partition {p} answered {} results for {} keys",
                        res.len(),
                        idx.len()
                    )));
                }
                Ok::<_, Status>((idx, res))
            }
        });
        let mut results = vec![None; r.keys.len()];
        // The first key, in request order, that some group did not read.
        let mut cut = r.keys.len();
        for (idx, res) in futures::future::try_join_all(reads).await? {
            if let Some(&first_unread) = idx.get(res.len()) {
                cut = cut.min(first_unread);
            }
            for (i, g) in idx.into_iter().zip(res) {
                results[i] = Some(g);
            }
        }
        let mut keys = r.keys;
        let mut unprocessed_keys = keys.split_off(cut);
        if !cx.forwarded {
            unprocessed_keys = unprocessed_keys
                .into_iter()
                .map(|k| cx.who.key_out(k))
                .collect();
        }
        let results = results
            .into_iter()
            .take(cut)
            .map(|g| g.ok_or_else(|| Status::internal("a key of the read prefix has no result")))
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(pb::BatchGetResponse {
            results,
            unprocessed_keys,
        }))
    }

    /// One attempt at a BatchWrite, grouped by the partition map as it is now.
    async fn batch_write_once(
        &self,
        cx: &Ctx,
        r: pb::BatchWriteRequest,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        let cx = cx.clone();
        let d = durable("durability", r.durability)?;
        check_batch_len("ops", r.ops.len())?;
        let mut r = r;
        let mut ops = Vec::with_capacity(r.ops.len());
        let (who, fwd) = (&cx.who, cx.forwarded);
        for (i, op) in r.ops.iter_mut().enumerate() {
            // Each op's own durability is ignored: the batch's applies. The request keeps
            // the stored form of each key, for the owner it may be forwarded to.
            ops.push(match &mut op.op {
                Some(pb::write_op::Op::Put(p)) => {
                    let o = put_op(&format!("ops[{i}].put."), p.clone(), who, fwd)?;
                    p.key = o.key.clone();
                    o
                }
                Some(pb::write_op::Op::Delete(dl)) => {
                    let o = delete_op(&format!("ops[{i}].delete."), dl.clone(), who, fwd)?;
                    dl.key = o.key.clone();
                    o
                }
                None => {
                    return Err(Status::invalid_argument(format!(
                        "ops[{i}]: op must be set to put or delete"
                    )))
                }
            });
        }
        let r = r;
        if ops.is_empty() {
            return Ok(Response::new(pb::BatchWriteResponse::default()));
        }
        let p = self.partition_of(&ops[0].key)?;
        let mut parts: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, o) in ops.iter().enumerate() {
            parts.entry(self.partition_of(&o.key)?).or_default().push(i);
        }
        if parts.len() > 1 {
            if cx.forwarded {
                // The forwarding node grouped the batch by an older partition map.
                let mut s = retry_safe(
                    reason::MAP_CHANGED,
                    "the partition map changed (a partition split); group the batch again",
                );
                s.metadata_mut().insert(
                    MAP_CHANGED_HEADER,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                return Err(s);
            }
            let Backend::Cluster(node) = self.backend()? else {
                return Err(Status::internal("several partitions on a single node"));
            };
            if !d {
                return Err(Status::invalid_argument(
                    "durability: a batch spanning partitions commits through a durable \
                     transaction record; DURABILITY_BUFFERED is only allowed within one partition",
                ));
            }
            return self
                .cross_partition_write(node.clone(), &cx, parts, ops)
                .await;
        }
        let cxr = &cx;
        let (res, owner) = self
            .on_partition(p, None, &cx, |route, p| {
                let (r, ops) = (r.clone(), ops.clone());
                async move {
                    match route {
                        Route::Local(db) => {
                            let out = db.write(ops, d).await.map_err(status)?;
                            Ok(pb::BatchWriteResponse {
                                versions: out.into_iter().map(|o| o.version).collect(),
                            })
                        }
                        Route::Remote(addr) => Ok(self
                            .peer(&addr)?
                            .batch_write(forward(p, r, cxr))
                            .await?
                            .into_inner()),
                    }
                }
            })
            .await?;
        let v = res.versions.iter().copied().max().unwrap_or(0);
        Ok(answer_write(res, p, &owner, v))
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let cx = self.ctx(&req)?;
        let mut r = req.into_inner();
        r.key = cx.who.key_in("key", r.key, cx.forwarded)?;
        check_consistency("consistency", r.consistency)?;
        let p = self.partition_of(&r.key)?;
        if r.consistency == pb::Consistency::Eventual as i32 && !cx.forwarded {
            if let Some(resp) = self
                .eventual_get(p, &r.key, cx.sessions.get(&p).copied())
                .await?
            {
                cx.who
                    .charge_read(read_cost(&cx.who, &r.key, resp.get_ref().value.len()));
                return Ok(resp);
            }
        }
        let cxr = &cx;
        let (res, owner) = self
            .on_partition(p, Some(&r.key), &cx, |route, p| {
                let r = r.clone();
                async move {
                    match route {
                        Route::Local(db) => Ok(found(db.get(&r.key).await.map_err(status)?)),
                        Route::Remote(addr) => Ok(self
                            .peer(&addr)?
                            .get(forward(p, r, cxr))
                            .await?
                            .into_inner()),
                    }
                }
            })
            .await?;
        cx.who
            .charge_read(read_cost(&cx.who, &r.key, res.value.len()));
        // The partition that served it (it may have split while the request waited).
        let p = self.partition_of(&r.key)?;
        Ok(answer(res, p, &owner))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let cx = self.ctx(&req)?;
        let mut r = req.into_inner();
        let d = durable("durability", r.durability)?;
        let op = put_op("", r.clone(), &cx.who, cx.forwarded)?;
        // The in-flight share first: a write it refuses has taken nothing of the rate.
        let _held = cx.who.reserve_write(write_cost(&r.key, r.value.len()))?;
        cx.who
            .charge_write(write_cost(&r.key, r.value.len()), true)?;
        r.key = op.key.clone();
        let p = self.partition_of(&op.key)?;
        let cxr = &cx;
        let (res, owner) = self
            .on_partition(p, Some(&op.key), &cx, |route, p| {
                let (r, op) = (r.clone(), op.clone());
                async move {
                    match route {
                        Route::Local(db) => {
                            let out = db.write(vec![op], d).await.map_err(status)?;
                            Ok(pb::PutResponse {
                                version: out.first().map(|o| o.version).unwrap_or(0),
                            })
                        }
                        Route::Remote(addr) => Ok(self
                            .peer(&addr)?
                            .put(forward(p, r, cxr))
                            .await?
                            .into_inner()),
                    }
                }
            })
            .await?;
        let v = res.version;
        let p = self.partition_of(&op.key)?;
        Ok(answer_write(res, p, &owner, v))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let cx = self.ctx(&req)?;
        let mut r = req.into_inner();
        let d = durable("durability", r.durability)?;
        let op = delete_op("", r.clone(), &cx.who, cx.forwarded)?;
        cx.who.charge_write(write_cost(&r.key, 0), false)?;
        r.key = op.key.clone();
        let p = self.partition_of(&op.key)?;
        let cxr = &cx;
        let (res, owner) = self
            .on_partition(p, Some(&op.key), &cx, |route, p| {
                let (r, op) = (r.clone(), op.clone());
                async move {
                    match route {
                        Route::Local(db) => {
                            let out = db.write(vec![op], d).await.map_err(status)?;
                            let o = out.first().copied().unwrap_or(crate::OpOutcome {
                                version: 0,
                                found: false,
                            });
                            Ok(pb::DeleteResponse {
                                found: o.found,
                                version: o.version,
                            })
                        }
                        Route::Remote(addr) => Ok(self
                            .peer(&addr)?
                            .delete(forward(p, r, cxr))
                            .await?
                            .into_inner()),
                    }
                }
            })
            .await?;
        let v = res.version;
        let p = self.partition_of(&op.key)?;
        Ok(answer_write(res, p, &owner, v))
    }

    async fn batch_get(
        &self,
        req: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let cx = self.ctx(&req)?;
        // A forwarding node gives its share of the reply budget.
        let budget = req
            .metadata()
            .get(REPLY_BUDGET_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(REPLY_BUDGET, |b| b.min(REPLY_BUDGET));
        let mut r = req.into_inner();
        check_batch_len("keys", r.keys.len())?;
        r.keys = std::mem::take(&mut r.keys)
            .into_iter()
            .enumerate()
            .map(|(i, k)| cx.who.key_in(&format!("keys[{i}]"), k, cx.forwarded))
            .collect::<Result<_, _>>()?;
        // Only a namespace with a read quota pays for keeping the keys.
        let keys = cx.who.charges_reads().then(|| r.keys.clone());
        let resp = self
            .regrouping(r, |r| self.batch_get_once(&cx, r, budget), cx.budget)
            .await?;
        if let Some(keys) = keys {
            // Results hold the first keys in request order.
            let read: u64 = resp
                .get_ref()
                .results
                .iter()
                .zip(&keys)
                .map(|(g, k)| read_cost(&cx.who, k, g.value.len()))
                .sum();
            cx.who.charge_read(read);
        }
        Ok(resp)
    }

    async fn batch_write(
        &self,
        req: Request<pb::BatchWriteRequest>,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        let cx = self.ctx(&req)?;
        let r = req.into_inner();
        let cost: u64 = r
            .ops
            .iter()
            .map(|o| match &o.op {
                Some(pb::write_op::Op::Put(p)) => write_cost(&p.key, p.value.len()),
                Some(pb::write_op::Op::Delete(d)) => write_cost(&d.key, 0),
                None => 0,
            })
            .sum();
        let adds = r
            .ops
            .iter()
            .any(|o| matches!(o.op, Some(pb::write_op::Op::Put(_))));
        let _held = cx.who.reserve_write(cost)?;
        cx.who.charge_write(cost, adds)?;
        self.regrouping(r, |r| self.batch_write_once(&cx, r), cx.budget)
            .await
    }

    type ScanStream = ScanStream;

    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let fwd = forwarded_partition(&req);
        let cx = self.ctx(&req)?;
        // The namespace's in-flight slot stays taken until the stream ends.
        let held = req.extensions().get::<super::auth::Held>().cloned();
        let mut r = req.into_inner();
        check_consistency("consistency", r.consistency)?;
        // A forwarded range is in stored form: its keys may carry a namespace's prefix.
        let max = if fwd.is_some() {
            MAX_KEY_BYTES + strata_format::namespace::MAX_PREFIX_BYTES
        } else {
            MAX_KEY_BYTES
        };
        for (field, v) in [("start", &r.start), ("end", &r.end), ("prefix", &r.prefix)] {
            if v.len() > max {
                return Err(invalid(
                    reason::KEY_TOO_LARGE,
                    format!(
                        "{field}: must be at most {max} bytes, got {} bytes",
                        v.len()
                    ),
                ));
            }
        }
        // [start, end) intersected with the prefix's range.
        let mut start = r.start.clone();
        let mut end: Option<Bytes> = (!r.end.is_empty()).then(|| r.end.clone());
        if !r.prefix.is_empty() {
            if r.prefix > start {
                start = r.prefix.clone();
            }
            if let Some(pe) = prefix_end(&r.prefix) {
                if end.as_ref().is_none_or(|e| pe < *e) {
                    end = Some(pe);
                }
            }
        }
        // The range in stored form, inside the tenant's namespace; owners it is forwarded to
        // get it so (and clamp it to the namespace again).
        let (start, end) = cx.who.range_in(start, end, fwd.is_some());
        r.start = start.clone();
        r.end = end.clone().unwrap_or_default();
        r.prefix = Bytes::new();
        let who = (fwd.is_none()).then(|| cx.who.clone());
        // Charged on every node it reaches unless a verified peer admitted it already (a
        // forwarded header alone exempts nothing).
        let charged = cx.who.clone();
        let charge_reads = charged.charges_reads();
        // A forwarded scan covers only the partition it names; an original one merges the
        // ordered streams of every partition (keys of different partitions never collide).
        let parts: Vec<u32> = match fwd {
            Some(p) => vec![p],
            None => match self.backend()? {
                Backend::Single(_) => vec![0],
                Backend::Cluster(n) => n.map().ids(),
            },
        };
        let mut heads = Vec::with_capacity(parts.len());
        for p in parts {
            heads.push(Head {
                buf: Default::default(),
                src: self.open_part_scan(p, &cx, &r, &start, &end).await?,
                done: false,
            });
        }
        let limit = r.limit as usize;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ScanResponse, Status>>(4);
        // How the scan ended, told after its last entry: a stream that merely stops would read
        // as a complete scan, so an end the client did not get in-band is added at the tail.
        let tail: Arc<Mutex<Option<Result<(), Status>>>> = Arc::default();
        let tail_w = tail.clone();
        tokio::spawn(async move {
            let txr = &tx;
            let outcome = async move {
                let mut sent = 0usize;
                let mut chunk = Vec::new();
                let mut chunk_bytes = 0usize;
                let mut read_bytes = 0u64;
                loop {
                    if limit != 0 && sent >= limit {
                        break;
                    }
                    // Refill every empty buffer, then take the smallest head.
                    for h in heads.iter_mut() {
                        if h.buf.is_empty() && !h.done {
                            let want = if limit == 0 {
                                SCAN_CHUNK_ENTRIES
                            } else {
                                (limit - sent).min(SCAN_CHUNK_ENTRIES)
                            };
                            match h.src.next(want).await {
                                Ok(v) if v.is_empty() => h.done = true,
                                Ok(v) => h.buf.extend(v),
                                // A peer's or the transport's error: give it a reason.
                                Err(e) => return Err(strata_proto::reason::or_default(e)),
                            }
                        }
                    }
                    let Some(i) = heads
                        .iter()
                        .enumerate()
                        .filter_map(|(i, h)| h.buf.front().map(|kv| (i, kv)))
                        .min_by(|a, b| a.1.key.cmp(&b.1.key))
                        .map(|(i, _)| i)
                    else {
                        break;
                    };
                    let Some(mut kv) = heads[i].buf.pop_front() else {
                        break;
                    };
                    if let Some(who) = &who {
                        kv.key = who.key_out(kv.key);
                    }
                    chunk_bytes += kv.key.len() + kv.value.len() + 16;
                    if charge_reads {
                        read_bytes += read_cost(&charged, &kv.key, kv.value.len());
                    }
                    chunk.push(kv);
                    sent += 1;
                    if chunk.len() >= SCAN_CHUNK_ENTRIES || chunk_bytes >= SCAN_CHUNK_BYTES {
                        charged.charge_read(std::mem::take(&mut read_bytes));
                        let entries = std::mem::take(&mut chunk);
                        chunk_bytes = 0;
                        match strata_clock::timeout(
                            MAX_SNAPSHOT_AGE,
                            txr.send(Ok(pb::ScanResponse { entries })),
                        )
                        .await
                        {
                            Ok(Ok(())) => {}
                            // The client is gone: nobody to tell.
                            Ok(Err(_)) => return Ok(()),
                            Err(_) => {
                                // The client stopped reading. Its snapshot would expire anyway;
                                // release it now (a held version keeps compacted inputs from
                                // being deleted), then tell the client why the scan ended.
                                drop(heads);
                                return Err(abandoned());
                            }
                        }
                    }
                }
                // Every entry is read: release the version before waiting on the client.
                drop(heads);
                let _held = held;
                if !chunk.is_empty() {
                    charged.charge_read(read_bytes);
                    // Bounded like every send: a client that stops reading must not keep the
                    // namespace's in-flight slot for ever.
                    let sent = strata_clock::timeout(
                        MAX_SNAPSHOT_AGE,
                        txr.send(Ok(pb::ScanResponse { entries: chunk })),
                    )
                    .await;
                    if sent.is_err() {
                        return Err(abandoned());
                    }
                }
                Ok(())
            }
            .await;
            // Set before `tx` drops: the stream reads it only once every sender is gone.
            *tail_w.lock() = Some(outcome);
            drop(tx);
        });
        let last =
            futures::stream::once(async move { tail.lock().take() }).filter_map(|o| match o {
                Some(Ok(())) => None,
                Some(Err(s)) => Some(Err(s)),
                None => Some(Err(Status::internal(
                    "the scan stopped before its end (its task ended unexpectedly); scan again \
                 from the last key",
                ))),
            });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).chain(last),
        )))
    }
}

/// What a read of `key` (stored or client form) returning `value_len` bytes is charged
/// against `read_bytes_per_sec`: the key as its tenant sees it and the value.
fn read_cost(who: &Principal, key: &Bytes, value_len: usize) -> u64 {
    (who.key_out(key.clone()).len() + value_len) as u64
}

/// A scan ended because its client read nothing for the snapshot's maximum age.
fn abandoned() -> Status {
    strata_proto::reason::with_reason(
        Status::aborted(format!(
            "scan abandoned: the client read nothing for {}s, past the snapshot's maximum \
             age; scan again from the last key",
            MAX_SNAPSHOT_AGE.as_secs()
        )),
        reason::SNAPSHOT_TOO_OLD,
    )
}

/// Joins a key prefix and returns the smallest key after `key` (for cursors).
pub fn key_successor(key: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(key.len() + 1);
    b.extend_from_slice(key);
    b.extend_from_slice(&[0]);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}

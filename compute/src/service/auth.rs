//! Tenants: bearer tokens, rights, namespaces and quotas (`strata serve --tokens FILE`).
//!
//! The tokens file (TOML, a contract other tools write):
//!
//! ```toml
//! [[tokens]]
//! sha256 = "…"                  # lowercase hex SHA-256 of the token's text
//! namespace = "alpha"
//! rights = ["read", "write"]    # any of "read", "write", "admin"
//!
//! [namespaces.alpha]            # optional quotas; absent = unlimited
//! requests_per_sec = 1000
//! write_bytes_per_sec = 10485760
//! stored_bytes = 1073741824
//! ```
//!
//! [`AuthLayer`] runs before every service: it finds the call's [`Need`] from its gRPC path,
//! authenticates the `authorization: Bearer TOKEN` metadata against the file's hashes
//! (constant-time compares; the text of a token is never stored or logged), checks the
//! right, binds the connection to the namespace (within its share of the node's connections),
//! charges the namespace's request rate and in-flight share, and hands the handlers a
//! [`Principal`] in the request's extensions. The handlers put every key a tenant sends under
//! its namespace's prefix ([`Principal::key_in`]) and take it off every key they return
//! ([`Principal::key_out`]); keys a peer forwards arrive prefixed already and are checked to
//! lie inside the namespace instead, so a forged "forwarded" header cannot reach another
//! tenant's keys.
//!
//! Without a tokens file there is no layer state: every call is the default namespace with
//! every right, as before tenants existed.

use super::status::invalid;
use crate::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use strata_clock::Instant;
use strata_format::namespace;
use strata_proto::headers::{AUTHORIZATION, RETRY_AFTER_MS};
use strata_proto::reason;
use subtle::ConstantTimeEq;
use tonic::codegen::http;
use tonic::Status;

/// A right a token may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Get, BatchGet, Scan and every later read call.
    Read,
    /// Put, Delete, BatchWrite and every later write call.
    Write,
    /// The admin operations.
    Admin,
}

impl Right {
    fn bit(self) -> u8 {
        match self {
            Right::Read => 1,
            Right::Write => 2,
            Right::Admin => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        }
    }

    /// Parses `"read"`, `"write"` or `"admin"`.
    pub fn parse(s: &str) -> Result<Right, String> {
        match s {
            "read" => Ok(Right::Read),
            "write" => Ok(Right::Write),
            "admin" => Ok(Right::Admin),
            other => Err(format!(
                "unknown right {other:?} (expected read, write or admin)"
            )),
        }
    }
}

/// What a call needs, by its gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone, even without a token (health checks).
    Open,
    /// Any valid token (the routing table, reflection).
    Token,
    /// A token holding this right.
    Right(Right),
}

/// The need of the call at `path` (`/package.Service/Method`). A method not listed here needs
/// `admin`: a new call is closed until it is given its right on purpose.
pub fn need_of(path: &str) -> Need {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Need::Right(Right::Admin);
    };
    match service {
        "grpc.health.v1.Health" => Need::Open,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Need::Token
        }
        "strata.v1.KV" => match method {
            "Get" | "BatchGet" | "Scan" => Need::Right(Right::Read),
            "Put" | "Delete" | "BatchWrite" => Need::Right(Right::Write),
            _ => Need::Right(Right::Admin),
        },
        "strata.v1.Admin" => match method {
            "ClusterMap" => Need::Token,
            _ => Need::Right(Right::Admin),
        },
        // Node-to-node halves of a cross-partition BatchWrite: the coordinator forwards its
        // client's token; the participant checks every key against that namespace.
        "strata.v1.Txn" => Need::Right(Right::Write),
        _ => Need::Right(Right::Admin),
    }
}

/// A namespace's quotas (absent = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Requests per second admitted by each node.
    pub requests_per_sec: Option<u64>,
    /// Bytes of keys and values written per second, per node.
    pub write_bytes_per_sec: Option<u64>,
    /// Bytes of keys and values the namespace may hold.
    pub stored_bytes: Option<u64>,
    /// Bytes of keys and values read per second, per node: a read is charged what it
    /// returned once it is read (a large scan goes into debt), and the namespace's reads are
    /// refused while it is in debt.
    pub read_bytes_per_sec: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    namespace: String,
    rights: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    namespaces: BTreeMap<String, Quotas>,
}

#[derive(Debug)]
struct Token {
    hash: [u8; 32],
    namespace: Arc<Namespace>,
    rights: u8,
}

/// A tenant's keyspace and the state of its quotas (kept across reloads of the file).
#[derive(Debug)]
pub struct Namespace {
    name: String,
    prefix: Bytes,
    end: Bytes,
    quotas: RwLock<Quotas>,
    requests: Mutex<Bucket>,
    write_bytes: Mutex<Bucket>,
    read_bytes: Mutex<Bucket>,
    /// A moving average of the namespace's reply sizes: the turn a refused read is promised.
    read_size: AtomicU64,
    in_flight: AtomicUsize,
    /// Connections of this node whose first authenticated request was this namespace's.
    connections: AtomicUsize,
    /// Bytes of writes of this namespace between admission and their answer, on this node.
    in_flight_bytes: std::sync::atomic::AtomicU64,
    /// This node's bound on `in_flight_bytes`.
    max_in_flight_bytes: std::sync::atomic::AtomicU64,
    /// Turns promised to writes refused for the in-flight byte share (spreads their retries).
    bytes_promised: Mutex<Option<Instant>>,
    /// Bytes of keys and values stored, as last measured ([`Authority::set_stored`]).
    stored: std::sync::atomic::AtomicU64,
}

impl Namespace {
    fn new(name: &str) -> Namespace {
        let prefix = namespace::prefix(name);
        Namespace {
            name: name.to_string(),
            end: Bytes::from(namespace::prefix_end(&prefix)),
            prefix: Bytes::from(prefix),
            quotas: RwLock::new(Quotas::default()),
            requests: Mutex::new(Bucket::default()),
            write_bytes: Mutex::new(Bucket::default()),
            read_bytes: Mutex::new(Bucket::default()),
            read_size: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            in_flight_bytes: Default::default(),
            max_in_flight_bytes: Default::default(),
            bytes_promised: Mutex::new(None),
            stored: Default::default(),
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key range `[start, end)` that holds the namespace's keys.
    pub fn range(&self) -> (Bytes, Bytes) {
        (self.prefix.clone(), self.end.clone())
    }

    /// The namespace's quotas.
    pub fn quotas(&self) -> Quotas {
        *self.quotas.read()
    }
}

/// A token bucket that may go into debt by one request: a request larger than the burst is
/// admitted when the bucket is full, and the next waits until the debt is paid back.
///
/// Refusals are spread out: each refused request is told to come back after the debt is paid
/// *and* after the requests refused before it had their turn (`promised`), so many clients
/// of one namespace retry about as fast as the quota admits them instead of all at once.
#[derive(Debug, Default)]
struct Bucket {
    /// Units available (negative: debt).
    level: f64,
    at: Option<Instant>,
    /// The time up to which earlier refusals were promised turns.
    promised: Option<Instant>,
}

impl Bucket {
    /// The level at `now`: what it was plus `rate` per second since, up to one second's
    /// worth (the burst).
    fn refill(&mut self, rate: f64, now: Instant) -> f64 {
        let level = match self.at {
            None => rate,
            Some(at) => {
                (self.level + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate)
            }
        };
        self.at = Some(now);
        level
    }

    /// Takes `n` units at `rate` per second (burst: one second's worth). On refusal, how long
    /// to wait before trying again.
    fn take(&mut self, n: u64, rate: u64, now: Instant) -> Result<(), Duration> {
        self.take_turn(n, n, rate, now)
    }

    /// As [`Bucket::take`], taking `n` on success but spacing a refusal's turn by `turn`
    /// units (a read takes nothing up front and is charged what it returned).
    fn take_turn(&mut self, n: u64, turn: u64, rate: u64, now: Instant) -> Result<(), Duration> {
        let rate = rate.max(1) as f64;
        let level = self.refill(rate, now);
        if level <= 0.0 {
            self.level = level;
            let out_of_debt = now + Duration::from_secs_f64((-level).max(0.0) / rate);
            let start = self
                .promised
                .filter(|p| *p > out_of_debt)
                .unwrap_or(out_of_debt);
            // This request's turn: after the debt and the turns already promised, for as
            // long as it takes the quota to admit it (capped: a wait the client sees).
            let turn = (start + Duration::from_secs_f64(turn.max(1) as f64 / rate))
                .min(now + Duration::from_secs(10));
            self.promised = Some(turn);
            return Err(turn
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)));
        }
        self.level = level - n as f64;
        Ok(())
    }

    /// Charges `n` units already spent (a read's reply): always taken, into debt if need be
    /// (paid before the namespace reads again; never forgiven).
    fn charge(&mut self, n: u64, rate: u64, now: Instant) {
        let rate = rate.max(1) as f64;
        let level = self.refill(rate, now);
        self.level = level - n as f64;
    }
}

/// The parsed tokens file.
#[derive(Debug, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the file holds no token (then every call but health is refused).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Parses a tokens file, reusing the namespaces of `known` (their quota state) by name.
fn parse(
    text: &str,
    known: &HashMap<String, Arc<Namespace>>,
) -> Result<(Tokens, HashMap<String, Arc<Namespace>>), String> {
    let file: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut spaces: HashMap<String, Arc<Namespace>> = HashMap::new();
    let mut space = |name: &str| -> Result<Arc<Namespace>, String> {
        namespace::check_name(name)?;
        Ok(spaces
            .entry(name.to_string())
            .or_insert_with(|| {
                known
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Namespace::new(name)))
            })
            .clone())
    };
    let mut tokens = Vec::with_capacity(file.tokens.len());
    for (i, t) in file.tokens.iter().enumerate() {
        let at = format!("tokens[{i}]");
        let hash = parse_hash(&t.sha256).map_err(|e| format!("{at}.sha256: {e}"))?;
        if tokens.iter().any(|o: &Token| o.hash == hash) {
            return Err(format!("{at}.sha256: the same token is listed twice"));
        }
        let mut rights = 0u8;
        for r in &t.rights {
            rights |= Right::parse(r)
                .map_err(|e| format!("{at}.rights: {e}"))?
                .bit();
        }
        let namespace = space(&t.namespace).map_err(|e| format!("{at}.namespace: {e}"))?;
        tokens.push(Token {
            hash,
            namespace,
            rights,
        });
    }
    let mut quotas: Vec<(Arc<Namespace>, Quotas)> = Vec::new();
    for (name, q) in &file.namespaces {
        let ns = space(name).map_err(|e| format!("namespaces.{name}: {e}"))?;
        quotas.push((ns, *q));
    }
    // Namespaces without a [namespaces.X] table have no quotas (a table removed on reload
    // lifts them).
    for ns in spaces.values() {
        *ns.quotas.write() = Quotas::default();
    }
    for (ns, q) in quotas {
        // A debt run up under a higher read rate is paid within ten seconds of the new one.
        if let Some(rate) = q.read_bytes_per_sec {
            let mut b = ns.read_bytes.lock();
            b.level = b.level.max(-10.0 * rate.max(1) as f64);
        }
        *ns.quotas.write() = q;
    }
    Ok((Tokens { tokens }, spaces))
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("must be 64 lowercase hex digits (the SHA-256 of the token's text)".into());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2).unwrap_or("00"), 16)
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Lowercase hex SHA-256 of a token's text (what the tokens file stores).
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Limits every namespace shares on one node.
#[derive(Debug, Clone, Copy)]
pub struct TenantLimits {
    /// Most requests of one namespace in flight at once on this node.
    pub max_in_flight: usize,
    /// Most bytes of one namespace's writes in flight at once on this node (a write larger
    /// than this is admitted alone).
    pub max_in_flight_bytes: u64,
    /// Most connections of this node one namespace holds (a connection belongs to the
    /// namespace of its first authenticated request, until it closes).
    pub max_connections: usize,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            max_in_flight: 256,
            max_in_flight_bytes: 8 << 20,
            max_connections: 1024,
        }
    }
}

/// What a file looked like when read: length, mtime, SHA-256 of the content.
type Seen = (u64, Option<SystemTime>, [u8; 32]);

/// The tokens in force and where they come from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authority {
    inner: Arc<AuthInner>,
}

#[derive(Debug)]
struct AuthInner {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
    spaces: Mutex<HashMap<String, Arc<Namespace>>>,
    /// What the file looked like when last read (length, mtime, content hash).
    seen: Mutex<Option<Seen>>,
    limits: TenantLimits,
}

impl Authority {
    /// Reads the tokens file at `path` (an error if it does not parse: a server must not
    /// start with tenants it cannot enforce).
    pub fn load(path: &Path, limits: TenantLimits) -> Result<Authority, String> {
        let a = Authority {
            inner: Arc::new(AuthInner {
                path: path.to_path_buf(),
                tokens: RwLock::new(Arc::new(Tokens::default())),
                spaces: Mutex::new(HashMap::new()),
                seen: Mutex::new(None),
                limits,
            }),
        };
        a.reload()?;
        Ok(a)
    }

    /// The file this authority reads.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Reads the file again. On an error the tokens in force stay (the caller logs why).
    /// Returns the number of tokens now in force.
    pub fn reload(&self) -> Result<usize, String> {
        let path = &self.inner.path;
        // The metadata first, then the bytes: a change after the read shows as a newer mtime
        // (or other content) and is read again; one before it is in these bytes.
        let meta = std::fs::metadata(path).ok();
        let bytes = std::fs::read(path)
            .map_err(|e| format!("reading tokens file {}: {e}", path.display()))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let seen = (
            bytes.len() as u64,
            meta.and_then(|m| m.modified().ok()),
            digest,
        );
        let known = self.inner.spaces.lock().clone();
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|text| parse(text, &known));
        let (tokens, spaces) = match parsed {
            Ok(p) => p,
            Err(e) => {
                // Remember these bytes, so a bad file is logged once, not every second.
                *self.inner.seen.lock() = Some(seen);
                return Err(format!("tokens file {}: {e}", path.display()));
            }
        };
        let n = tokens.len();
        for ns in spaces.values() {
            ns.max_in_flight_bytes.store(
                self.inner.limits.max_in_flight_bytes.max(1),
                Ordering::Relaxed,
            );
        }
        *self.inner.spaces.lock() = spaces;
        *self.inner.tokens.write() = Arc::new(tokens);
        *self.inner.seen.lock() = Some(seen);
        Ok(n)
    }

    /// Whether the file differs from what was last read: length and mtime, then (both equal)
    /// the content's hash, for filesystems whose mtime does not move within a second. A
    /// tokens file is a few KiB: reading it every second costs nothing that matters.
    fn changed(&self) -> bool {
        let path = &self.inner.path;
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        let seen = *self.inner.seen.lock();
        let Some((len, mtime, digest)) = seen else {
            return true;
        };
        if meta.len() == len && meta.modified().ok() == mtime {
            // Same length and mtime: compare the content too, for filesystems whose mtime
            // does not move within a second.
            let Ok(text) = std::fs::read(path) else {
                return false;
            };
            let d: [u8; 32] = Sha256::digest(&text).into();
            return d != digest;
        }
        true
    }

    /// Re-reads the file when it changes (polled every second, so a change is in force within
    /// the 5 s the contract allows) and on every `SIGHUP`. A file that does not parse keeps
    /// the previous tokens and is logged. Ends when `stop` turns true.
    pub fn spawn_watcher(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut triggers = crate::reload::Triggers::new();
            loop {
                let why = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    t = triggers.next() => t,
                };
                let why = match why {
                    crate::reload::Trigger::Hangup => "SIGHUP",
                    crate::reload::Trigger::Tick => {
                        if !me.changed() {
                            continue;
                        }
                        "the file changed"
                    }
                };
                match me.reload() {
                    Ok(n) => tracing::info!(
                        "tokens file {} re-read ({why}): {n} tokens in force",
                        me.path().display()
                    ),
                    Err(e) => {
                        tracing::error!("{e}; the previous tokens stay in force ({why})")
                    }
                }
            }
        });
    }

    /// Measures the stored bytes of every namespace with a `stored_bytes` quota every
    /// `every`, on the partitions `kv`'s node serves (a scan of the namespace's range: its
    /// cost grows with the namespace's size on this node). Ends when `stop` turns true.
    pub fn spawn_usage_meter(
        &self,
        kv: super::KvService,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tick.tick() => {}
                }
                for ns in me.namespaces() {
                    if ns.quotas().stored_bytes.is_none() {
                        continue;
                    }
                    match kv.local_bytes_in(&ns.prefix, &ns.end).await {
                        Ok(b) => ns.stored.store(b, Ordering::Relaxed),
                        // Not serving yet, or a partition moving: measure again next time.
                        Err(e) => {
                            tracing::debug!(namespace = %ns.name, error = %e, "stored bytes not measured")
                        }
                    }
                }
            }
        });
    }

    /// The namespaces named in the file now.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.inner.spaces.lock().values().cloned().collect()
    }

    /// Records a namespace's stored bytes as last measured (for its `stored_bytes` quota).
    pub fn set_stored(&self, name: &str, bytes: u64) {
        if let Some(ns) = self.inner.spaces.lock().get(name) {
            ns.stored.store(bytes, Ordering::Relaxed);
        }
    }

    /// Authenticates `authorization` metadata (`Bearer TOKEN`) and checks `need`.
    pub fn authorize(&self, header: Option<&[u8]>, need: Need) -> Result<Principal, Status> {
        if need == Need::Open {
            // Health: no token needed, and no right or keyspace given either.
            return Ok(Principal::nobody());
        }
        let Some(token) = header.and_then(bearer) else {
            return Err(refuse(
                Status::unauthenticated(
                    "this server requires a token: send `authorization: Bearer TOKEN` \
                     (strata CLI: STRATA_TOKEN or --token-file)",
                ),
                reason::UNAUTHENTICATED,
            ));
        };
        let hash: [u8; 32] = Sha256::digest(token).into();
        let tokens = self.inner.tokens.read().clone();
        // Every entry is compared, in constant time, whatever matched before.
        let mut found: Option<&Token> = None;
        for t in &tokens.tokens {
            if bool::from(t.hash.ct_eq(&hash)) {
                found = Some(t);
            }
        }
        let Some(t) = found else {
            return Err(refuse(
                Status::unauthenticated("unknown token"),
                reason::UNAUTHENTICATED,
            ));
        };
        if let Need::Right(r) = need {
            if t.rights & r.bit() == 0 {
                return Err(refuse(
                    Status::permission_denied(format!(
                        "this token has no {:?} right on namespace {:?}",
                        r.name(),
                        t.namespace.name
                    )),
                    reason::PERMISSION_DENIED,
                ));
            }
        }
        Ok(Principal {
            ns: Some(t.namespace.clone()),
            rights: t.rights,
            peer: false,
            pre_admitted: false,
        })
    }

    /// Admits one request of `p`'s namespace: its request rate and in-flight share. The
    /// returned guard holds the in-flight slot.
    fn admit(&self, p: &Principal, reads: bool) -> Result<Option<InFlightGuard>, Status> {
        let Some(ns) = &p.ns else { return Ok(None) };
        let q = *ns.quotas.read();
        if let Some(rate) = q.read_bytes_per_sec.filter(|_| reads) {
            // Nothing taken here: the read is charged what it returns. A namespace in debt
            // waits until it is paid.
            let turn = ns.read_size.load(Ordering::Relaxed);
            ns.read_bytes
                .lock()
                .take_turn(0, turn, rate, strata_clock::now())
                .map_err(|after| quota(ns, "read_bytes_per_sec", after))?;
        }
        if let Some(rate) = q.requests_per_sec {
            ns.requests
                .lock()
                .take(1, rate, strata_clock::now())
                .map_err(|after| quota(ns, "requests_per_sec", after))?;
        }
        let max = self.inner.limits.max_in_flight;
        if ns.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            ns.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(quota_status(
                format!(
                    "namespace {:?} has {max} requests in flight on this node, its share; \
                     retry after the retry-after-ms metadata",
                    ns.name
                ),
                Duration::from_millis(50),
            ));
        }
        Ok(Some(InFlightGuard(ns.clone())))
    }
}

fn evicted_status(ns: &Namespace) -> Status {
    quota_status(
        format!(
            "namespace {:?} holds its share of this node's connections: this one is closing; \
             retry on a new connection",
            ns.name
        ),
        Duration::from_millis(500),
    )
}

/// A connection's place in its namespace's share; dropped with the connection.
struct ConnGuard(Arc<Namespace>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Authority {
    /// Binds the request's connection to `p`'s namespace if it is not bound yet, within the
    /// namespace's share of this node's connections. A connection over the share gets
    /// `RESOURCE_EXHAUSTED` and is closed [`crate::connections::EVICT_GRACE`] later.
    fn bind_connection<B>(&self, req: &http::Request<B>, p: &Principal) -> Result<(), Status> {
        let Some(ns) = &p.ns else { return Ok(()) };
        let info = req
            .extensions()
            .get::<crate::connections::ConnInfo>()
            .cloned()
            .or_else(|| {
                req.extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<crate::connections::ConnInfo>>()
                    .map(|t| t.get_ref().clone())
            });
        let Some(info) = info else { return Ok(()) };
        if info.evicted() {
            // Closing: nothing more is started on it (its answer could be cut off).
            return Err(evicted_status(ns));
        }
        let slot = info.owner_slot();
        if slot.get().is_some() {
            return Ok(());
        }
        let max = self.inner.limits.max_connections.max(1);
        if ns.connections.fetch_add(1, Ordering::AcqRel) >= max {
            ns.connections.fetch_sub(1, Ordering::AcqRel);
            if slot.get().is_some() {
                // A request racing this one bound the connection first.
                return Ok(());
            }
            // Refused, and closed a moment later: a connection over the share must not keep
            // a descriptor of the node's (a retrying client reconnects, and is let in once
            // others of its namespace have closed).
            info.evict();
            return Err(quota_status(
                format!(
                    "namespace {:?} holds {max} connections of this node, its share; close \
                     some, or retry after the retry-after-ms metadata",
                    ns.name
                ),
                Duration::from_millis(500),
            ));
        }
        let guard = crate::connections::ConnOwner(Box::new(ConnGuard(ns.clone())));
        if let Err(lost) = slot.set(guard) {
            // Another request bound it first: this one's count goes back with `lost`.
            drop(lost);
        }
        Ok(())
    }
}

/// A request's hold on its namespace's in-flight slot, in the request's extensions: a
/// handler whose answer outlives it (a scan's stream) keeps a clone until the answer ends.
#[derive(Debug, Clone)]
pub struct Held(#[allow(dead_code, reason = "held for its Drop")] Arc<InFlightGuard>);

/// Bytes of a namespace's write in flight; dropping it frees them.
#[derive(Debug)]
pub struct BytesGuard(Option<(Arc<Namespace>, u64)>);

impl Drop for BytesGuard {
    fn drop(&mut self) {
        if let Some((ns, n)) = self.0.take() {
            ns.in_flight_bytes.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// A request of a namespace in flight; dropping it frees the slot.
#[derive(Debug)]
struct InFlightGuard(Arc<Namespace>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The token of `Bearer TOKEN` (scheme case-insensitive).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn refuse(s: Status, why: &'static str) -> Status {
    strata_proto::reason::with_reason(s, why)
}

fn quota(ns: &Namespace, which: &str, after: Duration) -> Status {
    quota_status(
        format!(
            "namespace {:?} is over its quota {which}; retry after the retry-after-ms metadata",
            ns.name
        ),
        after,
    )
}

fn quota_status(msg: String, after: Duration) -> Status {
    let mut s = refuse(Status::resource_exhausted(msg), reason::QUOTA_EXCEEDED);
    let ms = after.as_millis().clamp(1, 60_000) as u64;
    s.metadata_mut()
        .insert(RETRY_AFTER_MS, tonic::metadata::MetadataValue::from(ms));
    s
}

/// Who made a request: the default namespace with every right (no tokens file), one
/// tenant's namespace with its token's rights, or a peer node verified by its certificate.
#[derive(Debug, Clone)]
pub struct Principal {
    ns: Option<Arc<Namespace>>,
    rights: u8,
    /// A peer node (its certificate chains to `--peer-tls-ca`) resolving a transaction it
    /// coordinated: the call names no keys of a client's.
    peer: bool,
    /// Admitted and charged on the node the client sent it to (a verified peer forwarded
    /// it, or a transaction's Resolve): the write quotas are not charged again here.
    pre_admitted: bool,
}

impl Principal {
    /// The default namespace, every right (a server without a tokens file).
    pub fn open() -> Principal {
        Principal {
            ns: None,
            rights: 0xff,
            peer: false,
            pre_admitted: false,
        }
    }

    /// A verified peer node on a node-to-node call.
    fn peer() -> Principal {
        Principal {
            ns: None,
            rights: 0xff,
            peer: true,
            pre_admitted: true,
        }
    }

    /// A call that needs no token (health): no right, no keyspace.
    fn nobody() -> Principal {
        Principal {
            ns: None,
            rights: 0,
            peer: false,
            pre_admitted: false,
        }
    }

    /// Whether a put's key is allowed: in the default namespace (no tokens), keys in the
    /// tenants' reserved range are not written (reads and deletes of such keys, left from a
    /// store once served with tokens, still work).
    pub fn check_put_key(&self, field: &str, key: &[u8]) -> Result<(), Status> {
        if self.ns.is_none() && !self.peer && namespace::is_namespaced(key) {
            return Err(invalid(
                reason::RESERVED_KEY,
                format!(
                    "{field}: keys starting with {:?} are reserved for tenants' namespaces",
                    String::from_utf8_lossy(namespace::NAMESPACE_MARKER)
                ),
            ));
        }
        Ok(())
    }

    /// The tenant's namespace (`None`: the default one).
    pub fn namespace(&self) -> Option<&Arc<Namespace>> {
        self.ns.as_ref()
    }

    /// Whether this principal holds `r`.
    pub fn has(&self, r: Right) -> bool {
        self.rights & r.bit() != 0
    }

    /// A key the client sent, as stored: checked (1 to 4 KiB; in the default namespace, not
    /// one of the reserved prefixes) and put under the namespace's prefix. A key a peer
    /// `forwarded` is stored form already: it must lie inside the namespace.
    pub fn key_in(&self, field: &str, key: Bytes, forwarded: bool) -> Result<Bytes, Status> {
        if self.rights == 0 {
            return Err(refuse(
                Status::permission_denied(format!("{field}: this call reaches no keys")),
                reason::PERMISSION_DENIED,
            ));
        }
        let Some(ns) = &self.ns else {
            if self.peer {
                // Stored form from a peer: a tenant's prefix may come with it.
                if key.is_empty() || key.len() > MAX_KEY_BYTES + namespace::MAX_PREFIX_BYTES {
                    return Err(invalid(
                        reason::KEY_TOO_LARGE,
                        format!("{field}: {} bytes, not a stored key", key.len()),
                    ));
                }
                return Ok(key);
            }
            check_default_key(field, &key)?;
            return Ok(key);
        };
        if forwarded {
            if !key.starts_with(&ns.prefix) {
                return Err(outside(field, ns));
            }
            check_len(field, key.len() - ns.prefix.len())?;
            return Ok(key);
        }
        check_len(field, key.len())?;
        let mut k = BytesMut::with_capacity(ns.prefix.len() + key.len());
        k.extend_from_slice(&ns.prefix);
        k.extend_from_slice(&key);
        Ok(k.freeze())
    }

    /// A stored key as the client sees it (the namespace's prefix taken off).
    pub fn key_out(&self, key: Bytes) -> Bytes {
        match &self.ns {
            Some(ns) if key.starts_with(&ns.prefix) => key.slice(ns.prefix.len()..),
            _ => key,
        }
    }

    /// A scan range the client sent (`end` `None`: to the end), as stored: under the
    /// namespace's prefix, and never past its range. A `forwarded` range is stored form
    /// already and is only clamped to the namespace.
    pub fn range_in(
        &self,
        start: Bytes,
        end: Option<Bytes>,
        forwarded: bool,
    ) -> (Bytes, Option<Bytes>) {
        if self.rights == 0 {
            // Reaches nothing: an empty range.
            return (Bytes::new(), Some(Bytes::new()));
        }
        let Some(ns) = &self.ns else {
            return (start, end);
        };
        let (mut start, mut end) = if forwarded {
            (start, end)
        } else {
            let join = |k: &Bytes| {
                let mut b = BytesMut::with_capacity(ns.prefix.len() + k.len());
                b.extend_from_slice(&ns.prefix);
                b.extend_from_slice(k);
                b.freeze()
            };
            (join(&start), end.as_ref().map(join))
        };
        if start < ns.prefix {
            start = ns.prefix.clone();
        }
        if end.as_ref().is_none_or(|e| *e > ns.end) {
            end = Some(ns.end.clone());
        }
        (start, end)
    }

    /// Holds `bytes` of the namespace's share of this node's in-flight writes until the guard
    /// is dropped (after the write's answer), so one tenant's flood of large writes cannot fill
    /// the commit pipeline every tenant shares. Over the share: `RESOURCE_EXHAUSTED` with
    /// `retry-after-ms`; a write alone is always admitted, however large.
    pub fn reserve_write(&self, bytes: u64) -> Result<BytesGuard, Status> {
        let Some(ns) = self.ns.as_ref().filter(|_| !self.pre_admitted) else {
            return Ok(BytesGuard(None));
        };
        let max = ns.max_in_flight_bytes.load(Ordering::Relaxed).max(1);
        // Added only if it fits (or nothing is in flight), so a refused write never makes a
        // lone write that races it look over the share.
        let mut before = ns.in_flight_bytes.load(Ordering::Acquire);
        let refused = loop {
            if before > 0 && before.saturating_add(bytes) > max {
                break true;
            }
            match ns.in_flight_bytes.compare_exchange_weak(
                before,
                before.saturating_add(bytes),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break false,
                Err(now) => before = now,
            }
        };
        if refused {
            // Each refused write gets a later turn than the one before (5 ms per MiB, about
            // what a local commit of it costs), so a namespace's many clients do not all come
            // back at once.
            let now = strata_clock::now();
            let mut promised = ns.bytes_promised.lock();
            let start = promised.filter(|p| *p > now).unwrap_or(now);
            let turn = (start + Duration::from_micros(5_000 * bytes.div_ceil(1 << 20).max(1)))
                .min(now + Duration::from_secs(5));
            *promised = Some(turn);
            drop(promised);
            return Err(quota_status(
                format!(
                    "namespace {:?} has {before} bytes of writes in flight on this node, its \
                     share is {max}; retry after the retry-after-ms metadata",
                    ns.name
                ),
                turn.saturating_duration_since(now),
            ));
        }
        Ok(BytesGuard(Some((ns.clone(), bytes))))
    }

    /// Whether [`Principal::charge_read`] charges anything (a namespace with a read quota,
    /// on the node that admitted the request): callers skip measuring replies otherwise.
    pub fn charges_reads(&self) -> bool {
        !self.pre_admitted
            && self
                .ns
                .as_ref()
                .is_some_and(|ns| ns.quotas.read().read_bytes_per_sec.is_some())
    }

    /// Charges `bytes` a read returned against the namespace's `read_bytes_per_sec` (into
    /// debt if need be: the next reads of the namespace wait until it is paid).
    pub fn charge_read(&self, bytes: u64) {
        let Some(ns) = self.ns.as_ref().filter(|_| !self.pre_admitted) else {
            return;
        };
        let rate = ns.quotas.read().read_bytes_per_sec;
        if let Some(rate) = rate {
            ns.read_bytes
                .lock()
                .charge(bytes, rate, strata_clock::now());
            // An average of the last replies (weight 1/8 each).
            let avg = ns.read_size.load(Ordering::Relaxed);
            ns.read_size
                .store(avg - avg / 8 + bytes / 8, Ordering::Relaxed);
        }
    }

    /// Charges `bytes` written against the namespace's `write_bytes_per_sec`, and refuses a
    /// write that `adds` data (any put) while the namespace is over its `stored_bytes`
    /// (deletes always pass that check: they are how a tenant gets back under it).
    pub fn charge_write(&self, bytes: u64, adds: bool) -> Result<(), Status> {
        let Some(ns) = self.ns.as_ref().filter(|_| !self.pre_admitted) else {
            return Ok(());
        };
        let q = *ns.quotas.read();
        if let Some(limit) = q.stored_bytes.filter(|_| adds) {
            let stored = ns.stored.load(Ordering::Relaxed);
            if stored >= limit {
                return Err(quota_status(
                    format!(
                        "namespace {:?} stores {stored} bytes, at its quota stored_bytes = \
                         {limit}; delete keys or raise the quota",
                        ns.name
                    ),
                    Duration::from_secs(10),
                ));
            }
        }
        if let Some(rate) = q.write_bytes_per_sec {
            ns.write_bytes
                .lock()
                .take(bytes, rate, strata_clock::now())
                .map_err(|after| quota(ns, "write_bytes_per_sec", after))?;
        }
        Ok(())
    }
}

fn outside(field: &str, ns: &Namespace) -> Status {
    refuse(
        Status::permission_denied(format!(
            "{field}: a forwarded key outside namespace {:?}",
            ns.name
        )),
        reason::PERMISSION_DENIED,
    )
}

fn check_len(field: &str, len: usize) -> Result<(), Status> {
    if len == 0 || len > MAX_KEY_BYTES {
        return Err(invalid(
            reason::KEY_TOO_LARGE,
            format!("{field}: must be 1 to {MAX_KEY_BYTES} bytes, got {len} bytes"),
        ));
    }
    Ok(())
}

/// A key of the default namespace: 1 to 4 KiB, and not one of the store's own records.
pub(crate) fn check_default_key(field: &str, key: &[u8]) -> Result<(), Status> {
    check_len(field, key.len())?;
    if crate::txn::is_system_key(key) {
        return Err(invalid(
            reason::RESERVED_KEY,
            format!(
                "{field}: keys starting with {:?} are reserved for the store's own records",
                String::from_utf8_lossy(crate::txn::SYSTEM_PREFIX)
            ),
        ));
    }
    Ok(())
}

/// The bytes a write charges against `write_bytes_per_sec`: its key and value.
pub fn write_cost(key: &[u8], value_len: usize) -> u64 {
    (key.len() + value_len.min(MAX_VALUE_BYTES)) as u64
}

/// Checks that a connection's client certificate chains to the peer CA (`--peer-tls-ca`).
/// Clones share one verifier, which [`PeerCheck::replace`] swaps (a rotated peer CA).
#[derive(Clone)]
pub struct PeerCheck(Arc<parking_lot::RwLock<PeerVerifier>>);

type PeerVerifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

impl std::fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCheck")
    }
}

impl PeerCheck {
    /// A check against the CAs of a PEM file.
    pub fn new(ca_pem: &[u8]) -> Result<PeerCheck, String> {
        Ok(PeerCheck(Arc::new(parking_lot::RwLock::new(
            Self::verifier(ca_pem)?,
        ))))
    }

    /// Checks against the CAs of `ca_pem` from now on (every clone of this check); on an
    /// error the CAs in force stay.
    pub fn replace(&self, ca_pem: &[u8]) -> Result<(), String> {
        let v = Self::verifier(ca_pem)?;
        *self.0.write() = v;
        Ok(())
    }

    fn verifier(ca_pem: &[u8]) -> Result<PeerVerifier, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            let c = c.map_err(|e| format!("not PEM: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("not a CA certificate: {e}"))?;
        }
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .map_err(|e| e.to_string())?;
        Ok(v)
    }

    /// Whether the request came over a connection whose client presented a certificate that
    /// chains to the peer CA.
    fn verify<B>(&self, req: &http::Request<B>) -> bool {
        let Some(info) = req
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<crate::connections::ConnInfo>>()
        else {
            return false;
        };
        let Some(certs) = info.peer_certs() else {
            return false;
        };
        let Some((end, rest)) = certs.split_first() else {
            return false;
        };
        let v = self.0.read().clone();
        v.verify_client_cert(end, rest, rustls::pki_types::UnixTime::now())
            .is_ok()
    }
}

/// The tower layer that authenticates and admits every call (see the module docs). With no
/// [`Authority`] it only marks calls as the default namespace.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    authority: Option<Authority>,
    peers: Option<PeerCheck>,
    single_node: bool,
}

impl AuthLayer {
    /// The layer for a server with (`Some`) or without tenants; with `peer_ca_pem`,
    /// node-to-node calls (the Txn service, forwarded requests) must come over a connection
    /// whose client certificate chains to it.
    pub fn new(
        authority: Option<Authority>,
        peer_ca_pem: Option<&[u8]>,
    ) -> Result<AuthLayer, String> {
        Ok(AuthLayer {
            authority,
            peers: peer_ca_pem.map(PeerCheck::new).transpose()?,
            single_node: false,
        })
    }

    /// The peer check of this layer (shared with every clone), to replace its CAs.
    pub fn peer_check(&self) -> Option<PeerCheck> {
        self.peers.clone()
    }

    /// A node that is not part of a cluster: no peer forwards to it, so with tenants a
    /// request that claims to be forwarded is refused.
    pub fn single_node(mut self, single: bool) -> AuthLayer {
        self.single_node = single;
        self
    }
}

/// Whether a call is node-to-node: the Txn service, or a request a peer forwarded.
fn peer_call<B>(req: &http::Request<B>) -> bool {
    req.uri().path().starts_with("/strata.v1.Txn/")
        || req
            .headers()
            .contains_key(strata_proto::headers::FORWARDED_PARTITION)
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            authority: self.authority.clone(),
            peers: self.peers.clone(),
            single_node: self.single_node,
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    authority: Option<Authority>,
    peers: Option<PeerCheck>,
    single_node: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // A node-to-node call from a verified peer: authenticated as its client below (its
        // keys checked against the client's namespace) but not charged again; only a Resolve
        // is trusted as the peer's own.
        let mut verified_peer = false;
        if let Some(peers) = &self.peers {
            if peer_call(&req) {
                verified_peer = peers.verify(&req);
            }
            if peer_call(&req) && !verified_peer {
                let s = refuse(
                    Status::permission_denied(
                        "a node-to-node call needs a client certificate that chains to this \
                         node's --peer-tls-ca",
                    ),
                    reason::PERMISSION_DENIED,
                );
                let resp = s.into_http::<RB>();
                return Box::pin(async move { Ok(resp) });
            }
        }
        let Some(auth) = &self.authority else {
            req.extensions_mut().insert(Principal::open());
            let fut = self.inner.call(req);
            return Box::pin(fut);
        };
        let forwarded = req
            .headers()
            .contains_key(strata_proto::headers::FORWARDED_PARTITION);
        if forwarded && self.single_node {
            // No peer forwards to a node alone: such a header is a tenant's, trying to pass
            // its requests off as admitted elsewhere.
            let s = refuse(
                Status::permission_denied(
                    "this node is not part of a cluster: it takes no forwarded requests",
                ),
                reason::PERMISSION_DENIED,
            );
            let resp = s.into_http::<RB>();
            return Box::pin(async move { Ok(resp) });
        }
        let path = req.uri().path();
        // Only the second half of a transaction carries no keys and no token of its own: a
        // verified peer resolving a decided transaction is trusted as the peer it is. A
        // Prepare carries its client's token and its keys are checked against that token's
        // namespace like any forwarded request's.
        let resolve = path == "/strata.v1.Txn/Resolve";
        if resolve && verified_peer {
            req.extensions_mut().insert(Principal::peer());
            return Box::pin(self.inner.call(req));
        }
        let need = need_of(path);
        let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        // What a verified peer forwards (a Prepare included) was admitted and charged where
        // the client sent it; a Resolve is never charged, as a quota must not strand a
        // decided transaction. Without a peer CA nothing tells a peer from a client, so a
        // forwarded request is charged again (at worst twice).
        let charge = !verified_peer && !resolve;
        // A connection carrying forwarded requests is a peer's, shared by every tenant: it is
        // bound to no namespace. (With a peer CA such a connection is a verified peer's; a
        // cluster run without one cannot tell, see SECURITY.md.)
        let bind = charge && !forwarded;
        let admitted = auth.authorize(header, need).and_then(|mut p| {
            if bind {
                auth.bind_connection(&req, &p)?;
            }
            if charge {
                auth.admit(&p, need == Need::Right(Right::Read))
                    .map(|g| (p, g))
            } else {
                p.pre_admitted = true;
                Ok((p, None))
            }
        });
        match admitted {
            Err(s) => {
                // Nothing of the request is read, let alone applied.
                let resp = s.into_http::<RB>();
                Box::pin(async move { Ok(resp) })
            }
            Ok((p, guard)) => {
                req.extensions_mut().insert(p);
                let held = guard.map(|g| Held(Arc::new(g)));
                if let Some(h) = &held {
                    req.extensions_mut().insert(h.clone());
                }
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let r = fut.await;
                    drop(held);
                    r
                })
            }
        }
    }
}

/// The principal tonic handed a handler (the layer put it there). A server with tenants whose
/// request lacks one is refused rather than served as the default namespace.
pub(crate) fn principal<T>(req: &tonic::Request<T>, tenants: bool) -> Result<Principal, Status> {
    match req.extensions().get::<Principal>() {
        Some(p) => Ok(p.clone()),
        None if !tenants => Ok(Principal::open()),
        None => Err(Status::internal(
            "the request reached a handler without passing authentication",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str, &str)], extra: &str) -> String {
        let mut s = String::new();
        for (tok, ns, rights) in entries {
            let rights: Vec<String> = rights.split(',').map(|r| format!("{r:?}")).collect();
            s.push_str(&format!(
                "[[tokens]]\nsha256 = \"{}\"\nnamespace = \"{ns}\"\nrights = [{}]\n\n",
                token_hash(tok),
                rights.join(", ")
            ));
        }
        s.push_str(extra);
        s
    }

    fn authority(text: &str) -> (tempfile::TempDir, Authority) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens.toml");
        std::fs::write(&p, text).unwrap();
        let a = Authority::load(&p, TenantLimits::default()).unwrap();
        (d, a)
    }

    #[test]
    fn tokens_rights_and_needs() {
        let (_d, a) = authority(&file(
            &[("tok-a", "alpha", "read,write"), ("tok-r", "beta", "read")],
            "",
        ));
        let w = Need::Right(Right::Write);
        assert_eq!(
            a.authorize(None, w).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.authorize(Some(b"Bearer nope"), w).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let p = a.authorize(Some(b"Bearer tok-a"), w).unwrap();
        assert_eq!(p.namespace().unwrap().name(), "alpha");
        assert!(a.authorize(Some(b"bearer  tok-a "), w).is_ok());
        assert_eq!(
            a.authorize(Some(b"Bearer tok-r"), w).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(a.authorize(Some(b"Bearer tok-r"), Need::Token).is_ok());
        assert!(a.authorize(None, Need::Open).is_ok());
        assert_eq!(need_of("/strata.v1.KV/Scan"), Need::Right(Right::Read));
        assert_eq!(need_of("/strata.v1.KV/Put"), Need::Right(Right::Write));
        assert_eq!(
            need_of("/strata.v1.KV/SomethingNew"),
            Need::Right(Right::Admin)
        );
        assert_eq!(need_of("/strata.v1.Admin/ClusterMap"), Need::Token);
        assert_eq!(need_of("/grpc.health.v1.Health/Check"), Need::Open);
        assert_eq!(need_of("/x.Y/Z"), Need::Right(Right::Admin));
    }

    #[test]
    fn bad_files_are_refused_with_the_field() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.toml");
        for (text, want) in [
            (
                "[[tokens]]\nsha256 = \"abc\"\nnamespace = \"a\"\nrights = []\n",
                "sha256",
            ),
            (&file(&[("t", "a/b", "read")], ""), "namespace"),
            (&file(&[("t", "a", "fly")], ""), "rights"),
            (
                &file(&[("t", "a", "read"), ("t", "b", "read")], ""),
                "twice",
            ),
            ("[[tokens]]\nsha = 1\n", "unknown field"),
            (
                &file(&[], "[namespaces.a]\nrequests = 1\n"),
                "unknown field",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Authority::load(&p, TenantLimits::default()).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn keys_are_scoped_to_the_namespace() {
        let (_d, a) = authority(&file(&[("a", "alpha", "read")], ""));
        let p = a.authorize(Some(b"Bearer a"), Need::Token).unwrap();
        let k = p.key_in("key", Bytes::from_static(b"k1"), false).unwrap();
        assert_eq!(&k[..], b"\xff\xfens/alpha/k1");
        assert_eq!(&p.key_out(k.clone())[..], b"k1");
        // A forwarded key is stored form: accepted inside the namespace, refused outside.
        assert_eq!(p.key_in("key", k.clone(), true).unwrap(), k);
        let other = Bytes::from_static(b"\xff\xfens/beta/k1");
        assert_eq!(
            p.key_in("key", other, true).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // Ranges never leave the namespace, forwarded or not.
        let (s, e) = p.range_in(Bytes::new(), None, false);
        assert_eq!(
            (&s[..], &e.unwrap()[..]),
            (&b"\xff\xfens/alpha/"[..], &b"\xff\xfens/alpha0"[..])
        );
        let (s, e) = p.range_in(Bytes::new(), Some(Bytes::from_static(b"\xff\xff")), true);
        assert_eq!(
            (&s[..], &e.unwrap()[..]),
            (&b"\xff\xfens/alpha/"[..], &b"\xff\xfens/alpha0"[..])
        );
        // The default namespace writes no key in the tenants' range (reads and deletes of one
        // left from a store once served with tokens still work), and none of its own records.
        let open = Principal::open();
        let tenants = Bytes::from_static(b"\xff\xfens/x/y");
        assert!(open.key_in("key", tenants.clone(), false).is_ok());
        assert!(open.check_put_key("key", &tenants).is_err());
        assert!(open
            .key_in("key", Bytes::from_static(b"\xff\xffstrata/x"), false)
            .is_err());
        assert!(open
            .key_in("key", Bytes::from_static(b"plain"), false)
            .is_ok());
        // A call that needs no token reaches no key.
        let nobody = a.authorize(None, Need::Open).unwrap();
        assert!(nobody
            .key_in("key", Bytes::from_static(b"k"), false)
            .is_err());
        assert_eq!(
            nobody.range_in(Bytes::new(), None, false).1.unwrap(),
            Bytes::new()
        );
    }

    #[test]
    fn refused_requests_are_given_spread_out_turns() {
        let mut b = Bucket::default();
        let t0 = strata_clock::now();
        // 10 per second: ten pass, then each refusal waits a turn longer than the last.
        for _ in 0..10 {
            assert!(b.take(1, 10, t0).is_ok());
        }
        let waits: Vec<Duration> = (0..5).map(|_| b.take(1, 10, t0).unwrap_err()).collect();
        for w in waits.windows(2) {
            assert!(w[1] > w[0], "{waits:?}");
        }
        assert!(waits[4] >= Duration::from_millis(450), "{waits:?}");
        // After the promised turns the bucket admits again.
        assert!(b.take(1, 10, t0 + Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn quotas_refuse_with_retry_after_and_survive_reloads() {
        let text = file(
            &[("a", "alpha", "read,write")],
            "[namespaces.alpha]\nrequests_per_sec = 5\nwrite_bytes_per_sec = 100\n",
        );
        let (d, a) = authority(&text);
        let p = a.authorize(Some(b"Bearer a"), Need::Token).unwrap();
        let mut refused = None;
        for _ in 0..20 {
            if let Err(s) = a.admit(&p, false) {
                refused = Some(s);
                break;
            }
        }
        let s = refused.expect("the rate quota refuses within 20 requests");
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.metadata().get(RETRY_AFTER_MS).is_some());
        // A write larger than the burst passes once, then the namespace is in debt.
        assert!(p.charge_write(1_000, true).is_ok());
        assert_eq!(
            p.charge_write(1, true).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        // A reload keeps the namespace (and its debt); dropping the quota lifts it.
        std::fs::write(
            d.path().join("tokens.toml"),
            file(&[("a", "alpha", "read,write")], ""),
        )
        .unwrap();
        a.reload().unwrap();
        assert!(p.charge_write(1, true).is_ok());
    }

    #[test]
    fn reads_are_charged_what_they_returned_and_wait_out_their_debt() {
        let (_d, a) = authority(&file(
            &[("a", "alpha", "read,write")],
            "[namespaces.alpha]\nread_bytes_per_sec = 1000\n",
        ));
        let p = a.authorize(Some(b"Bearer a"), Need::Token).unwrap();
        // Within the burst: reads go.
        assert!(a.admit(&p, true).is_ok());
        p.charge_read(600);
        assert!(a.admit(&p, true).is_ok());
        // A large reply puts the namespace in debt: its next reads wait, its writes do not.
        p.charge_read(5_000);
        let e = a.admit(&p, true).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("read_bytes_per_sec"),
            "{}",
            e.message()
        );
        let after: u64 = e
            .metadata()
            .get(RETRY_AFTER_MS)
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (4_000..=10_000).contains(&after),
            "about the debt's 4.6 s: {after}"
        );
        assert!(a.admit(&p, false).is_ok());
        // What a verified peer forwards was charged where the client sent it.
        let mut fwd = p.clone();
        fwd.pre_admitted = true;
        let before = p.namespace().unwrap().read_bytes.lock().level;
        fwd.charge_read(1 << 30);
        assert!(p.namespace().unwrap().read_bytes.lock().level >= before);
    }

    #[test]
    fn the_in_flight_byte_share_and_what_a_peer_admitted() {
        let (_d, a) = authority(&file(
            &[("a", "alpha", "read,write")],
            "[namespaces.alpha]\nwrite_bytes_per_sec = 100\n",
        ));
        let p = a.authorize(Some(b"Bearer a"), Need::Token).unwrap();
        let share = p
            .namespace()
            .unwrap()
            .max_in_flight_bytes
            .load(Ordering::Relaxed);
        // A write alone is admitted however large; a second one over the share is not, and
        // its refusal leaves nothing counted (the first's bytes free, a lone write passes).
        let big = p.reserve_write(share * 2).unwrap();
        let e = p.reserve_write(1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.metadata().get(RETRY_AFTER_MS).is_some());
        drop(big);
        let ns = p.namespace().unwrap();
        assert_eq!(ns.in_flight_bytes.load(Ordering::Acquire), 0);
        let fits = p.reserve_write(share / 2).unwrap();
        assert!(p.reserve_write(share / 4).is_ok());
        drop(fits);
        // What a verified peer forwards was charged where the client sent it: never again.
        let mut fwd = p.clone();
        fwd.pre_admitted = true;
        let _held = p.reserve_write(share).unwrap();
        assert!(fwd.reserve_write(share).is_ok());
        for _ in 0..10 {
            assert!(fwd.charge_write(1_000, true).is_ok());
        }
        assert!(
            p.charge_write(1_000, true).is_ok(),
            "the burst is still there"
        );
        assert!(p.charge_write(1, true).is_err());
    }
}

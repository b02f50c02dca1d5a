//! Connections: the gRPC listener's accept loop and the limits that keep clients from pinning
//! the server.
//!
//! - At most `max_connections` are open at once; one more is accepted and closed at once (the
//!   client sees the connection end immediately rather than hang in the kernel's backlog).
//! - A connection that has not sent its HTTP/2 preface and first SETTINGS frame within
//!   `handshake_timeout` is closed (half-open and slow-loris sockets). Over TLS the preface is
//!   encrypted: there the handshake is done at the client's first application-data record.
//! - A connection with no request in flight for `idle_timeout` is closed. A request counts as
//!   in flight from its headers until its response body is finished or dropped, so a long
//!   stream is never "idle" however quiet it is.
//! - A connection the service layer marks with [`ConnInfo::evict`] (its tenant holds its share
//!   of the node's connections) is closed [`EVICT_GRACE`] later, once no request is in flight
//!   and none has finished for [`EVICT_QUIET`] (or [`EVICT_FORCE`] later if its client keeps
//!   sending, every request refused): its client has had the refusal and reconnects
//!   when it retries. (A stream kept open, such as a health watch, keeps it open.)
//! - Dead peers are found by HTTP/2 keepalive pings, configured on the tonic server
//!   (`KEEPALIVE_INTERVAL`, `KEEPALIVE_TIMEOUT`).
//!
//! The timers live in the connection's own `poll_read`: hyper always keeps a read pending on a
//! connection, so the timer's waker is registered whenever the connection is otherwise
//! quiet, and returning an error from the read makes hyper drop the connection (closing the
//! socket). No task per connection is needed beyond the one tonic spawns.
//!
//! Accept errors (`EMFILE` when the fd table is full) back off briefly instead of spinning; the
//! fd limit itself is raised at start by [`raise_fd_limit`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use strata_engine::EngineMetrics;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// HTTP/2 keepalive: the server pings a connection quiet for this long...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and closes it when the ping is not answered within this.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after [`ConnInfo::evict`] the connection closes: time for the refusal that
/// evicted it to reach the client.
pub const EVICT_GRACE: Duration = Duration::from_secs(1);
/// How long an evicted connection must have been quiet before it closes...
pub const EVICT_QUIET: Duration = Duration::from_millis(200);
/// ...unless its client keeps sending (each request refused): then it closes this long after
/// [`EVICT_GRACE`] whenever no request is in flight, or a client retrying faster than
/// [`EVICT_QUIET`] would keep its refused connection for ever.
pub const EVICT_FORCE: Duration = Duration::from_secs(2);

/// How long accepting pauses after an error such as `EMFILE`, so a full fd table does not turn
/// the accept loop into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one warning per this interval for refused connections and accept errors.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The limits of [`Incoming`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time from accept to the end of the client's HTTP/2 preface and first SETTINGS frame.
    pub handshake_timeout: Duration,
    /// Time without a request in flight after which a connection is closed (zero: never).
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The result of [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now (the hard limit, when raising it worked).
    pub now: u64,
}

/// File descriptors kept for everything but client connections (SSTs, WAL segments, the disk
/// cache, object-store and etcd sockets, the compactor): a quarter of the limit, at most 1,024.
pub fn fd_reserve(limit: u64) -> u64 {
    (limit / 4).min(1024)
}

/// How many client connections an fd limit leaves room for, after [`fd_reserve`].
pub fn connections_allowed_by(limit: u64) -> u64 {
    limit.saturating_sub(fd_reserve(limit))
}

/// Raises this process's soft limit on open files to its hard limit (as servers such as
/// etcd and nginx do), so the connection limit rather than the fd table decides how many
/// clients fit.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur >= lim.rlim_max {
        return Ok(FdLimit {
            before,
            now: before,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FdLimit {
        before,
        now: lim.rlim_max,
    })
}

/// What tonic puts in each request's extensions for a connection from [`Incoming`]; the
/// [`ActivityLayer`] reads it to count requests in flight.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The addresses, as tonic's own TCP incoming reports them (the layer also inserts this
    /// value on its own, so `Request::remote_addr` keeps working).
    pub tcp: TcpConnectInfo,
    state: Arc<ConnState>,
}

impl ConnInfo {
    /// What the service layer bound this connection to (a tenant's share of connections):
    /// set once, by the first request that binds it, and dropped when the connection's state
    /// is (it closed and its last request finished).
    pub fn owner_slot(&self) -> &std::sync::OnceLock<ConnOwner> {
        &self.state.owner
    }

    /// Whether [`ConnInfo::evict`] was called: the connection is closing, and the service
    /// layer starts no more requests on it.
    pub fn evicted(&self) -> bool {
        self.state.evict_at_ms.load(Ordering::Acquire) != u64::MAX
    }

    /// Closes the connection [`EVICT_GRACE`] from the first call, once no request is in
    /// flight and none has finished for [`EVICT_QUIET`] (the last answer has reached the
    /// socket: a request finishes when its body is handed to HTTP/2, before it is written).
    pub fn evict(&self) {
        let st = &self.state;
        let at = st.now_ms() + EVICT_GRACE.as_millis() as u64;
        if st
            .evict_at_ms
            .compare_exchange(u64::MAX, at, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            st.waker.wake();
        }
    }
}

/// A value whose life is the connection's (see [`ConnInfo::owner_slot`]).
pub struct ConnOwner(pub Box<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for ConnOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnOwner")
    }
}

/// Activity of one connection, shared by its IO (which owns the timers) and its requests.
#[derive(Debug)]
struct ConnState {
    /// Requests whose response is not finished.
    in_flight: AtomicUsize,
    /// When a request last started or finished, ms since `epoch`.
    last_active_ms: AtomicU64,
    epoch: Instant,
    /// See [`ConnInfo::owner_slot`].
    owner: std::sync::OnceLock<ConnOwner>,
    /// When to close the connection (ms since `epoch`; `u64::MAX`: never), see
    /// [`ConnInfo::evict`].
    evict_at_ms: AtomicU64,
    /// The connection's reader, woken by an eviction to re-arm its timer.
    waker: futures::task::AtomicWaker,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Release);
    }
}

/// The accepted connections of a listener, limited by [`ConnectionLimits`]; give it to
/// tonic's `serve_with_incoming_shutdown`.
pub struct Incoming {
    listener: TcpListener,
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    metrics: Arc<EngineMetrics>,
    backoff: Option<Pin<Box<Sleep>>>,
    last_refusal_warning: Option<Instant>,
    last_error_warning: Option<Instant>,
}

impl Incoming {
    pub fn new(
        listener: TcpListener,
        limits: ConnectionLimits,
        metrics: Arc<EngineMetrics>,
    ) -> Incoming {
        Incoming {
            listener,
            permits: Arc::new(Semaphore::new(
                limits.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            limits,
            metrics,
            backoff: None,
            last_refusal_warning: None,
            last_error_warning: None,
        }
    }
}

/// Whether a warning may be logged now, at most once per `WARN_EVERY`.
fn warn_due(last: &mut Option<Instant>) -> bool {
    let now = strata_clock::now();
    if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

impl futures::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.backoff.as_mut() {
                if b.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.backoff = None;
            }
            let (sock, peer) = match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => {
                    // EMFILE/ENFILE/ENOMEM and the like: the connection waits in the backlog
                    // while we pause; a client that gave up (ECONNABORTED) is just skipped.
                    if e.kind() != io::ErrorKind::ConnectionAborted {
                        if warn_due(&mut this.last_error_warning) {
                            tracing::warn!(error = %e, "accepting a connection failed; pausing accepts briefly");
                        }
                        this.backoff = Some(Box::pin(strata_clock::sleep(ACCEPT_BACKOFF)));
                    }
                    continue;
                }
            };
            let Ok(permit) = this.permits.clone().try_acquire_owned() else {
                this.metrics
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                if warn_due(&mut this.last_refusal_warning) {
                    tracing::warn!(
                        %peer,
                        max_connections = this.limits.max_connections,
                        "connection refused: --max-connections reached"
                    );
                }
                drop(sock);
                continue;
            };
            // Without TCP_NODELAY small responses wait on Nagle and delayed ACKs (~40 ms).
            if let Err(e) = sock.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "setting TCP_NODELAY failed");
            }
            return Poll::Ready(Some(Ok(Conn::new(
                sock,
                permit,
                this.limits,
                this.metrics.clone(),
            ))));
        }
    }
}

/// Watches the client's first bytes for the end of the HTTP/2 handshake: the 24-byte
/// preface, then a SETTINGS frame (9-byte header, then its payload).
#[derive(Debug, Default)]
struct Handshake {
    seen: usize,
    header: [u8; 9],
    done: bool,
    /// The connection speaks TLS (its first byte opens a TLS handshake record): the HTTP/2
    /// preface is encrypted inside, so the TLS records are followed instead.
    tls: Option<TlsRecords>,
}

/// Where the reader is in a client's TLS records: a record header being read, or the bytes
/// of a record's body still to skip.
#[derive(Debug, Default)]
struct TlsRecords {
    head: [u8; TLS_RECORD_HEADER_LEN],
    have: usize,
    skip: usize,
}

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TLS_RECORD_HEADER_LEN: usize = 5;
const TLS_HANDSHAKE: u8 = 0x16;
const TLS_APPLICATION_DATA: u8 = 0x17;

impl TlsRecords {
    /// Whether `bytes` hold an application-data record: the client finished its handshake
    /// (TLS 1.3 sends even its Finished message as one; TLS 1.2 sends one right after).
    fn observe(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (TLS_RECORD_HEADER_LEN - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == TLS_RECORD_HEADER_LEN {
                if self.head[0] == TLS_APPLICATION_DATA {
                    return true;
                }
                self.skip = u16::from_be_bytes([self.head[3], self.head[4]]) as usize;
                self.have = 0;
            }
        }
        false
    }
}

impl Handshake {
    fn observe(&mut self, bytes: &[u8]) {
        if self.done || bytes.is_empty() {
            return;
        }
        if self.seen == 0 && bytes[0] == TLS_HANDSHAKE {
            self.tls = Some(TlsRecords::default());
        }
        let start = self.seen;
        let end = start + bytes.len();
        self.seen = end;
        if let Some(t) = &mut self.tls {
            self.done = t.observe(bytes);
            return;
        }
        let header = PREFACE_LEN..PREFACE_LEN + FRAME_HEADER_LEN;
        let (lo, hi) = (start.max(header.start), end.min(header.end));
        if lo < hi {
            self.header[lo - PREFACE_LEN..hi - PREFACE_LEN]
                .copy_from_slice(&bytes[lo - start..hi - start]);
        }
        if self.seen >= header.end {
            let payload = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
            self.done = self.seen >= header.end + payload as usize;
        }
    }
}

/// Why a connection was closed by its own timers.
#[derive(Debug, Clone, Copy)]
enum Closed {
    Handshake,
    Idle,
    Evicted,
}

/// One accepted connection: the socket, its connection permit and its timers.
pub struct Conn {
    io: TcpStream,
    info: ConnInfo,
    limits: ConnectionLimits,
    metrics: Arc<EngineMetrics>,
    handshake: Handshake,
    /// The handshake deadline until the handshake is done, then the idle deadline.
    timer: Option<Pin<Box<Sleep>>>,
    closed: Option<Closed>,
    /// Bytes were read since the socket last had nothing to read. hyper reads frames until
    /// then before it dispatches them, so a request may be read but not yet counted in
    /// flight: the idle timer must not close the connection at that moment.
    read_since_pending: bool,
    /// The timer was re-armed for an eviction.
    evict_armed: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(
        io: TcpStream,
        permit: OwnedSemaphorePermit,
        limits: ConnectionLimits,
        metrics: Arc<EngineMetrics>,
    ) -> Conn {
        metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        let tcp = TcpConnectInfo {
            local_addr: io.local_addr().ok(),
            remote_addr: io.peer_addr().ok(),
        };
        let epoch = strata_clock::now();
        let state = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            epoch,
            owner: std::sync::OnceLock::new(),
            evict_at_ms: AtomicU64::new(u64::MAX),
            waker: futures::task::AtomicWaker::new(),
        });
        let timer = (!limits.handshake_timeout.is_zero())
            .then(|| Box::pin(strata_clock::sleep_until(epoch + limits.handshake_timeout)));
        Conn {
            io,
            info: ConnInfo { tcp, state },
            limits,
            metrics,
            handshake: Handshake::default(),
            timer,
            closed: None,
            read_since_pending: false,
            evict_armed: false,
            _permit: permit,
        }
    }

    /// The deadline after the handshake: the idle one, or an eviction's if sooner.
    fn deadline(&self) -> Option<Instant> {
        let st = &self.info.state;
        let evict = match st.evict_at_ms.load(Ordering::Acquire) {
            u64::MAX => None,
            // Requests in flight: look again shortly after they may have finished.
            at if st.in_flight.load(Ordering::Acquire) > 0 => Some(
                (st.epoch + Duration::from_millis(at))
                    .max(strata_clock::now() + Duration::from_millis(100)),
            ),
            at => {
                let quiet =
                    st.last_active_ms.load(Ordering::Acquire) + EVICT_QUIET.as_millis() as u64;
                let force = at + EVICT_FORCE.as_millis() as u64;
                Some(st.epoch + Duration::from_millis(at.max(quiet).min(force)))
            }
        };
        match (self.idle_deadline(), evict) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `idle_timeout` after the last request finished, or a re-check one `idle_timeout` from
    /// now while requests are in flight.
    fn idle_deadline(&self) -> Option<Instant> {
        if self.limits.idle_timeout.is_zero() {
            return None;
        }
        let st = &self.info.state;
        let base = if st.in_flight.load(Ordering::Acquire) > 0 {
            st.now_ms()
        } else {
            st.last_active_ms.load(Ordering::Acquire)
        };
        Some(st.epoch + Duration::from_millis(base) + self.limits.idle_timeout)
    }

    /// Polls the timer; `Some` when the connection must close now.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<Closed> {
        loop {
            let timer = self.timer.as_mut()?;
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            if !self.handshake.done {
                return Some(Closed::Handshake);
            }
            let st = &self.info.state;
            let now = st.now_ms();
            let evict_at = st.evict_at_ms.load(Ordering::Acquire);
            let quiet_for = now.saturating_sub(st.last_active_ms.load(Ordering::Acquire));
            if st.in_flight.load(Ordering::Acquire) == 0
                && now >= evict_at
                && (quiet_for >= EVICT_QUIET.as_millis() as u64
                    || now >= evict_at.saturating_add(EVICT_FORCE.as_millis() as u64))
            {
                return Some(Closed::Evicted);
            }
            let idle_for = st
                .now_ms()
                .saturating_sub(st.last_active_ms.load(Ordering::Acquire));
            if st.in_flight.load(Ordering::Acquire) == 0
                && idle_for >= self.limits.idle_timeout.as_millis() as u64
            {
                return Some(Closed::Idle);
            }
            match self.deadline() {
                Some(d) => {
                    if let Some(t) = self.timer.as_mut() {
                        t.as_mut().reset(d);
                    }
                }
                None => self.timer = None,
            }
        }
    }

    fn close(&mut self, why: Closed) -> io::Error {
        if self.closed.is_none() {
            self.closed = Some(why);
            let counter = match why {
                Closed::Handshake => &self.metrics.connections_handshake_timeouts,
                Closed::Idle => &self.metrics.connections_idle_closed,
                Closed::Evicted => &self.metrics.connections_over_share_closed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = ?self.info.tcp.remote_addr, reason = ?why, "closing connection");
        }
        match why {
            Closed::Handshake => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "HTTP/2 handshake not completed within {:?}",
                    self.limits.handshake_timeout
                ),
            ),
            Closed::Idle => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no request for {:?} (--idle-timeout-secs)",
                    self.limits.idle_timeout
                ),
            ),
            Closed::Evicted => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the tenant holds its share of this node's connections (--tenant-max-connections)",
            ),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(why) = this.closed {
            return Poll::Ready(Err(this.close(why)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.read_since_pending |= buf.filled().len() > before;
                if !this.handshake.done {
                    this.handshake.observe(&buf.filled()[before..]);
                    if this.handshake.done {
                        // Idle time counts from the end of the handshake.
                        this.info.state.touch();
                        this.timer = this
                            .deadline()
                            .map(|d| Box::pin(strata_clock::sleep_until(d)));
                    }
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let had_data = std::mem::take(&mut this.read_since_pending);
        if this.handshake.done {
            // Registered before the flag is read: an eviction after this wakes us.
            this.info.state.waker.register(cx.waker());
            if !this.evict_armed && this.info.state.evict_at_ms.load(Ordering::Acquire) != u64::MAX
            {
                this.evict_armed = true;
                if let Some(d) = this.deadline() {
                    match this.timer.as_mut() {
                        Some(t) => t.as_mut().reset(d),
                        None => this.timer = Some(Box::pin(strata_clock::sleep_until(d))),
                    }
                }
            }
        }
        match this.poll_timer(cx) {
            // Look again once hyper has handled what it just read (the timer stays due).
            Some(Closed::Idle | Closed::Evicted) if had_data => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(why) => Poll::Ready(Err(this.close(why))),
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A tower layer (for `tonic::transport::Server::builder().layer`) that counts each
/// connection's requests in flight for the idle timeout of [`Conn`], and times every RPC:
/// `strata_rpc_duration_seconds{rpc, code}` from the request to the end of its response
/// (the last message of a stream), with the gRPC status the response ended with.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = Activity<S>;

    fn layer(&self, inner: S) -> Activity<S> {
        Activity { inner }
    }
}

/// The service of [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Activity<S> {
    inner: S,
}

/// A request in flight on a connection; dropping it marks the connection active now.
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl InFlight {
    fn begin(state: Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.touch();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Touch before the decrement, so a timer that sees zero in flight also sees the time.
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Activity<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Over TLS tonic wraps the connection's info in its own (with the peer certificates).
        let info = req.extensions().get::<ConnInfo>().cloned().or_else(|| {
            req.extensions()
                .get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                .map(|t| t.get_ref().clone())
        });
        let guard = info.map(|ci| {
            req.extensions_mut().insert(ci.tcp);
            InFlight::begin(ci.state)
        });
        let mut timer = RpcTimer::start(req.uri().path());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // A trailers-only answer (most errors) carries its status in the headers.
            if let Some(code) = grpc_status(resp.headers()) {
                timer.finish(code);
            }
            Ok(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: guard,
                timer,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it ends or is dropped,
/// and records its RPC's latency when its trailers (the status) go out.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: Option<InFlight>,
    timer: RpcTimer,
}

/// Times one RPC; records once, when the status is known (or, dropped before that, as
/// `Cancelled`: the client went away).
#[derive(Debug)]
pub struct RpcTimer {
    rpc: &'static str,
    started: strata_clock::Instant,
    done: bool,
}

/// The RPCs of `strata.v1`, as `rpc` labels (anything else, health and reflection included,
/// is `other`): a fixed set, so a client naming unknown methods cannot grow the label space.
const RPCS: &[&str] = &[
    "KV/Get",
    "KV/Put",
    "KV/Delete",
    "KV/BatchGet",
    "KV/BatchWrite",
    "KV/Scan",
    "Admin/ClusterMap",
    "Txn/Prepare",
    "Txn/Resolve",
];

/// gRPC status codes by number, as `code` labels.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl RpcTimer {
    fn start(path: &str) -> RpcTimer {
        let method = path.strip_prefix("/strata.v1.").unwrap_or("");
        RpcTimer {
            rpc: RPCS
                .iter()
                .copied()
                .find(|r| *r == method)
                .unwrap_or("other"),
            started: strata_clock::now(),
            done: false,
        }
    }

    fn finish(&mut self, code: usize) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = CODES.get(code).copied().unwrap_or("UNKNOWN");
        metrics::histogram!("strata_rpc_duration_seconds", "rpc" => self.rpc, "code" => code)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        self.finish(1);
    }
}

/// The `grpc-status` in `headers` (or trailers), if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.timer.finish(code);
                }
            }
            // Ended without a status: the transport's error, not an answer.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.timer.finish(2),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(payload: usize) -> Vec<u8> {
        let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        assert_eq!(v.len(), PREFACE_LEN);
        let len = (payload as u32).to_be_bytes();
        v.extend_from_slice(&[len[1], len[2], len[3], 0x4, 0, 0, 0, 0, 0]);
        v.extend(std::iter::repeat_n(0u8, payload));
        v
    }

    #[test]
    fn handshake_done_after_preface_and_settings_in_any_split() {
        let bytes = settings(18);
        for split in 0..=bytes.len() {
            let mut h = Handshake::default();
            h.observe(&bytes[..split]);
            assert_eq!(h.done, split == bytes.len(), "split {split}");
            h.observe(&bytes[split..]);
            assert!(h.done, "split {split}");
        }
        // One byte at a time: done only with the last byte.
        let mut h = Handshake::default();
        for (i, b) in bytes.iter().enumerate() {
            assert!(!h.done, "done early at {i}");
            h.observe(std::slice::from_ref(b));
        }
        assert!(h.done);
    }

    #[test]
    fn over_tls_the_handshake_is_done_at_the_first_application_data_record() {
        // ClientHello (a 0x16 record whose body would read as a huge HTTP/2 frame length),
        // ChangeCipherSpec, then application data.
        let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x30];
        bytes.extend(std::iter::repeat_n(0xffu8, 0x30));
        bytes.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        let app = bytes.len();
        bytes.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb]);
        for split in 0..=bytes.len() {
            let mut h = Handshake::default();
            h.observe(&bytes[..split]);
            // Done once the application-data record's header is in.
            assert_eq!(
                h.done,
                split >= app + TLS_RECORD_HEADER_LEN,
                "split {split}"
            );
            h.observe(&bytes[split..]);
            assert!(h.done, "split {split}");
        }
        // A stalled ClientHello is never done.
        let mut h = Handshake::default();
        h.observe(&bytes[..app]);
        assert!(!h.done);
    }

    #[test]
    fn handshake_with_empty_settings_and_trailing_frames() {
        let mut bytes = settings(0);
        bytes.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let mut h = Handshake::default();
        h.observe(&bytes[..PREFACE_LEN + FRAME_HEADER_LEN - 1]);
        assert!(!h.done);
        h.observe(&bytes[PREFACE_LEN + FRAME_HEADER_LEN - 1..]);
        assert!(h.done);
    }

    #[test]
    fn fd_reserve_leaves_room_for_the_engine() {
        assert_eq!(connections_allowed_by(1024), 768);
        assert_eq!(connections_allowed_by(1 << 20), (1 << 20) - 1024);
        assert_eq!(connections_allowed_by(0), 0);
    }

    #[test]
    fn raising_the_fd_limit_never_lowers_it() {
        let l = raise_fd_limit().expect("getrlimit/setrlimit");
        assert!(l.now >= l.before);
    }
}

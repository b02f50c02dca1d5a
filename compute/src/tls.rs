//! The listener's TLS: a rustls configuration that can be replaced while the server runs
//! (certificate rotation without a restart), and the stream of handshaken connections given
//! to tonic in place of its own TLS acceptor.
//!
//! tonic's `ServerTlsConfig` builds its rustls configuration once, at start: a certificate
//! renewed on disk would need a restart. Here the configuration sits behind [`ServerTls`];
//! every handshake takes the one in force when it starts, so a replaced configuration applies
//! to new connections and connections already open keep theirs (as nginx and etcd reload).
//!
//! The handshaken connection is a `tokio_rustls::server::TlsStream<Conn>`: tonic's own
//! `Connected` impl for it puts a `TlsConnectInfo<ConnInfo>` (with the peer certificates) in
//! each request's extensions, exactly what its acceptor would, so the auth layer's peer checks
//! and the connection layer's accounting read the same types either way.
//!
//! Handshakes run in tasks of their own (a [`JoinSet`]), so a slow client cannot hold up the
//! accept loop; each is bounded by the connection's handshake timer (`Conn`, which closes a
//! socket whose client has not finished the TLS handshake within `handshake_timeout`) and by
//! [`HANDSHAKE_TIMEOUT`].

use crate::connections::{Conn, Incoming};
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;

/// Longest a TLS handshake may take once accepted (tonic's acceptor used the same bound).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections taken from the accept loop per poll: with a backlog of connections
/// waiting, finished handshakes still reach tonic between batches (and their results do not
/// pile up in the task set), and the task's cooperative budget is not spent on accepts alone.
const ACCEPTS_PER_POLL: usize = 16;

/// What a server's TLS is built from: its certificate chain and key, and the CAs that client
/// certificates may chain to.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The certificate chain, PEM (the server's own first).
    pub cert_pem: Vec<u8>,
    /// The private key of the first certificate, PEM.
    pub key_pem: Vec<u8>,
    /// CAs client certificates may chain to, PEM (`None`: no client certificates asked for).
    pub client_roots_pem: Option<Vec<u8>>,
    /// Whether a client without a certificate is let in (the certificate is then checked per
    /// call, as node-to-node calls need one).
    pub client_cert_optional: bool,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("TlsMaterial")
            .field("client_roots", &self.client_roots_pem.is_some())
            .field("client_cert_optional", &self.client_cert_optional)
            .finish_non_exhaustive()
    }
}

/// Builds the rustls configuration of `m`: HTTP/2 by ALPN (gRPC speaks nothing else), the key
/// checked against the certificate (a key and certificate that do not belong together are an
/// error here, not a failed handshake later).
pub fn server_config(m: &TlsMaterial) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let builder = match &m.client_roots_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| format!("client CA: not PEM: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("client CA: not a CA certificate: {e}"))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if m.client_cert_optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| format!("client CA: cannot verify with it: {e}"))?,
            )
        }
    };
    let chain = CertificateDer::pem_slice_iter(&m.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("certificate: the file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&m.key_pem)
        // Not the parser's error: for a malformed file it can quote the key's own text.
        .map_err(|_| "key: no usable private key (expected a PEM PRIVATE KEY block)".to_string())?;
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    cfg.alpn_protocols.push(b"h2".to_vec());
    Ok(cfg)
}

/// The TLS configuration in force; [`ServerTls::set`] swaps it for new connections.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// TLS with `m`, checked now.
    pub fn new(m: &TlsMaterial) -> Result<ServerTls, String> {
        Ok(ServerTls {
            current: Arc::new(RwLock::new(Arc::new(server_config(m)?))),
        })
    }

    /// Puts a configuration built by [`server_config`] in force for every handshake from now.
    pub fn set(&self, cfg: ServerConfig) {
        *self.current.write() = Arc::new(cfg);
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// The handshaken connections of `incoming`, for tonic's `serve_with_incoming_shutdown`.
    pub fn incoming(&self, incoming: Incoming) -> TlsIncoming {
        TlsIncoming {
            inner: incoming,
            tls: self.clone(),
            handshakes: JoinSet::new(),
            inner_done: false,
        }
    }
}

/// Accepted connections after their TLS handshake (see the module docs). A failed handshake
/// (a plaintext client, an untrusted certificate, a timeout) closes that connection and is
/// logged at debug level; the stream goes on.
pub struct TlsIncoming {
    inner: Incoming,
    tls: ServerTls,
    handshakes: JoinSet<io::Result<TlsStream<Conn>>>,
    inner_done: bool,
}

impl futures::Stream for TlsIncoming {
    type Item = io::Result<TlsStream<Conn>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Finished handshakes first, so a flood of new connections cannot hold them back.
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Ok(stream)))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Some(Ok(Err(e)))) => {
                    tracing::debug!(error = %e, "TLS handshake failed; connection closed");
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "a TLS handshake task ended abnormally");
                }
                Poll::Ready(None) if this.inner_done => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        // Then a handshake for each connection accepted since, a batch at a time.
        let mut accepted = 0;
        while !this.inner_done {
            if accepted == ACCEPTS_PER_POLL {
                // More may be waiting: poll again soon, after other tasks had their turn.
                cx.waker().wake_by_ref();
                break;
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(conn))) => {
                    accepted += 1;
                    let acceptor = tokio_rustls::TlsAcceptor::from(this.tls.config());
                    this.handshakes.spawn(async move {
                        match strata_clock::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await
                        {
                            Ok(r) => r,
                            Err(_) => Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("TLS handshake not completed within {HANDSHAKE_TIMEOUT:?}"),
                            )),
                        }
                    });
                }
                // Accept errors are the accept loop's (it backs off and logs them).
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.inner_done = true,
                Poll::Pending => break,
            }
        }
        if accepted > 0 {
            // The new handshakes' tasks must be able to wake this stream: poll the set once
            // more so its waker is registered (a spawned task cannot have finished yet unless
            // it did so on another worker, which this also catches).
            cx.waker().wake_by_ref();
        }
        if this.inner_done && this.handshakes.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

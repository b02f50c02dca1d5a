//! `strata serve`'s security flags (TLS, mutual TLS, tokens, the insecure-listener refusal)
//! and `strata token create`.
//!
//! The checks and the tenant model live in `strata-compute` (`service/auth.rs`); this module
//! turns flags and files into them. Secrets never come from arguments: certificates and keys
//! are files, tokens are files or the environment.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use strata_compute::reload::Trigger;
use strata_compute::server::auth::PeerCheck;
use strata_compute::server::auth::{token_hash, Authority, Right, TenantLimits};
use strata_compute::server::KvService;
use strata_compute::tls::{ServerTls, TlsMaterial};
use strata_proto::auth::ClientTls;

/// Security flags of `strata serve`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// PEM certificate (chain) to serve the client API over TLS; with --tls-key.
    #[arg(long, requires = "tls_key", env = "STRATA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", env = "STRATA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates that chain to the CAs in this PEM file (mutual TLS).
    #[arg(long, requires = "tls_cert", env = "STRATA_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Make node-to-node calls mutual TLS: this node presents --tls-cert and accepts peers
    /// whose certificate chains to the CAs in this PEM file (node-to-node calls without one
    /// are refused).
    #[arg(long, requires = "tls_cert", env = "STRATA_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Tenants: a TOML file of token hashes, their namespaces, rights and quotas (see
    /// SECURITY.md). Re-read on SIGHUP and within 5 s of a change.
    #[arg(long, env = "STRATA_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Start on a non-loopback address without TLS or without --tokens (anyone who reaches
    /// the port can then read or write, or see the traffic).
    #[arg(long)]
    pub allow_insecure: bool,
    /// Most requests of one namespace in flight on this node at once (its share of the node).
    #[arg(long, default_value_t = 256)]
    pub tenant_max_in_flight: usize,
    /// Most MiB of one namespace's writes in flight on this node at once (a larger write is
    /// admitted alone): one tenant's flood of large writes cannot fill the commit pipeline.
    #[arg(long, default_value_t = 8)]
    pub tenant_max_in_flight_mb: u64,
    /// Most connections of this node one namespace holds (a connection belongs to the
    /// namespace of its first authenticated request until it closes).
    #[arg(long, default_value_t = 1024)]
    pub tenant_max_connections: usize,
    /// How often each namespace with a `stored_bytes` quota is measured (a scan of its keys
    /// on the partitions this node serves).
    #[arg(long, default_value_t = 10)]
    pub usage_interval_secs: u64,
}

/// What the flags turn into.
pub struct Security {
    /// The TLS configuration of the listener (replaced by [`TlsReloader`] on rotation).
    pub server_tls: Option<ServerTls>,
    /// The hash of the TLS files as read for `server_tls`.
    pub tls_digest: Option<[u8; 32]>,
    /// How this node calls its peers over TLS.
    pub peer_tls: Option<ClientTls>,
    /// The CAs peers' certificates must chain to (--peer-tls-ca), PEM.
    pub peer_ca_pem: Option<Vec<u8>>,
    /// The tokens in force.
    pub authority: Option<Authority>,
    /// For the startup log line: what is on.
    pub summary: String,
}

fn read(what: &str, p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("{what}: reading {}", p.display()))
}

/// Whether `pem` holds at least one certificate (a clear error now rather than a TLS
/// failure at the first connection).
fn check_certs(what: &str, p: &Path, pem: &[u8]) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    let n = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what}: {} is not PEM", p.display()))?
        .len();
    if n == 0 {
        bail!("{what}: {} holds no certificate", p.display());
    }
    Ok(())
}

/// Whether two PEM bundles hold a certificate in common (both were checked to parse).
fn shares_a_cert(a: &[u8], b: &[u8]) -> bool {
    use rustls::pki_types::pem::PemObject;
    let ders = |pem: &[u8]| -> Vec<Vec<u8>> {
        rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .filter_map(|c| c.ok())
            .map(|c| c.as_ref().to_vec())
            .collect()
    };
    let b = ders(b);
    ders(a).iter().any(|c| b.contains(c))
}

fn check_key(p: &Path, pem: &[u8]) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    // The parser's error is not shown: for a malformed file it can quote the line it choked
    // on, which is the key's own text.
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        anyhow::anyhow!(
            "--tls-key: {} holds no usable private key (expected a PEM PRIVATE KEY block, \
             with its line breaks)",
            p.display()
        )
    })?;
    Ok(())
}

/// The TLS files of `strata serve`, read and checked (see [`SecurityArgs::tls_files`]).
struct TlsFiles {
    /// The listener's certificate, key and client CAs.
    material: TlsMaterial,
    /// How this node calls its peers.
    peer_tls: ClientTls,
    /// `--peer-tls-ca`, PEM.
    peer_ca: Option<Vec<u8>>,
    /// For the startup log line.
    summary: &'static str,
    /// The hash of the bytes read (see [`SecurityArgs::tls_digest`]): a change after this
    /// read is seen by the reloader even if it came before the reloader started.
    digest: [u8; 32],
}

/// The hash [`TlsReloader`] compares: each file's length and bytes, in flag order.
fn digest_of<'a>(files: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for text in files {
        h.update((text.len() as u64).to_le_bytes());
        h.update(text);
    }
    h.finalize().into()
}

impl SecurityArgs {
    /// Reads and checks the TLS files (`None`: no --tls-cert). Run at start and again on every
    /// reload, so a rotated file is checked exactly as the first one was.
    fn tls_files(&self) -> Result<Option<TlsFiles>> {
        let (Some(cert_p), Some(key_p)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let cert = read("--tls-cert", cert_p)?;
        check_certs("--tls-cert", cert_p, &cert)?;
        let key = read("--tls-key", key_p)?;
        check_key(key_p, &key)?;
        let client_ca = match &self.tls_client_ca {
            Some(p) => {
                let pem = read("--tls-client-ca", p)?;
                check_certs("--tls-client-ca", p, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let peer_ca = match &self.peer_tls_ca {
            Some(p) => {
                let pem = read("--peer-tls-ca", p)?;
                check_certs("--peer-tls-ca", p, &pem)?;
                Some(pem)
            }
            None => None,
        };
        if let (Some(c), Some(p)) = (&client_ca, &peer_ca) {
            // A client's certificate must never pass for a peer's (a peer's calls are not
            // charged, and its Resolve is trusted): the two CAs share nothing.
            if shares_a_cert(c, p) {
                bail!(
                    "--tls-client-ca and --peer-tls-ca share a certificate: a client's \
                     certificate would pass for a peer node's; give peers a CA of their own"
                );
            }
        }
        // The listener takes client certificates chaining to either CA: clients' (required
        // when --tls-client-ca is given) and peers' (checked per call: node-to-node calls need
        // one that chains to --peer-tls-ca).
        let mut roots = Vec::new();
        if let Some(pem) = &client_ca {
            roots.extend_from_slice(pem);
            roots.push(b'\n');
        }
        if let Some(pem) = &peer_ca {
            roots.extend_from_slice(pem);
        }
        let summary = match (&client_ca, &peer_ca) {
            (Some(_), Some(_)) => "TLS with client certificates, peer mutual TLS",
            (Some(_), None) => "TLS with client certificates",
            (None, Some(_)) => "TLS, peer mutual TLS",
            (None, None) => "TLS",
        };
        // Peers are called over TLS too (their listeners speak nothing else), verified against
        // the peer CA (else the client CA, else the system's), and shown this node's
        // certificate.
        let digest = digest_of(
            [
                Some(&cert),
                Some(&key),
                client_ca.as_ref(),
                peer_ca.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(|v| v.as_slice()),
        );
        let peer_tls = ClientTls {
            ca_pem: peer_ca.clone().or(client_ca.clone()),
            identity: Some((cert.clone(), key.clone())),
            domain: None,
        };
        Ok(Some(TlsFiles {
            material: TlsMaterial {
                cert_pem: cert,
                key_pem: key,
                client_roots_pem: (!roots.is_empty()).then_some(roots),
                client_cert_optional: client_ca.is_none(),
            },
            peer_tls,
            peer_ca,
            summary,
            digest,
        }))
    }

    /// The contents of the TLS files, hashed: what [`TlsReloader`] compares to see a change
    /// (`None` while one of them cannot be read, as in the middle of a replacement).
    fn tls_digest(&self) -> Option<[u8; 32]> {
        let texts = [
            &self.tls_cert,
            &self.tls_key,
            &self.tls_client_ca,
            &self.peer_tls_ca,
        ]
        .into_iter()
        .flatten()
        .map(std::fs::read)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
        Some(digest_of(texts.iter().map(|t| t.as_slice())))
    }

    /// Loads the files and checks the listener: a non-loopback address needs TLS and tokens,
    /// or --allow-insecure.
    pub fn load(&self, listen: SocketAddr, cluster: bool) -> Result<Security> {
        let mut on = Vec::new();
        let (server_tls, tls_digest, peer_tls, peer_ca_pem) = match self.tls_files()? {
            Some(f) => {
                on.push(f.summary);
                let server = ServerTls::new(&f.material)
                    .map_err(anyhow::Error::msg)
                    .context("--tls-cert/--tls-key: building the TLS configuration")?;
                (Some(server), Some(f.digest), Some(f.peer_tls), f.peer_ca)
            }
            None => (None, None, None, None),
        };
        let authority = match &self.tokens {
            Some(p) => {
                let a = Authority::load(
                    p,
                    TenantLimits {
                        max_in_flight: self.tenant_max_in_flight.max(1),
                        max_in_flight_bytes: self.tenant_max_in_flight_mb.max(1) << 20,
                        max_connections: self.tenant_max_connections.max(1),
                    },
                )
                .map_err(anyhow::Error::msg)
                .context("--tokens")?;
                on.push("tokens");
                Some(a)
            }
            None => None,
        };
        // In a cluster the Txn service and forwarded requests come from peers: with tenants,
        // only a peer certificate tells a peer from a tenant calling them directly.
        if cluster && authority.is_some() && self.peer_tls_ca.is_none() && !self.allow_insecure {
            bail!(
                "--tokens in a cluster needs --peer-tls-ca (with --tls-cert/--tls-key): without \
                 it, a tenant could call the node-to-node transaction service directly. Add \
                 them, or pass --allow-insecure to start anyway"
            );
        }
        let loopback = listen.ip().is_loopback();
        if !loopback && (server_tls.is_none() || authority.is_none()) && !self.allow_insecure {
            let missing = match (server_tls.is_none(), authority.is_none()) {
                (true, true) => "without TLS (--tls-cert/--tls-key) and without tokens (--tokens)",
                (true, false) => "without TLS (--tls-cert/--tls-key)",
                _ => "without tokens (--tokens)",
            };
            bail!(
                "refusing to listen on {listen}, a non-loopback address, {missing}: anyone who \
                 reaches it could read and write every key. Add them, or pass --allow-insecure \
                 to start anyway"
            );
        }
        if !loopback && (server_tls.is_none() || authority.is_none()) {
            tracing::warn!(
                "--allow-insecure: listening on {listen} without {}",
                if server_tls.is_none() && authority.is_none() {
                    "TLS or tokens"
                } else if server_tls.is_none() {
                    "TLS"
                } else {
                    "tokens"
                }
            );
        }
        let summary = if on.is_empty() {
            "plaintext, no tokens".to_string()
        } else {
            on.join(", ")
        };
        Ok(Security {
            server_tls,
            tls_digest,
            peer_tls,
            peer_ca_pem,
            authority,
            summary,
        })
    }
}

/// Re-reads the TLS files on `SIGHUP` and when they change (polled every second): a renewed
/// certificate, key or CA is put in force for new connections and new calls to peers without
/// a restart; connections open keep the certificate they were made with. Files that do not
/// load (a half-written one, a key that is not the certificate's) keep everything in force
/// as it was, and the error is logged; the next change is tried again.
pub struct TlsReloader {
    /// The flags (the files' paths).
    pub args: SecurityArgs,
    /// The listener's configuration.
    pub server: ServerTls,
    /// The check of node-to-node calls (with --peer-tls-ca).
    pub peers: Option<PeerCheck>,
    /// The service whose calls to peers present this node's certificate.
    pub kv: KvService,
    /// The hash of the files in force ([`Security::tls_digest`]).
    pub seen: Option<[u8; 32]>,
}

impl TlsReloader {
    /// Reads the files again and puts them in force, all or nothing: what was replaced.
    fn reload(&self) -> Result<(&'static str, [u8; 32])> {
        let Some(f) = self.args.tls_files()? else {
            bail!("TLS was turned off at start; it cannot be turned on without a restart");
        };
        // Check every part before replacing any: the listener's configuration (a key that is
        // not the certificate's fails here), the peer CA, the settings of calls to peers.
        let server = strata_compute::tls::server_config(&f.material)
            .map_err(anyhow::Error::msg)
            .context("--tls-cert/--tls-key")?;
        let peer_ca = match (&self.peers, &f.peer_ca) {
            (Some(_), Some(pem)) => {
                PeerCheck::new(pem)
                    .map_err(anyhow::Error::msg)
                    .context("--peer-tls-ca")?;
                Some(pem)
            }
            _ => None,
        };
        strata_proto::auth::endpoint(
            "127.0.0.1:1",
            Some(&f.peer_tls),
            std::time::Duration::from_secs(1),
        )
        .map_err(anyhow::Error::msg)
        .context("the TLS settings of calls to peers")?;
        self.server.set(server);
        if let (Some(check), Some(pem)) = (&self.peers, peer_ca) {
            check
                .replace(pem)
                .map_err(anyhow::Error::msg)
                .context("--peer-tls-ca")?;
        }
        self.kv.set_peer_tls(f.peer_tls);
        Ok((f.summary, f.digest))
    }

    /// Watches the files until `stop` turns true (see the type's docs).
    pub fn spawn(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        tokio::spawn(async move {
            let mut triggers = strata_compute::reload::Triggers::new();
            loop {
                let why = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    t = triggers.next() => t,
                };
                let why = match why {
                    Trigger::Hangup => "SIGHUP",
                    Trigger::Tick => {
                        // A file that cannot be read right now (mid-replacement) is looked
                        // at again next tick.
                        let Some(now) = self.args.tls_digest() else {
                            continue;
                        };
                        if self.seen == Some(now) {
                            continue;
                        }
                        self.seen = Some(now);
                        "a file changed"
                    }
                };
                match self.reload() {
                    Ok((what, digest)) => {
                        // What was read, which may be newer than what the tick hashed.
                        self.seen = Some(digest);
                        tracing::info!("TLS files re-read ({why}): {what} in force for new connections")
                    }
                    Err(e) => tracing::error!(
                        "TLS files not reloaded ({why}): {e:#}; the previous certificates stay in force"
                    ),
                }
            }
        });
    }
}

/// `strata token ...`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    cmd: TokenCmd,
}

#[derive(clap::Subcommand, Debug)]
enum TokenCmd {
    /// Make a new random token: prints it once on stdout and appends its SHA-256 to the
    /// tokens file (created with mode 0600). A running server picks it up within 5 s.
    Create {
        /// The tokens file (`strata serve --tokens`).
        #[arg(long)]
        tokens_file: PathBuf,
        /// The namespace the token reaches.
        #[arg(long)]
        namespace: String,
        /// Comma-separated rights: read, write, admin.
        #[arg(long, value_delimiter = ',', default_value = "read,write")]
        rights: Vec<String>,
    },
}

/// Runs `strata token`.
pub fn run_token(args: TokenArgs) -> Result<()> {
    match args.cmd {
        TokenCmd::Create {
            tokens_file,
            namespace,
            rights,
        } => {
            strata_format::namespace::check_name(&namespace)
                .map_err(anyhow::Error::msg)
                .context("--namespace")?;
            let mut names = Vec::new();
            for r in &rights {
                Right::parse(r.trim())
                    .map_err(anyhow::Error::msg)
                    .context("--rights")?;
                names.push(format!("{:?}", r.trim()));
            }
            let token = new_token();
            let entry = format!(
                "\n[[tokens]]\nsha256 = \"{}\"\nnamespace = \"{namespace}\"\nrights = [{}]\n",
                token_hash(&token),
                names.join(", ")
            );
            append_private(&tokens_file, &entry)?;
            println!("{token}");
            eprintln!(
                "token for namespace {namespace:?} ({}) added to {}; it is shown only now",
                rights.join(","),
                tokens_file.display()
            );
            Ok(())
        }
    }
}

/// 32 random bytes, hex, with a recognizable prefix (so leaked tokens are easy to scan for).
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("strata_{hex}")
}

/// Appends `text` to `path`, creating it readable by its owner only.
fn append_private(path: &Path, text: &str) -> Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("opening tokens file {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing tokens file {}", path.display()))?;
    Ok(())
}

/// Client-side credentials shared by every client subcommand (`Debug` redacts the token).
#[derive(clap::Args, Clone, Default)]
pub struct ClientAuthArgs {
    /// Bearer token (prefer STRATA_TOKEN or --token-file: arguments show in `ps`).
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (its first line).
    #[arg(long, env = "STRATA_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// PEM CAs to verify the server's certificate against (implies TLS; default for
    /// https:// targets: the system's CAs).
    #[arg(long, env = "STRATA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --tls-client-key).
    #[arg(long, requires = "tls_client_key", env = "STRATA_TLS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, requires = "tls_client_cert", env = "STRATA_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
}

impl std::fmt::Debug for ClientAuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuthArgs")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("tls_client_key", &self.tls_client_key)
            .finish()
    }
}

impl ClientAuthArgs {
    /// The token to send, if any.
    pub fn token(&self) -> Result<Option<String>> {
        if let Some(p) = &self.token_file {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--token-file: reading {}", p.display()))?;
            let t = text.lines().next().unwrap_or("").trim().to_string();
            if t.is_empty() {
                bail!("--token-file: {} is empty", p.display());
            }
            return Ok(Some(t));
        }
        Ok(self.token.clone().filter(|t| !t.trim().is_empty()))
    }

    /// The TLS settings, if any were given (an https:// target alone uses the system's CAs).
    pub fn tls(&self) -> Result<Option<ClientTls>> {
        let ca_pem = match &self.tls_ca {
            Some(p) => Some(read("--tls-ca", p)?),
            None => None,
        };
        let identity = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(c), Some(k)) => {
                Some((read("--tls-client-cert", c)?, read("--tls-client-key", k)?))
            }
            _ => None,
        };
        if ca_pem.is_none() && identity.is_none() {
            return Ok(None);
        }
        Ok(Some(ClientTls {
            ca_pem,
            identity,
            domain: None,
        }))
    }
}

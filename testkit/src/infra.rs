//! External servers the integration tests run against, each started by the test on free
//! loopback ports and killed when dropped:
//!
//! - [`S3`]: infra/s3-server (`infra/s3.sh build`), one bucket [`BUCKET`], data in a temp dir;
//! - [`Etcd`]: a one-member etcd through `infra/etcd.sh`, data in a temp dir.
//!
//! Both can be stopped and restarted on the same data and port, for tests of what the engine
//! does while a dependency is down. When a server is not installed, `start` panics (run
//! `bash infra/setup.sh`), unless `STRATA_ALLOW_SKIP=1`: then it returns `None` and the test
//! skips with a message.
//!
//! This file stands alone (std, `strata_objstore` and `tempfile` only, nothing else of this
//! crate): `objstore/tests/conformance.rs` includes it by `#[path]` to find the S3 test
//! server, so it must compile there too.
#![allow(
    dead_code,
    reason = "objstore's conformance test includes this file by path and uses part of it"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use strata_objstore::{open_store, RetryPolicy, S3Settings, Store, StoreConfig};

pub const BUCKET: &str = "strata-it";
pub const ACCESS_KEY: &str = "strata-it";
pub const SECRET_KEY: &str = "strata-it-secret";
pub const REGION: &str = "us-east-1";

fn env_is_1(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

// ---------------------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------------------

/// A running infra/s3-server, killed on drop.
pub struct S3 {
    child: Child,
    bin: PathBuf,
    endpoint: String,
    root: tempfile::TempDir,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository root: this file is compiled into this crate and into member crates' tests
/// (`objstore/tests/conformance.rs`), so walk up to the directory with `infra/`.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| d.join("infra").join("s3.sh").is_file())
        .unwrap_or(here)
        .to_path_buf()
}

/// The built `strata-s3-server`: `$STRATA_S3_SERVER_BIN`, or the release or debug build under
/// `$STRATA_INFRA_TARGET_DIR` or `target/infra`.
pub fn server_bin() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("STRATA_S3_SERVER_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "STRATA_S3_SERVER_BIN={} does not exist",
                p.display()
            ))
        };
    }
    let mut dirs = Vec::new();
    if let Ok(t) = std::env::var("STRATA_INFRA_TARGET_DIR") {
        dirs.push(PathBuf::from(t));
    }
    dirs.push(repo_root().join("target").join("infra"));
    let mut tried = Vec::new();
    for d in dirs {
        for profile in ["release", "debug"] {
            let p = d.join(profile).join("strata-s3-server");
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p.display().to_string());
        }
    }
    Err(format!(
        "strata-s3-server not built (looked at {}); run infra/s3.sh build",
        tried.join(", ")
    ))
}

/// Why a spawned S3 server is not serving.
enum SpawnError {
    /// It exited before its `listening on` line (e.g. the port is still taken).
    Exited(String),
    /// Anything else: not worth a retry.
    Fatal(String),
}

/// Spawns the server on `root` and `listen`; returns it with its `host:port` once it serves.
fn spawn_s3(bin: &Path, root: &Path, listen: &str) -> Result<(Child, String), SpawnError> {
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["--listen", listen])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .args(["--bucket", BUCKET])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| SpawnError::Fatal(format!("spawn {}: {e}", bin.display())))?;
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // stdout closed without a line: the server exited (its reason is on stderr).
            let status = child.wait();
            return Err(SpawnError::Exited(format!(
                "{} exited before serving: {status:?}",
                bin.display()
            )));
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SpawnError::Fatal(format!(
                "{} did not start within 30 s",
                bin.display()
            )));
        }
    };
    match line.strip_prefix("listening on ") {
        Some(addr) => Ok((child, addr.trim().to_string())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(SpawnError::Fatal(format!(
                "unexpected first line from the S3 server: {line:?}"
            )))
        }
    }
}

impl S3 {
    /// Starts the server; when it is not built, fails, or returns `None` (skip) with
    /// `STRATA_ALLOW_SKIP=1`.
    pub fn start() -> Option<S3> {
        let bin = match server_bin() {
            Ok(b) => b,
            Err(e) => {
                assert!(
                    env_is_1("STRATA_ALLOW_SKIP"),
                    "{e} (run `bash infra/setup.sh`; STRATA_ALLOW_SKIP=1 skips instead)"
                );
                eprintln!("SKIPPED (STRATA_ALLOW_SKIP=1): {e}");
                return None;
            }
        };
        let root = tempfile::tempdir().expect("temp dir");
        let (child, addr) = match spawn_s3(&bin, root.path(), "127.0.0.1:0") {
            Ok(r) => r,
            Err(SpawnError::Exited(e) | SpawnError::Fatal(e)) => panic!("{e}"),
        };
        Some(S3 {
            child,
            bin,
            endpoint: format!("http://{addr}"),
            root,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The directory holding the buckets (one subdirectory each).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `kill -9`: clients see connections refused until [`S3::restart`]. Idempotent.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server if it runs, then starts it again on the same data and the same port,
    /// retrying for up to 10 s while the port cannot be bound yet.
    pub fn restart(&mut self) {
        self.stop();
        let port = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no port in S3 endpoint {}", self.endpoint));
        let listen = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn_s3(&self.bin, self.root.path(), &listen) {
                Ok((child, addr)) => {
                    assert_eq!(addr, listen, "restarted S3 server on another address");
                    self.child = child;
                    return;
                }
                Err(SpawnError::Exited(e)) if Instant::now() < deadline => {
                    eprintln!("S3 server restart on {listen}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(SpawnError::Exited(e) | SpawnError::Fatal(e)) => {
                    panic!("S3 server restart on {listen}: {e}")
                }
            }
        }
    }

    /// The client environment, as `infra/s3.sh env` prints it. Empty values override stray
    /// variables of the test's own environment (the server ignores empty ones).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ENDPOINT_URL_S3", ""),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_SESSION_TOKEN", ""),
            ("AWS_REGION", REGION),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A client of `s3://BUCKET/prefix`, with the default retry policy.
    pub fn store(&self, prefix: &str) -> Arc<dyn Store> {
        let (store, _) = open_store(&StoreConfig {
            url: format!("s3://{BUCKET}/{prefix}"),
            s3: S3Settings {
                endpoint: Some(self.endpoint.clone()),
                region: Some(REGION.into()),
                access_key_id: Some(ACCESS_KEY.into()),
                secret_access_key: Some(SECRET_KEY.into()),
                session_token: None,
            },
            retry: RetryPolicy::default(),
        })
        .expect("open store");
        store
    }

    /// Object counts under `s3://BUCKET/prefix`, grouped by kind (`wal`, `sst`, `manifest`, ...).
    pub async fn census(&self, prefix: &str) -> BTreeMap<String, (usize, u64)> {
        let store = self.store(prefix);
        let mut out: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        for o in store.list("").await.expect("list bucket") {
            // Names look like `HASH-pPARTITION/KIND/ID.ext`; group by KIND.
            let kind = o.path.split('/').nth(1).unwrap_or("other").to_string();
            let e = out.entry(kind).or_default();
            e.0 += 1;
            e.1 += o.size;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------------------------

/// A one-member etcd run by `infra/etcd.sh` (state in a temp dir: `data/`, `pid`, `log`),
/// stopped on drop.
pub struct Etcd {
    /// `http://127.0.0.1:CLIENT_PORT`.
    pub endpoint: String,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn etcd_script() -> PathBuf {
    repo_root().join("infra/etcd.sh")
}

/// Whether `name` is an executable file on `PATH` (or in /usr/bin, where Debian puts etcd).
fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .any(|d| d.join(name).is_file())
}

/// Two distinct loopback ports that were free a moment ago.
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("local address").port();
    (port(&a), port(&b))
}

impl Etcd {
    /// Starts etcd on fresh data and two free ports; when etcd is not installed, fails, or
    /// returns `None` (skip) with `STRATA_ALLOW_SKIP=1`.
    pub fn start() -> Option<Etcd> {
        // Both, or infra/etcd.sh would try to apt-get them.
        if !on_path("etcd") || !on_path("etcdctl") {
            let e = "etcd or etcdctl not installed; run infra/etcd.sh install";
            assert!(
                env_is_1("STRATA_ALLOW_SKIP"),
                "{e} (run `bash infra/setup.sh`; STRATA_ALLOW_SKIP=1 skips instead)"
            );
            eprintln!("SKIPPED (STRATA_ALLOW_SKIP=1): {e}");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        // A port picked free can be taken by someone else before etcd binds it: a few tries.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (client_port, peer_port) = free_ports();
            match etcd_sh("start", dir.path(), client_port, peer_port) {
                Ok(()) => {
                    return Some(Etcd {
                        endpoint: format!("http://127.0.0.1:{client_port}"),
                        dir,
                        client_port,
                        peer_port,
                    })
                }
                Err(e) if attempt < 3 => {
                    eprintln!("etcd start failed ({e}); retrying on other ports")
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// The state directory (`data/`, `pid`, `log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What etcd logged, across restarts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// SIGTERM, and wait until it exits (SIGKILL after 10 s). Idempotent.
    pub fn stop(&mut self) {
        self.script("stop").unwrap_or_else(|e| panic!("{e}"));
    }

    /// SIGKILL, and wait until it is gone: a crash. Idempotent.
    pub fn kill9(&mut self) {
        self.script("kill9").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops etcd if it runs, then starts it again on the same data and ports; waits until it
    /// is healthy.
    pub fn restart(&mut self) {
        self.script("restart").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `ETCDCTL_API=3 etcdctl --endpoints ENDPOINT ARGS...`; returns its stdout, panics
    /// when it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint])
            .args(["--command-timeout", "10s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn script(&self, cmd: &str) -> Result<(), String> {
        etcd_sh(cmd, self.dir.path(), self.client_port, self.peer_port)
    }
}

/// The last `n` lines of etcd's log in `dir`.
fn etcd_log_tail(dir: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `infra/etcd.sh CMD DIR CLIENT_PORT PEER_PORT`; the error holds its output and the end of
/// etcd's log.
fn etcd_sh(cmd: &str, dir: &Path, client_port: u16, peer_port: u16) -> Result<(), String> {
    let script = etcd_script();
    let out = Command::new(&script)
        .arg(cmd)
        .arg(dir)
        .arg(client_port.to_string())
        .arg(peer_port.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "infra/etcd.sh {cmd} {} {client_port} {peer_port}: {}\n{}{}\netcd log (end):\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        etcd_log_tail(dir, 30)
    ))
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- etcd {}, last log lines:\n{}",
                self.endpoint,
                etcd_log_tail(self.dir.path(), 40)
            );
        }
        if let Err(e) = self.script("stop") {
            eprintln!("{e}");
        }
    }
}

//! The `strata serve` launcher: starts the real binary on a loopback port it picks, waits
//! until it serves, and kills it when dropped (tests never leave servers behind).
//!
//! The binary is the root package's `strata`, found at run time by [`bin`]: a library cannot
//! read `CARGO_BIN_EXE_strata` (Cargo sets it only while compiling that package's
//! integration tests), so the tests that start servers must be tests of the `strata` package,
//! which makes Cargo build the binary first.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};
use strata_proto::pb::kv_client::KvClient;
use tonic::transport::Channel;

/// The `strata` binary the tests run:
///
/// 1. `$NEXTEST_BIN_EXE_strata` or `$CARGO_BIN_EXE_strata`, when the test runner sets them
///    at run time (nextest does);
/// 2. else `strata` next to the test executable's `deps/` directory (`target/<profile>/`),
///    where Cargo puts the binary it built for the package's integration tests.
///
/// Panics, naming the places it looked, when neither exists.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut tried = Vec::new();
        for var in ["NEXTEST_BIN_EXE_strata", "CARGO_BIN_EXE_strata"] {
            if let Some(p) = std::env::var_os(var).map(PathBuf::from) {
                if p.is_file() {
                    return p;
                }
                tried.push(format!("${var}={}", p.display()));
            }
        }
        let exe = std::env::current_exe().expect("path of the running test executable");
        let dir = exe.parent().expect("the test executable's directory");
        let dir = if dir.ends_with("deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        let p = dir.join(format!("strata{}", std::env::consts::EXE_SUFFIX));
        if p.is_file() {
            return p;
        }
        tried.push(p.display().to_string());
        panic!(
            "the strata binary was not found (looked at {}); start servers from the strata \
             package's integration tests, which make Cargo build it",
            tried.join(", ")
        )
    })
}

/// A running `strata serve`.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Options for starting a server.
#[derive(Clone, Default)]
pub struct ServerOpts {
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Server {
    /// Starts `strata serve` on `data_dir` with a free loopback port.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, ServerOpts::default())
    }

    pub fn start_with(data_dir: &Path, opts: ServerOpts) -> Server {
        Self::try_start_with(data_dir, opts)
            .unwrap_or_else(|e| panic!("server failed to start: {e}"))
    }

    /// Starts a server; returns the log lines as the error if it exits before serving.
    pub fn try_start_with(data_dir: &Path, opts: ServerOpts) -> Result<Server, String> {
        let bin = bin();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--cache-memory-mb")
            .arg("32")
            .arg("--cache-disk-mb")
            .arg("64")
            .args(&opts.extra_args)
            .env("STRATA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("strata listening on ").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    return Ok(Server {
                        child,
                        addr,
                        data_dir: data_dir.to_path_buf(),
                        log,
                    })
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(100));
                        let lines = log.lock().unwrap().join("\n");
                        return Err(format!("server exited with {status}:\n{lines}"));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        return Err("server did not start within 60 s".into());
                    }
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> KvClient<Channel> {
        let ch = Channel::from_shared(self.url())
            .expect("server url")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect to server");
        KvClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id() as i32;
        unsafe_kill(pid, 15);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        false
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Reads one metric (an unlabelled series) from the server's Prometheus endpoint.
    pub fn metric(&self, name: &str) -> u64 {
        let body = self.metrics_text();
        body.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{body}"))
    }

    /// The whole page of the server's Prometheus endpoint (the server must run with
    /// `--metrics-listen`).
    pub fn metrics_text(&self) -> String {
        let text = self.log_text();
        let addr = text
            .split("metrics on http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no metrics address in the server log:\n{text}"))
            .to_string();
        // A scrape is retried a few times: one failed connection must not fail a test (CI once
        // saw a broken pipe here); a server that really died fails the next gRPC call anyway.
        let fetch = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        };
        let mut attempt = 0;
        let body = loop {
            attempt += 1;
            match fetch() {
                Ok(b) => break b,
                Err(e) if attempt < 5 => {
                    eprintln!("metrics scrape of {addr} failed ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("metrics scrape of {addr} failed {attempt} times: {e}"),
            }
        };
        body
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failing test shows what the server said: whether it was still running, and its
        // last log lines (a server that died explains most odd client errors).
        if std::thread::panicking() {
            let status = self.child.try_wait();
            let lines = self.log.lock().map(|l| l.clone()).unwrap_or_default();
            let tail = lines.len().saturating_sub(40);
            eprintln!(
                "--- strata server {} (status {status:?}), last log lines:\n{}",
                self.addr,
                lines[tail..].join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a CLI command to its end, bounded: the test fails (and the process is killed) if it
/// is still running after `limit`. Returns (succeeded, stdout followed by stderr). The pipes
/// are read as the command runs, so a talkative command cannot block on a full pipe.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} still running after {limit:?}");
            }
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    let text = [out, err]
        .into_iter()
        .map(|t| String::from_utf8_lossy(&t.join().unwrap_or_default()).into_owned())
        .collect::<String>();
    (status.success(), text)
}

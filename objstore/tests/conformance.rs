//! Conformance of `strata_objstore` against real S3-compatible servers.
//!
//! Two servers, so that Strata is not tuned to one server's quirks:
//! - `ours`: infra/s3-server (s3s + s3s-fs with per-key locks), disk-backed; each test starts
//!   its own on a free port with a temporary directory. Build it with `infra/s3.sh build` (or
//!   `infra/setup.sh`); `STRATA_S3_SERVER_BIN` overrides where it is looked for.
//! - `moto`: moto's server (`pip install 'moto[server]'`, see infra/moto.sh), in memory. It
//!   starts slowly (seconds), so all cases run against one instance in a single test.
//!
//! A server that is not installed fails the test (so no run passes by skipping), unless
//! `STRATA_ALLOW_SKIP=1`: then it is skipped with a message.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

// The S3 test-server launcher the root package's tests use too.
#[path = "../../testkit/src/infra.rs"]
#[expect(
    clippy::disallowed_methods,
    reason = "the launchers wait for real processes on the wall clock"
)]
mod infra;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use strata_objstore::{
    open_store, Metered, PutMode, RetryPolicy, S3Settings, Store, StoreConfig, StoreError,
};

const BUCKET: &str = "conformance";
const ACCESS_KEY: &str = "strata-test";
const SECRET_KEY: &str = "strata-test-secret";
const REGION: &str = "us-east-1";

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// A running S3-compatible server, killed on drop.
struct S3Server {
    name: &'static str,
    child: Child,
    endpoint: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint.clone()),
            region: Some(REGION.into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            session_token: None,
        }
    }

    /// A store rooted at `s3://BUCKET/prefix`, through the same `open_store` the engine uses.
    fn store(&self, prefix: &str) -> (Arc<dyn Store>, Metered) {
        open_store(&StoreConfig {
            url: format!("s3://{BUCKET}/{prefix}"),
            s3: self.settings(),
            retry: RetryPolicy::default(),
        })
        .unwrap_or_else(|e| panic!("open_store on {}: {e}", self.name))
    }

    /// A raw `object_store` client for what `Store` does not expose (If-Match, multipart).
    fn raw(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region(REGION)
            .with_endpoint(&self.endpoint)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("build raw S3 client")
    }
}

fn allow_skip() -> bool {
    std::env::var("STRATA_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// Fails, or with `STRATA_ALLOW_SKIP=1` skips (returns `None`) with a message.
fn unavailable(what: &str, why: &str) -> Option<S3Server> {
    let msg = format!("{what} unavailable: {why}");
    assert!(
        allow_skip(),
        "{msg} (run `bash infra/setup.sh`; STRATA_ALLOW_SKIP=1 skips instead)"
    );
    eprintln!("SKIPPED (STRATA_ALLOW_SKIP=1): {msg}");
    None
}

fn start_ours() -> Option<S3Server> {
    let bin = match infra::server_bin() {
        Ok(b) => b,
        Err(e) => return unavailable("infra/s3-server", &e),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(&bin)
        .arg("--root")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .args(["--bucket", BUCKET])
        // Testing the tests: e.g. `--unsafe-no-locks` must make `racing_creators` fail.
        .args(
            std::env::var("STRATA_S3_SERVER_EXTRA_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            panic!("{} did not report its address within 30 s", bin.display());
        }
    };
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"))
        .trim()
        .to_string();
    Some(S3Server {
        name: "ours",
        child,
        endpoint: format!("http://{addr}"),
        _dir: Some(dir),
    })
}

fn find_on_path(exe: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(exe))
        .find(|p| p.is_file())
}

/// One HTTP/1.1 request without a body or signature; returns the status code.
fn raw_http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {head:.200}")))
}

/// How to run moto's server: `STRATA_MOTO_SERVER` (a command), else `python3 -m moto.server`
/// when python3 can import moto (what infra/moto.sh uses), else `moto_server` on PATH.
fn moto_command() -> Option<Vec<String>> {
    if let Ok(c) = std::env::var("STRATA_MOTO_SERVER") {
        return Some(c.split_whitespace().map(String::from).collect());
    }
    let python_has_moto = Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if python_has_moto {
        return Some(vec!["python3".into(), "-m".into(), "moto.server".into()]);
    }
    find_on_path("moto_server").map(|p| vec![p.display().to_string()])
}

fn start_moto() -> Option<S3Server> {
    let Some(cmd) = moto_command() else {
        return unavailable(
            "moto",
            "python3 cannot import moto and moto_server is not on PATH; \
             install it with infra/moto.sh install",
        );
    };
    // moto takes a port, not 0: pick a free one; retry if someone grabs it meanwhile.
    for attempt in 1..=3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let deadline = strata_clock::now() + Duration::from_secs(60);
        let up = loop {
            if raw_http(addr, "GET", "/").is_ok() {
                break true;
            }
            if matches!(child.try_wait(), Ok(Some(_))) || strata_clock::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("moto did not come up on port {port} (attempt {attempt})");
            continue;
        }
        let code = raw_http(addr, "PUT", &format!("/{BUCKET}")).expect("create bucket on moto");
        assert_eq!(code, 200, "moto: creating bucket {BUCKET} answered {code}");
        return Some(S3Server {
            name: "moto",
            child,
            endpoint: format!("http://{addr}"),
            _dir: None,
        });
    }
    panic!("moto ({cmd:?}) did not start in 3 attempts")
}

// ---------------------------------------------------------------------------------------------
// Cases: each takes the server and a fresh key prefix of its own
// ---------------------------------------------------------------------------------------------

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn basic_ops(srv: &S3Server, prefix: &str) {
    let (s, meter) = srv.store(prefix);
    let before = meter.counts();

    s.put("dir/obj.bin", b("hello, world"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.get("dir/obj.bin").await.unwrap(), b("hello, world"));
    assert_eq!(s.head("dir/obj.bin").await.unwrap(), 12);
    assert_eq!(s.get_range("dir/obj.bin", 7..12).await.unwrap(), b("world"));
    assert_eq!(s.get_range("dir/obj.bin", 0..1).await.unwrap(), b("h"));

    // Overwrite replaces, and the new size shows.
    s.put("dir/obj.bin", b("bye"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.get("dir/obj.bin").await.unwrap(), b("bye"));
    assert_eq!(s.head("dir/obj.bin").await.unwrap(), 3);

    // Empty objects exist and are empty.
    s.put("dir/empty", Bytes::new(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(s.get("dir/empty").await.unwrap(), Bytes::new());
    assert_eq!(s.head("dir/empty").await.unwrap(), 0);

    let listed = s.list("dir/").await.unwrap();
    let got: Vec<(&str, u64)> = listed.iter().map(|o| (o.path.as_str(), o.size)).collect();
    assert_eq!(got, vec![("dir/empty", 0), ("dir/obj.bin", 3)]);

    s.delete("dir/obj.bin").await.unwrap();
    assert!(matches!(
        s.get("dir/obj.bin").await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    // Deleting what is not there succeeds.
    s.delete("dir/obj.bin").await.unwrap();
    let listed = s.list("dir/").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");

    // Every request was counted (one store, no retries: exact numbers).
    let c = meter.counts();
    assert_eq!(c.puts - before.puts, 3);
    assert_eq!(c.gets - before.gets, 6);
    assert_eq!(c.heads - before.heads, 3);
    assert_eq!(c.lists - before.lists, 2);
    assert_eq!(c.deletes - before.deletes, 2);
    assert_eq!(c.errors - before.errors, 1, "the one NotFound");
}

async fn large_object(srv: &S3Server, prefix: &str) {
    let (s, _) = srv.store(prefix);
    let data = pattern(8 << 20, 7);
    s.put("big/8mib", data.clone(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(s.head("big/8mib").await.unwrap(), data.len() as u64);
    let back = s.get("big/8mib").await.unwrap();
    assert!(back == data, "8 MiB object came back different");
    let r = (3 << 20) + 17..(5 << 20) + 3;
    let part = s.get_range("big/8mib", r.start..r.end).await.unwrap();
    assert!(part == data.slice(r.start as usize..r.end as usize));
    let tail = s
        .get_range("big/8mib", data.len() as u64 - 10..data.len() as u64)
        .await
        .unwrap();
    assert_eq!(tail, data.slice(data.len() - 10..));
}

async fn missing_objects(srv: &S3Server, prefix: &str) {
    let (s, _) = srv.store(prefix);
    let nf = |r: Result<_, StoreError>, what: &str| match r {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("{what} of a missing object: want NotFound, got {other:?}"),
    };
    nf(s.get("nope/x").await.map(|_| ()), "get");
    nf(s.get_range("nope/x", 0..4).await.map(|_| ()), "get_range");
    nf(s.head("nope/x").await.map(|_| ()), "head");
    s.delete("nope/x").await.unwrap();
    assert!(s.list("nope/").await.unwrap().is_empty());

    // A range that ends past the object is an error, never a silently short read.
    s.put("short", b("0123456789"), PutMode::Create)
        .await
        .unwrap();
    for range in [5..20, 20..30] {
        let t0 = strata_clock::now();
        let r = s.get_range("short", range.clone()).await;
        assert!(r.is_err(), "range {range:?} of 10 bytes returned {r:?}");
        eprintln!(
            "[{}] get_range {range:?} of a 10-byte object: {:?} after {:?}",
            srv.name,
            r.unwrap_err(),
            t0.elapsed()
        );
    }
}

async fn create_if_absent(srv: &S3Server, prefix: &str) {
    let (s, _) = srv.store(prefix);
    s.put("seg/00000001", b("first"), PutMode::Create)
        .await
        .unwrap();
    match s.put("seg/00000001", b("second"), PutMode::Create).await {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("second create: want AlreadyExists, got {other:?}"),
    }
    assert_eq!(s.get("seg/00000001").await.unwrap(), b("first"));
    // Even the same bytes again are a conflict for a request that had no ambiguous earlier
    // attempt of its own (only a retried, timed-out create reads the object back).
    match s.put("seg/00000001", b("first"), PutMode::Create).await {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("create of identical bytes: want AlreadyExists, got {other:?}"),
    }
    // Overwrite is unconditional.
    s.put("seg/00000001", b("third"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.get("seg/00000001").await.unwrap(), b("third"));
    // After a delete the name can be created again.
    s.delete("seg/00000001").await.unwrap();
    s.put("seg/00000001", b("fourth"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(s.get("seg/00000001").await.unwrap(), b("fourth"));
}

/// 32 writers (each with its own client, like separate processes) race to create one name;
/// exactly one may win, every other must see `AlreadyExists`, and the object is the winner's.
async fn racing_creators(srv: &S3Server, prefix: &str, rounds: usize) {
    const RACERS: usize = 32;
    let stores: Vec<Arc<dyn Store>> = (0..RACERS).map(|_| srv.store(prefix).0).collect();
    let t0 = strata_clock::now();
    for round in 0..rounds {
        let name = format!("race/{round:04}");
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (s, name, barrier) = (s.clone(), name.clone(), barrier.clone());
                tokio::spawn(async move {
                    let body = b(&format!("writer {i} round {round}"));
                    barrier.wait().await;
                    (i, s.put(&name, body, PutMode::Create).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            let (i, r) = t.await.unwrap();
            match r {
                Ok(()) => winners.push(i),
                Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => panic!("[{}] round {round}: writer {i} failed: {e}", srv.name),
            }
        }
        // moto is the second opinion, not the server our fencing tests stand on: on a loaded
        // 2-core machine it was seen (once in ~10 runs) to let two racing creates both
        // succeed — a race inside moto, since each body differs and only one can be stored.
        // Report that loudly without failing CI; our own server stays strict.
        if winners.len() > 1 && srv.name == "moto" && std::env::var("STRATA_STRICT_MOTO").is_err() {
            eprintln!(
                "[moto] WARNING round {round}: {} creators won the same name: {winners:?} \
                 (moto's own race; set STRATA_STRICT_MOTO=1 to fail on it)",
                winners.len()
            );
            continue;
        }
        assert_eq!(
            winners.len(),
            1,
            "[{}] round {round}: {} creators won the same name: {winners:?}",
            srv.name,
            winners.len()
        );
        let got = stores[0].get(&name).await.unwrap();
        assert_eq!(
            got,
            b(&format!("writer {} round {round}", winners[0])),
            "[{}] round {round}: the stored object is not the winner's",
            srv.name
        );
    }
    eprintln!(
        "[{}] {rounds} rounds of {RACERS} racing creators: exactly one winner each ({:.0} puts/s)",
        srv.name,
        (rounds * RACERS) as f64 / t0.elapsed().as_secs_f64()
    );
}

/// Compare-and-swap with `If-Match` (object_store's `PutMode::Update`), raced: all writers hold
/// the same ETag, exactly one may replace the object.
async fn racing_updaters(srv: &S3Server, prefix: &str, rounds: usize) {
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload, UpdateVersion};
    const RACERS: usize = 32;
    let clients: Vec<Arc<object_store::aws::AmazonS3>> =
        (0..RACERS).map(|_| Arc::new(srv.raw())).collect();
    let loc = Path::from(format!("{prefix}/cas/cell"));
    clients[0]
        .put(&loc, PutPayload::from_static(b"initial"))
        .await
        .unwrap();
    // An update of a missing object fails too.
    let missing = Path::from(format!("{prefix}/cas/missing"));
    let r = clients[0]
        .put_opts(
            &missing,
            PutPayload::from_static(b"x"),
            PutOptions::from(object_store::PutMode::Update(UpdateVersion {
                e_tag: Some("\"0123456789abcdef0123456789abcdef\"".into()),
                version: None,
            })),
        )
        .await;
    assert!(
        matches!(
            r,
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. })
        ),
        "[{}] If-Match on a missing object: {r:?}",
        srv.name
    );
    for round in 0..rounds {
        let meta = clients[0].head(&loc).await.unwrap();
        let version = UpdateVersion {
            e_tag: meta.e_tag.clone(),
            version: None,
        };
        assert!(version.e_tag.is_some(), "[{}] HEAD gave no ETag", srv.name);
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (c, loc, version, barrier) =
                    (c.clone(), loc.clone(), version.clone(), barrier.clone());
                tokio::spawn(async move {
                    let body = PutPayload::from(format!("cas writer {i} round {round}"));
                    barrier.wait().await;
                    let opts = PutOptions::from(object_store::PutMode::Update(version));
                    (i, c.put_opts(&loc, body, opts).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            let (i, r) = t.await.unwrap();
            match r {
                Ok(_) => winners.push(i),
                Err(object_store::Error::Precondition { .. }) => {}
                // S3 may answer a racing conditional write with 409 ConditionalRequestConflict.
                Err(e) if e.to_string().contains("409") => {}
                Err(e) => panic!("[{}] CAS round {round}: writer {i}: {e}", srv.name),
            }
        }
        // Same policy as for racing creates: moto's own races are reported, not fatal.
        if winners.len() > 1 && srv.name == "moto" && std::env::var("STRATA_STRICT_MOTO").is_err() {
            eprintln!(
                "[moto] WARNING CAS round {round}: winners {winners:?} \
                 (moto's own race; set STRATA_STRICT_MOTO=1 to fail on it)"
            );
            continue;
        }
        assert_eq!(
            winners.len(),
            1,
            "[{}] CAS round {round}: winners {winners:?}",
            srv.name
        );
        let got = clients[0].get(&loc).await.unwrap().bytes().await.unwrap();
        assert_eq!(got, b(&format!("cas writer {} round {round}", winners[0])));
    }
}

/// Listing: byte order (not file-system order), prefix filtering, pagination past 1,000 keys,
/// and isolation between store prefixes that share leading characters.
async fn listing(srv: &S3Server, prefix: &str) {
    let (s, _) = srv.store(prefix);
    // Names whose byte order differs from a directory walk's: '-' < '.' < '/' < '0' < 'A' < '_'.
    let names = [
        "ord/a/c",
        "ord/a-b",
        "ord/a.d",
        "ord/a0",
        "ord/B",
        "ord/_u",
        "ord/z",
        "ord/a/b/c",
        "ord/ab",
        "ord/a/b0",
    ];
    for n in names.iter().rev() {
        s.put(n, b(n), PutMode::Create).await.unwrap();
    }
    let mut want: Vec<&str> = names.to_vec();
    want.sort();
    let got = s.list("ord/").await.unwrap();
    assert_eq!(
        got.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        want,
        "[{}] list order",
        srv.name
    );
    // A prefix that is not a whole path segment.
    let got = s.list("ord/a").await.unwrap();
    let want_a: Vec<&str> = want
        .iter()
        .copied()
        .filter(|n| n.starts_with("ord/a"))
        .collect();
    assert_eq!(
        got.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        want_a
    );
    let got = s.list("ord/a/b").await.unwrap();
    assert_eq!(
        got.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        vec!["ord/a/b/c", "ord/a/b0"]
    );
    assert!(s.list("ord/q").await.unwrap().is_empty());

    // More than one page (S3 pages at 1,000 keys).
    const N: usize = 1100;
    let t0 = strata_clock::now();
    futures::stream::iter(0..N)
        .map(|i| {
            let s = s.clone();
            async move {
                s.put(&format!("many/{i:05}"), b(&i.to_string()), PutMode::Create)
                    .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let put_time = t0.elapsed();
    let t1 = strata_clock::now();
    let got = s.list("many/").await.unwrap();
    let list_time = t1.elapsed();
    assert_eq!(got.len(), N, "[{}] listing past one page", srv.name);
    for (i, o) in got.iter().enumerate() {
        assert_eq!(o.path, format!("many/{i:05}"));
        assert_eq!(o.size, i.to_string().len() as u64);
    }
    eprintln!(
        "[{}] {N} puts (32 at a time) in {put_time:?}, listed in {list_time:?}",
        srv.name
    );

    // Stores whose prefixes share leading characters do not see each other's objects.
    let (p1, _) = srv.store(&format!("{prefix}-iso/p"));
    let (p2, _) = srv.store(&format!("{prefix}-iso/p2"));
    p1.put("x/1", b("p"), PutMode::Create).await.unwrap();
    p2.put("x/1", b("p2"), PutMode::Create).await.unwrap();
    let l1 = p1.list("").await.unwrap();
    let l2 = p2.list("x/").await.unwrap();
    assert_eq!(
        l1.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        vec!["x/1"]
    );
    assert_eq!(
        l2.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        vec!["x/1"]
    );
    assert_eq!(p1.get("x/1").await.unwrap(), b("p"));
    assert_eq!(p2.get("x/1").await.unwrap(), b("p2"));
}

/// Multipart upload through object_store (SSTs may be written this way): parts of 5 MiB + a
/// tail, read back whole and by range.
async fn multipart(srv: &S3Server, prefix: &str) {
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, WriteMultipart};
    let raw = srv.raw();
    let loc = Path::from(format!("{prefix}/mp/object"));
    let data = pattern((5 << 20) * 2 + 12345, 11);
    let mut w =
        WriteMultipart::new_with_chunk_size(raw.put_multipart(&loc).await.unwrap(), 5 << 20);
    w.write(&data);
    w.finish().await.unwrap();
    let (s, _) = srv.store(prefix);
    assert_eq!(s.head("mp/object").await.unwrap(), data.len() as u64);
    assert!(s.get("mp/object").await.unwrap() == data);
    let r = (5 << 20) - 100..(5 << 20) + 100;
    assert_eq!(
        s.get_range("mp/object", r.start as u64..r.end as u64)
            .await
            .unwrap(),
        data.slice(r)
    );

    // The same through `Store::put_parts` (how compaction writes large outputs): nothing is
    // visible before completion, the object is whole after; an aborted upload leaves nothing.
    let mut u = strata_objstore::start_upload(&s, "mp/streamed")
        .await
        .unwrap();
    for part in [data.slice(..5 << 20), data.slice(5 << 20..)] {
        u.put_part(part).await.unwrap();
    }
    assert!(matches!(
        s.get("mp/streamed").await,
        Err(StoreError::NotFound(_))
    ));
    u.complete().await.unwrap();
    assert!(s.get("mp/streamed").await.unwrap() == data);
    let mut u = strata_objstore::start_upload(&s, "mp/aborted")
        .await
        .unwrap();
    u.put_part(data.slice(..5 << 20)).await.unwrap();
    u.abort().await.unwrap();
    assert!(matches!(
        s.get("mp/aborted").await,
        Err(StoreError::NotFound(_))
    ));
}

/// Sequential latency of small requests, printed (never asserted: machines differ).
async fn latency(srv: &S3Server, prefix: &str, n: usize) {
    let (s, _) = srv.store(prefix);
    let data = pattern(4096, 3);
    let mut put_t = Vec::with_capacity(n);
    let mut get_t = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("lat/{i:05}");
        let t0 = strata_clock::now();
        s.put(&name, data.clone(), PutMode::Create).await.unwrap();
        put_t.push(t0.elapsed());
        let t0 = strata_clock::now();
        s.get_range(&name, 1000..2000).await.unwrap();
        get_t.push(t0.elapsed());
    }
    put_t.sort();
    get_t.sort();
    let q = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    eprintln!(
        "[{}] {n} sequential 4 KiB creates: p50 {:?} p99 {:?}; 1 KiB ranged GETs: p50 {:?} p99 {:?}",
        srv.name,
        q(&put_t, 0.5),
        q(&put_t, 0.99),
        q(&get_t, 0.5),
        q(&get_t, 0.99)
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Against infra/s3-server: one server per test (it starts in milliseconds).
mod ours {
    use super::*;

    macro_rules! case {
        ($name:ident $(, $arg:expr)?) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(srv) = start_ours() else { return };
                super::$name(&srv, "t" $(, $arg)?).await;
            }
        };
    }

    case!(basic_ops);
    case!(large_object);
    case!(missing_objects);
    case!(create_if_absent);
    case!(racing_creators, 100);
    case!(racing_updaters, 50);
    case!(listing);
    case!(multipart);
    case!(latency, 200);
}

/// moto answers reads that carry no `Authorization` header with 403, and checks no signature.
const MOTO_ANY_AUTH: &str = "Authorization: AWS4-HMAC-SHA256 Credential=strata-test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";

/// Storage classes (moto only: the disk-backed test server knows only STANDARD and
/// REDUCED_REDUNDANCY): `put_class` stores the object in the class asked, seen by a plain
/// HEAD; data reads back unchanged.
async fn storage_class(srv: &S3Server, prefix: &str) {
    let (s, _) = srv.store(prefix);
    s.put_class("cold.sst", b("cold bytes"), "STANDARD_IA")
        .await
        .unwrap();
    s.put("hot.sst", b("hot bytes"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.get("cold.sst").await.unwrap(), b("cold bytes"));
    let addr: SocketAddr = srv
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("endpoint address");
    let class = |key: &str| {
        let mut t = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            t,
            "HEAD /{BUCKET}/{prefix}/{key} HTTP/1.1\r\nHost: {addr}\r\n{MOTO_ANY_AUTH}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut head = String::new();
        let _ = t.read_to_string(&mut head);
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-amz-storage-class")
                .then(|| v.trim().to_string())
        })
    };
    assert_eq!(class("cold.sst").as_deref(), Some("STANDARD_IA"));
    assert_ne!(class("hot.sst").as_deref(), Some("STANDARD_IA"));
}

/// Bucket lifecycle rules through `strata_objstore::lifecycle` (aws-sdk-s3). moto only: the
/// disk-backed test server (s3s + s3s-fs) does not implement Put/GetBucketLifecycleConfiguration
/// (s3s answers NotImplemented). The cold tier is another bucket, so rules go in two
/// configurations; foreign rules in both must survive, and re-applying must replace ours.
async fn lifecycle(srv: &S3Server, prefix: &str) {
    use aws_sdk_s3::types::{
        ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    };
    use strata_objstore::lifecycle::{apply, s3_client, show, RuleSummary};
    use strata_objstore::{LifecyclePlan, TierTransition};

    let cold = format!("{BUCKET}-{prefix}-cold");
    let addr: SocketAddr = srv
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("endpoint address");
    let code = raw_http(addr, "PUT", &format!("/{cold}")).expect("create the cold bucket");
    assert_eq!(
        code, 200,
        "[{}] creating bucket {cold} answered {code}",
        srv.name
    );
    let s3 = srv.settings();
    let store_url = format!("s3://{BUCKET}/{prefix}");
    let tier_url = format!("s3://{cold}/{prefix}-tier");
    let mark = format!("strata:{BUCKET}/{prefix}:");

    // Foreign rules first: one in each bucket, and one of another Strata store that shares
    // the bucket. The one in the cold bucket expires objects inside the tier (a warning).
    let client = s3_client(&s3).expect("client");
    let rule = |id: &str, pfx: &str, days: i32| {
        LifecycleRule::builder()
            .id(id)
            .filter(LifecycleRuleFilter::builder().prefix(pfx).build())
            .status(ExpirationStatus::Enabled)
            .expiration(LifecycleExpiration::builder().days(days).build())
            .build()
            .expect("rule")
    };
    let other_store = format!("strata:{BUCKET}/{prefix}-other:abort-multipart");
    for (bucket, rules) in [
        (
            BUCKET.to_string(),
            vec![
                rule("foreign-logs", "logs/", 7),
                LifecycleRule::builder()
                    .id(&other_store)
                    .filter(
                        LifecycleRuleFilter::builder()
                            .prefix(format!("{prefix}-other/"))
                            .build(),
                    )
                    .status(ExpirationStatus::Enabled)
                    .abort_incomplete_multipart_upload(
                        aws_sdk_s3::types::AbortIncompleteMultipartUpload::builder()
                            .days_after_initiation(9)
                            .build(),
                    )
                    .build()
                    .expect("rule"),
            ],
        ),
        (
            cold.clone(),
            vec![rule(
                "foreign-scratch",
                &format!("{prefix}-tier/scratch/"),
                3,
            )],
        ),
    ] {
        client
            .put_bucket_lifecycle_configuration()
            .bucket(&bucket)
            .lifecycle_configuration(
                aws_sdk_s3::types::BucketLifecycleConfiguration::builder()
                    .set_rules(Some(rules))
                    .build()
                    .expect("config"),
            )
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "[{}] put foreign rules on {bucket}: {}",
                    srv.name,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
    }

    let plan = |abort: i32, days: i32, class: &str| LifecyclePlan {
        store_url: store_url.clone(),
        abort_multipart_days: Some(abort),
        tier: Some(TierTransition {
            url: tier_url.clone(),
            after_days: days,
            storage_class: class.into(),
        }),
    };
    let find = |rules: &[RuleSummary], id: &str| -> RuleSummary {
        let found: Vec<&RuleSummary> = rules
            .iter()
            .filter(|r| r.id.as_deref() == Some(id))
            .collect();
        assert_eq!(found.len(), 1, "[{}] rule {id} in {rules:#?}", srv.name);
        found[0].clone()
    };
    // Checks both buckets after an apply of (abort, days, class).
    let check = |abort: i32, days: i32, class: &'static str| {
        let (s3, store_url, tier_url, mark, other_store) = (
            s3.clone(),
            store_url.clone(),
            tier_url.clone(),
            mark.clone(),
            other_store.clone(),
        );
        async move {
            let hot = show(&s3, &store_url)
                .await
                .expect("show the store's bucket");
            assert_eq!(hot.len(), 3, "[{}] store bucket rules: {hot:#?}", srv.name);
            let logs = find(&hot, "foreign-logs");
            assert_eq!(
                (logs.prefix.as_deref(), logs.expiration_days, logs.strata),
                (Some("logs/"), Some(7), false)
            );
            let other = find(&hot, &other_store);
            assert_eq!(other.abort_multipart_days, Some(9));
            assert!(other.strata);
            let ab = find(&hot, &format!("{mark}abort-multipart"));
            assert_eq!(ab.prefix, Some(format!("{prefix}/")));
            assert_eq!(ab.abort_multipart_days, Some(abort));
            assert_eq!((ab.expiration_days, ab.strata), (None, true));
            assert_eq!(ab.status, "Enabled");

            let cold_rules = show(&s3, &tier_url).await.expect("show the tier's bucket");
            assert_eq!(
                cold_rules.len(),
                3,
                "[{}] tier bucket rules: {cold_rules:#?}",
                srv.name
            );
            let scratch = find(&cold_rules, "foreign-scratch");
            assert_eq!(scratch.expiration_days, Some(3));
            let tr = find(&cold_rules, &format!("{mark}tier-transition"));
            assert_eq!(tr.prefix, Some(format!("{prefix}-tier/")));
            assert_eq!(tr.transitions.len(), 1);
            assert_eq!(tr.transitions[0].days, Some(days));
            assert_eq!(tr.transitions[0].storage_class, class);
            assert_eq!((tr.expiration_days, tr.abort_multipart_days), (None, None));
            let tab = find(&cold_rules, &format!("{mark}tier-abort-multipart"));
            assert_eq!(tab.prefix, Some(format!("{prefix}-tier/")));
            assert_eq!(tab.abort_multipart_days, Some(abort));
        }
    };

    let applied = apply(&s3, &plan(2, 30, "STANDARD_IA"))
        .await
        .unwrap_or_else(|e| panic!("[{}] apply: {e:#}", srv.name));
    assert_eq!(applied.buckets.len(), 2);
    assert_eq!(applied.buckets[0].bucket, BUCKET);
    assert_eq!(applied.buckets[0].kept, 2);
    assert!(applied.buckets[0].removed.is_empty());
    assert_eq!(applied.buckets[1].bucket, cold);
    assert_eq!(applied.buckets[1].installed.len(), 2);
    // The foreign expiration inside the tier is reported (and kept).
    assert_eq!(applied.warnings.len(), 1, "{:?}", applied.warnings);
    assert!(applied.warnings[0].contains("foreign-scratch"));
    check(2, 30, "STANDARD_IA").await;

    // Re-applying with other days and class replaces ours, never duplicates them.
    let applied = apply(&s3, &plan(5, 1, "GLACIER_IR"))
        .await
        .expect("re-apply");
    assert_eq!(applied.buckets[0].removed.len(), 1);
    assert_eq!(applied.buckets[1].removed.len(), 2);
    check(5, 1, "GLACIER_IR").await;

    // A refused plan sends nothing: the rules stay as they were.
    let e = apply(&s3, &plan(5, 10, "STANDARD_IA")).await.unwrap_err();
    assert!(format!("{e:#}").contains("30 days"), "{e:#}");
    check(5, 1, "GLACIER_IR").await;

    // A plan without rules removes ours from the store's bucket, and only ours.
    let applied = apply(
        &s3,
        &LifecyclePlan {
            store_url: store_url.clone(),
            abort_multipart_days: None,
            tier: None,
        },
    )
    .await
    .expect("apply an empty plan");
    assert_eq!(applied.buckets.len(), 1);
    let hot = show(&s3, &store_url).await.expect("show");
    let mut ids: Vec<&str> = hot.iter().filter_map(|r| r.id.as_deref()).collect();
    ids.sort();
    assert_eq!(ids, ["foreign-logs", other_store.as_str()]);

    // A store over a whole bucket: an empty-prefix filter. A bucket without a configuration
    // shows no rules, and removing the last rule deletes the configuration.
    let whole = format!("{BUCKET}-{prefix}-whole");
    let code = raw_http(addr, "PUT", &format!("/{whole}")).expect("create the bucket");
    assert_eq!(
        code, 200,
        "[{}] creating bucket {whole} answered {code}",
        srv.name
    );
    let whole_url = format!("s3://{whole}");
    assert!(show(&s3, &whole_url).await.expect("show").is_empty());
    let whole_plan = |abort| LifecyclePlan {
        store_url: whole_url.clone(),
        abort_multipart_days: abort,
        tier: None,
    };
    apply(&s3, &whole_plan(Some(1))).await.expect("apply");
    let rules = show(&s3, &whole_url).await.expect("show");
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert_eq!(
        rules[0].id.as_deref(),
        Some(format!("strata:{whole}/:abort-multipart").as_str())
    );
    assert_eq!(rules[0].prefix.as_deref(), Some(""), "{rules:#?}");
    assert_eq!(rules[0].abort_multipart_days, Some(1));
    apply(&s3, &whole_plan(None))
        .await
        .expect("apply an empty plan");
    assert!(show(&s3, &whole_url).await.expect("show").is_empty());
}

/// The moto run of one case, by name.
async fn moto_case(name: &str, s: &S3Server) {
    match name {
        "basic_ops" => basic_ops(s, "basic").await,
        "large_object" => large_object(s, "large").await,
        "missing_objects" => missing_objects(s, "missing").await,
        "create_if_absent" => create_if_absent(s, "create").await,
        // moto serves a few hundred requests/s under concurrency: fewer rounds.
        "racing_creators" => racing_creators(s, "race", 10).await,
        "racing_updaters" => racing_updaters(s, "cas", 5).await,
        "listing" => listing(s, "list").await,
        "multipart" => multipart(s, "mp").await,
        "latency" => latency(s, "lat", 50).await,
        "storage_class" => storage_class(s, "class").await,
        "lifecycle" => lifecycle(s, "lc").await,
        other => panic!("no case {other}"),
    }
}

/// Against moto: one server for all cases (it takes seconds to start); every case runs, and
/// the test fails at the end naming each case that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_conformance() {
    let Some(srv) = start_moto() else { return };
    let srv = Arc::new(srv);
    let cases = [
        "basic_ops",
        "large_object",
        "missing_objects",
        "create_if_absent",
        "racing_creators",
        "racing_updaters",
        "listing",
        "multipart",
        "latency",
        "storage_class",
        "lifecycle",
    ];
    let mut failed = Vec::new();
    for name in cases {
        let t0 = strata_clock::now();
        let srv = srv.clone();
        // A panicking case must not stop the others: run it as a task and look at the result.
        match tokio::spawn(async move { moto_case(name, &srv).await }).await {
            Ok(()) => eprintln!("[moto] {name}: ok in {:?}", t0.elapsed()),
            Err(e) => {
                eprintln!("[moto] {name}: FAILED: {e}");
                failed.push(name);
            }
        }
    }
    assert!(failed.is_empty(), "moto: failed cases: {failed:?}");
}

//! `strata-s3-server`: a small, disk-backed, S3-compatible server for Strata's tests, benchmarks
//! and local clusters.
//!
//! It is `s3s` (protocol, SigV4 auth) over `s3s-fs` (objects as files under a root directory),
//! plus two things s3s-fs lacks on its own:
//!
//! - **Per-key locking.** s3s-fs checks `If-None-Match: *` / `If-Match` and then writes a temp
//!   file and renames it into place. Alone that is a check-then-act race: many concurrent
//!   creators of one key all "win". Here every mutating request holds an exclusive lock on its
//!   key for the whole request (condition check, body upload, rename, metadata), and GET/HEAD
//!   hold it shared, so conditional PUTs are linearizable per key and readers never see an
//!   object's data without its metadata.
//! - **`TCP_NODELAY`** on accepted sockets. Without it, small responses sit in Nagle's buffer
//!   until the client's delayed ACK fires, and a 4 KiB GET takes ~40 ms instead of ~0.2 ms.
//!
//! Usage:
//!
//! ```text
//! strata-s3-server --root DIR [--listen 127.0.0.1:9000] [--access-key K --secret-key S]
//!                  [--bucket NAME]... [--unsafe-no-locks]
//! ```
//!
//! `--unsafe-no-locks` serves plain s3s-fs, races included: only for checking that a test
//! detects them.
//!
//! Prints `listening on HOST:PORT` on stdout once it accepts connections (`--listen
//! 127.0.0.1:0` picks a free port; read it from that line). Exits on SIGTERM or SIGINT.
//! Not durable against power loss (no fsync); a killed server loses nothing it acknowledged.

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use s3s::dto::*;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result, S3};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

const USAGE: &str = "usage: strata-s3-server --root DIR [--listen HOST:PORT] \
[--access-key KEY --secret-key SECRET] [--bucket NAME]...";

/// Lock stripes. Two keys that hash to the same stripe serialize against each other, which
/// costs a little concurrency and nothing in correctness.
const STRIPES: usize = 4096;

struct Options {
    root: PathBuf,
    listen: String,
    access_key: Option<String>,
    secret_key: Option<String>,
    buckets: Vec<String>,
    /// Testing aid: serve without the per-key locks (plain s3s-fs), to check that a
    /// conformance test really detects the check-then-rename race.
    no_locks: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut root = None;
    let mut listen = "127.0.0.1:9000".to_string();
    let mut access_key = None;
    let mut secret_key = None;
    let mut buckets = Vec::new();
    let mut no_locks = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--unsafe-no-locks" {
            no_locks = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--root" => root = Some(PathBuf::from(value()?)),
            "--listen" => listen = value()?,
            "--access-key" => access_key = Some(value()?),
            "--secret-key" => secret_key = Some(value()?),
            "--bucket" => buckets.push(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let root = root.ok_or("--root DIR is required")?;
    if access_key.is_some() != secret_key.is_some() {
        return Err("--access-key and --secret-key go together".into());
    }
    for b in &buckets {
        let valid = (3..=63).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        if !valid {
            return Err(format!("invalid bucket name {b:?}"));
        }
    }
    Ok(Options {
        root,
        listen,
        access_key,
        secret_key,
        buckets,
        no_locks,
    })
}

/// Striped reader-writer locks over `(bucket, key)`.
struct KeyLocks {
    stripes: Vec<Arc<RwLock<()>>>,
    enabled: bool,
}

/// Guards held for the duration of one request.
#[allow(dead_code)] // held for their Drop
enum Held {
    Read(OwnedRwLockReadGuard<()>),
    Write(OwnedRwLockWriteGuard<()>),
}

impl KeyLocks {
    fn new(enabled: bool) -> Self {
        KeyLocks {
            stripes: (0..STRIPES).map(|_| Arc::new(RwLock::new(()))).collect(),
            enabled,
        }
    }

    fn stripe(bucket: &str, key: &str) -> usize {
        let mut h = DefaultHasher::new();
        bucket.hash(&mut h);
        key.hash(&mut h);
        (h.finish() % STRIPES as u64) as usize
    }

    /// Locks every `(bucket, key, exclusive)` at once. Stripes are taken in ascending order
    /// (a stripe wanted both ways is taken exclusively), so multi-key requests cannot deadlock.
    async fn lock(&self, wanted: &[(&str, &str, bool)]) -> Vec<Held> {
        if !self.enabled {
            return Vec::new();
        }
        let mut idx: Vec<(usize, bool)> = wanted
            .iter()
            .map(|(b, k, x)| (Self::stripe(b, k), *x))
            .collect();
        idx.sort_unstable();
        let mut merged: Vec<(usize, bool)> = Vec::with_capacity(idx.len());
        for (i, x) in idx {
            match merged.last_mut() {
                Some((j, y)) if *j == i => *y |= x,
                _ => merged.push((i, x)),
            }
        }
        let mut held = Vec::with_capacity(merged.len());
        for (i, exclusive) in merged {
            let l = self.stripes[i].clone();
            held.push(if exclusive {
                Held::Write(l.write_owned().await)
            } else {
                Held::Read(l.read_owned().await)
            });
        }
        held
    }
}

/// s3s-fs with per-key locks around every request that reads or changes one object.
struct Locked {
    fs: s3s_fs::FileSystem,
    locks: KeyLocks,
}

fn copy_source(src: &CopySource) -> Option<(&str, &str)> {
    match src {
        CopySource::Bucket { bucket, key, .. } => Some((bucket, key)),
        _ => None,
    }
}

#[async_trait]
impl S3 for Locked {
    // Requests that need no lock: bucket operations, listings, parts of multipart uploads.
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        logged("list_objects_v2", self.fs.list_objects_v2(req).await)
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        logged(
            "create_multipart_upload",
            self.fs.create_multipart_upload(req).await,
        )
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        logged("upload_part", self.fs.upload_part(req).await)
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        logged("list_parts", self.fs.list_parts(req).await)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        logged(
            "abort_multipart_upload",
            self.fs.abort_multipart_upload(req).await,
        )
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let b = req.input.bucket.clone();
        let k = req.input.key.clone();
        let _g = self.locks.lock(&[(&b, &k, true)]).await;
        logged("put_object", self.fs.put_object(req).await)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let b = req.input.bucket.clone();
        let k = req.input.key.clone();
        let _g = self.locks.lock(&[(&b, &k, true)]).await;
        logged(
            "complete_multipart_upload",
            self.fs.complete_multipart_upload(req).await,
        )
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let b = req.input.bucket.clone();
        let k = req.input.key.clone();
        let src = copy_source(&req.input.copy_source).map(|(b, k)| (b.to_string(), k.to_string()));
        let mut want = vec![(b.as_str(), k.as_str(), true)];
        if let Some((sb, sk)) = &src {
            want.push((sb.as_str(), sk.as_str(), false));
        }
        let _g = self.locks.lock(&want).await;
        logged("copy_object", self.fs.copy_object(req).await)
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let src = copy_source(&req.input.copy_source).map(|(b, k)| (b.to_string(), k.to_string()));
        let _g = match &src {
            Some((sb, sk)) => self.locks.lock(&[(sb.as_str(), sk.as_str(), false)]).await,
            None => Vec::new(),
        };
        logged("upload_part_copy", self.fs.upload_part_copy(req).await)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let b = req.input.bucket.clone();
        let k = req.input.key.clone();
        let _g = self.locks.lock(&[(&b, &k, true)]).await;
        logged("delete_object", self.fs.delete_object(req).await)
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let b = req.input.bucket.clone();
        let keys: Vec<String> = req
            .input
            .delete
            .objects
            .iter()
            .map(|o| o.key.clone())
            .collect();
        let want: Vec<(&str, &str, bool)> = keys
            .iter()
            .map(|k| (b.as_str(), k.as_str(), true))
            .collect();
        let _g = self.locks.lock(&want).await;
        logged("delete_objects", self.fs.delete_objects(req).await)
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        // Held until the file is open and the headers are built; the body then streams from
        // the open file, which a later rename does not disturb.
        let b = req.input.bucket.clone();
        let k = req.input.key.clone();
        let _g = self.locks.lock(&[(&b, &k, false)]).await;
        logged("get_object", self.fs.get_object(req).await)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let b = req.input.bucket.clone();
        let k = req.input.key.clone();
        let _g = self.locks.lock(&[(&b, &k, false)]).await;
        logged("head_object", self.fs.head_object(req).await)
    }
}

/// Passes `r` through, writing the cause of an internal error (a failed file operation: no
/// space, no file descriptors, no thread for the blocking pool) to stderr first. s3s answers
/// such a request `500 InternalError` with no detail; a test that sees one then shows why in
/// the server's output, which it inherits.
fn logged<T>(op: &str, r: S3Result<T>) -> S3Result<T> {
    if let Err(e) = &r {
        if *e.code() == S3ErrorCode::InternalError {
            let mut cause = String::new();
            let mut src = e.source().map(|s| s as &(dyn std::error::Error + 'static));
            while let Some(s) = src {
                cause.push_str(": ");
                cause.push_str(&s.to_string());
                src = s.source();
            }
            log(&format!(
                "{op} failed with InternalError{}{cause}",
                e.message().map(|m| format!(" ({m})")).unwrap_or_default()
            ));
        }
    }
    r
}

/// Writes a line to stderr, ignoring failures (a closed pipe must not kill the server).
fn log(msg: &str) {
    let _ = writeln!(std::io::stderr(), "strata-s3-server: {msg}");
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("strata-s3-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(run(opts));
    // Don't wait for idle keep-alive connections or stray blocking file operations.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&e);
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: Options) -> Result<(), String> {
    std::fs::create_dir_all(&opts.root)
        .map_err(|e| format!("create root {}: {e}", opts.root.display()))?;
    for b in &opts.buckets {
        let dir = opts.root.join(b);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create bucket {b}: {e}"))?;
    }
    if opts.no_locks {
        log("WARNING: --unsafe-no-locks: conditional PUTs race under concurrency");
    }
    let fs = s3s_fs::FileSystem::new(&opts.root)
        .map_err(|e| format!("open root {}: {e:?}", opts.root.display()))?;
    let service = {
        let mut b = s3s::service::S3ServiceBuilder::new(Locked {
            fs,
            locks: KeyLocks::new(!opts.no_locks),
        });
        if let (Some(ak), Some(sk)) = (opts.access_key, opts.secret_key) {
            b.set_auth(s3s::auth::SimpleAuth::from_single(ak, sk));
        }
        b.build()
    };

    // Handlers first: a SIGTERM sent right after the `listening` line must be a clean exit.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("install SIGTERM handler: {e}"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("install SIGINT handler: {e}"))?;

    let listener = TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", opts.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
    }

    loop {
        let (socket, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    log(&format!("accept: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = socket.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
    // Every acknowledged request has already reached the file system; in-flight ones are
    // simply abandoned, as a crashed S3 node would abandon them.
    Ok(())
}

//! A local directory as an object store, with the durability of a real one.
//!
//! `object_store::local::LocalFileSystem` renames a temp file into place without fsync, so
//! an acknowledged write could vanish in a power cut. Here a put is: write a staging file,
//! fsync it, link (create-if-absent) or rename (overwrite) it into place, fsync the directory.
//! Only then does `put` return.
//!
//! Small deleted objects are recycled (as RocksDB recycles WAL files): `delete` renames the
//! file into the staging directory instead of unlinking it, and a later create-if-absent
//! writes over it and links it into place. A WAL segment per group commit would otherwise
//! allocate and free an inode each time; on ext4 without a journal, inode allocation scans
//! past recently freed inodes, and that was ~23% of a node's CPU under 64 writers. Reads
//! check after reading that the file they read is still the object's (see `read_checked`),
//! so a read racing a delete and a reuse answers "not found", never another object's bytes.

use crate::{validate_path, ObjectInfo, PutMode, Store, StoreError, StoreResult, Upload};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const STAGING_DIR: &str = ".staging";

/// Deleted files kept for reuse at most (per store): a WAL GC pass deletes thousands of
/// segments at once, and a pool smaller than that still frees (and later allocates) most of
/// their inodes.
const MAX_RECYCLED: usize = 16_384;
/// Bytes the kept files may hold in all (their blocks stay allocated until reused).
const MAX_RECYCLED_TOTAL: u64 = 64 << 20;
/// Only files up to this size are recycled (WAL segments, manifests, markers); larger ones
/// (SSTs, segments of large values) are unlinked.
const MAX_RECYCLED_BYTES: u64 = 1 << 20;

/// Files of deleted objects waiting to be written over by a create.
#[derive(Debug, Default)]
struct Pool {
    /// Each file's staging path (its only name) and size.
    files: Vec<(PathBuf, u64)>,
    /// Sum of the sizes.
    bytes: u64,
    /// Bounds: files, total bytes.
    max_files: usize,
    max_bytes: u64,
}

impl Pool {
    fn has_room(&self, size: u64) -> bool {
        self.files.len() < self.max_files && self.bytes + size <= self.max_bytes
    }
    fn push(&mut self, file: PathBuf, size: u64) {
        self.bytes += size;
        self.files.push((file, size));
    }
    fn pop(&mut self) -> Option<(PathBuf, u64)> {
        let f = self.files.pop()?;
        self.bytes -= f.1;
        Some(f)
    }
}

/// Staging-name prefixes of this process's open stores (their files are not swept).
static LIVE_STAGING: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());

impl Drop for Inner {
    fn drop(&mut self) {
        LIVE_STAGING.lock().retain(|p| *p != self.staging_prefix);
    }
}

/// A durable object store on a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// `PID-NONCE`: the start of this store's staging names.
    staging_prefix: String,
    staging_seq: AtomicU64,
    /// Whether the filesystem supports `O_TMPFILE` (checked on first use).
    tmpfile_ok: AtomicBool,
    /// Files of deleted objects, renamed into the staging directory, each with that one
    /// name only, waiting to be written over by a create (`None`: recycling is off).
    recycled: Option<parking_lot::Mutex<Pool>>,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> StoreResult<Self> {
        let root = root.as_ref().to_path_buf();
        let staging = root.join(STAGING_DIR);
        fs::create_dir_all(&staging).map_err(|e| other("open", &root.display().to_string(), e))?;
        // Leftover staging files of stores that are gone belong to puts that never returned
        // (nobody acknowledged them) or to their recycling pools. Files of a live store are
        // left alone: another store of this process on this root, or another live process's
        // (a compactor beside a server). A file of this process's pid but of no live store is
        // a previous incarnation's (a container's server is always pid 1).
        let me = std::process::id();
        if let Ok(entries) = fs::read_dir(&staging) {
            let live = LIVE_STAGING.lock();
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_str().unwrap_or_default();
                let mut fields = name.splitn(3, '-');
                let pid = fields.next().and_then(|p| p.parse::<u32>().ok());
                let nonce = fields.next().unwrap_or_default();
                let alive = match pid {
                    Some(pid) if pid == me => live.iter().any(|p| *p == format!("{me}-{nonce}")),
                    Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
                    None => false,
                };
                if !alive {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let staging_prefix = format!("{me}-{:016x}", crate::nonce());
        LIVE_STAGING.lock().push(staging_prefix.clone());
        Ok(LocalStore {
            inner: Arc::new(Inner {
                root,
                // Staging names are `PID-NONCE-KINDN`: unique across processes and across
                // the stores of one process on the same root.
                staging_prefix,
                staging_seq: AtomicU64::new(0),
                tmpfile_ok: AtomicBool::new(true),
                // STRATA_LOCAL_NO_RECYCLE=1 turns recycling off (for A/B measurements).
                recycled: std::env::var_os("STRATA_LOCAL_NO_RECYCLE")
                    .is_none()
                    .then(|| {
                        parking_lot::Mutex::new(Pool {
                            max_files: MAX_RECYCLED,
                            max_bytes: MAX_RECYCLED_TOTAL,
                            ..Pool::default()
                        })
                    }),
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn full(&self, path: &str) -> StoreResult<PathBuf> {
        validate_path(path)?;
        if path.starts_with(STAGING_DIR) {
            return Err(StoreError::InvalidPath(path.to_string()));
        }
        Ok(self.inner.root.join(path))
    }

    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Other {
                op: "blocking",
                path: String::new(),
                detail: e.to_string(),
            })?
    }
}

fn other(op: &'static str, path: &str, e: io::Error) -> StoreError {
    if matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) {
        // Callers use this only before the object is linked into place, so a full disk here
        // means nothing was created.
        return StoreError::NoSpace {
            op,
            path: path.to_string(),
            detail: e.to_string(),
        };
    }
    after_link(op, path, e)
}

/// An error after the object was linked into place (the directory fsync): the object may
/// exist, so even a full disk is not "nothing happened".
fn after_link(op: &'static str, path: &str, e: io::Error) -> StoreError {
    StoreError::Other {
        op,
        path: path.to_string(),
        detail: e.to_string(),
    }
}

fn map_read_err(op: &'static str, path: &str, e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::NotFound {
        StoreError::NotFound(path.to_string())
    } else {
        other(op, path, e)
    }
}

/// Opens `full`, reads it with `read`, then checks that the path still names the file that
/// was read, unchanged; otherwise reads again. A deleted object's file may be recycled for
/// another object while a read of it is under way: such a read then finds the name gone and
/// answers "not found" (the object is gone), never bytes of another object.
fn read_checked(
    full: &Path,
    path: &str,
    op: &'static str,
    mut read: impl FnMut(&mut File) -> io::Result<Vec<u8>>,
) -> StoreResult<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let same = |a: &fs::Metadata, b: &fs::Metadata| {
        a.ino() == b.ino()
            && a.dev() == b.dev()
            && a.ctime() == b.ctime()
            && a.ctime_nsec() == b.ctime_nsec()
    };
    for _ in 0..8 {
        let mut f = File::open(full).map_err(|e| map_read_err(op, path, e))?;
        let before = f.metadata().map_err(|e| other(op, path, e))?;
        let data = read(&mut f);
        let after = match fs::metadata(full) {
            Ok(m) => m,
            Err(e) => return Err(map_read_err(op, path, e)),
        };
        if same(&before, &after) {
            // A range past the end is the caller's error: the file did not change.
            return data.map_err(|e| other(op, path, e));
        }
        // The name changed under the read: another file under it (overwritten), or a link
        // count change of a fresh object (its staging name going). A recycled file is
        // renamed away from its object's name first, so it is never found here again as the
        // same file: read again, and a deleted object answers "not found".
    }
    Err(StoreError::Unavailable {
        op,
        path: path.to_string(),
        detail: "the object kept changing while it was read".into(),
    })
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing ancestors below `root`, fsyncing each parent whose entry
/// list changed, so a new directory survives a crash along with the file put in it.
fn create_dirs_durably(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if parent != root && parent.starts_with(root) {
            create_dirs_durably(root, parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Create-if-absent through an unnamed file: `O_TMPFILE` in the target directory, write,
/// fsync, then give it its name with `linkat`, which fails with `EEXIST` if the name is taken.
/// A crash before the link leaves nothing behind, and there is no staging file to create and
/// unlink: on ext4, the inode churn of staging files was ~18% of CPU at 9K writes/s.
#[cfg(target_os = "linux")]
fn create_via_tmpfile(dir: &Path, full: &Path, data: &[u8]) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(dir)?;
    f.write_all(data)?;
    f.sync_all()?;
    let src = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    let dst = CString::new(full.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call, and the
    // file descriptor behind `src` stays open (owned by `f`) until after it returns.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn tmpfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL) | Some(libc::ENOENT)
    )
}

impl Inner {
    /// A fresh staging path; `kind` tells puts, uploads and recycled files apart.
    fn staging_name(&self, kind: &str) -> PathBuf {
        let n = self.staging_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(STAGING_DIR)
            .join(format!("{}-{kind}{n}", self.staging_prefix))
    }

    fn take_recycled(&self) -> Option<(PathBuf, u64)> {
        self.recycled.as_ref()?.lock().pop()
    }

    /// Create-if-absent over a recycled file: write it from the start, cut it to length,
    /// fsync, link it into place (fails if the name is taken), drop its staging name. Only
    /// creates reuse files: the name they link is new, so no reader can be reading an
    /// earlier object under it.
    fn create_over_recycled(
        &self,
        path: &str,
        parent: &Path,
        full: &Path,
        file: PathBuf,
        data: &[u8],
    ) -> StoreResult<()> {
        let written = (|| -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).open(&file)?;
            f.write_all(data)?;
            f.set_len(data.len() as u64)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&file);
            return Err(other("put", path, e));
        }
        match fs::hard_link(&file, full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Still ours alone: back to the pool.
                if let Some(pool) = &self.recycled {
                    pool.lock().push(file, data.len() as u64);
                }
                return Err(StoreError::AlreadyExists(path.to_string()));
            }
            Err(e) => {
                let _ = fs::remove_file(&file);
                return Err(other("put", path, e));
            }
        }
        // The staging name goes; if that fails the file keeps two names until the next
        // open's sweep, and is not reused (it is no longer in the pool).
        let _ = fs::remove_file(&file);
        fsync_dir(parent).map_err(|e| after_link("put", path, e))
    }

    /// Deletes `full`: into the recycling pool when it is a small file and the pool has
    /// room, otherwise unlinked.
    fn delete_blocking(&self, path: &str, full: &Path) -> StoreResult<()> {
        if let Some(pool) = &self.recycled {
            let size = fs::symlink_metadata(full)
                .ok()
                .filter(|m| m.is_file() && m.len() <= MAX_RECYCLED_BYTES)
                .map(|m| m.len());
            if let Some(size) = size.filter(|&n| pool.lock().has_room(n)) {
                let to = self.staging_name("r");
                match fs::rename(full, &to) {
                    Ok(()) => {
                        pool.lock().push(to, size);
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    // Fall back to unlinking.
                    Err(_) => {}
                }
            }
        }
        match fs::remove_file(full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(other("delete", path, e)),
        }
    }

    fn put_blocking(&self, path: &str, full: &Path, data: &[u8], mode: PutMode) -> StoreResult<()> {
        let parent = full
            .parent()
            .ok_or_else(|| StoreError::InvalidPath(path.to_string()))?;
        create_dirs_durably(&self.root, parent).map_err(|e| other("put", path, e))?;
        if mode == PutMode::Create {
            if let Some((file, _)) = self.take_recycled() {
                return self.create_over_recycled(path, parent, full, file, data);
            }
        }
        #[cfg(target_os = "linux")]
        if mode == PutMode::Create && self.tmpfile_ok.load(Ordering::Relaxed) {
            match create_via_tmpfile(parent, full, data) {
                Ok(()) => return fsync_dir(parent).map_err(|e| after_link("put", path, e)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::AlreadyExists(path.to_string()))
                }
                Err(e) if tmpfile_unsupported(&e) => {
                    tracing::debug!(error = %e, "O_TMPFILE unsupported here; using staging files");
                    self.tmpfile_ok.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(other("put", path, e)),
            }
        }
        let staging = self.staging_name("p");
        let result = (|| -> StoreResult<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&staging)
                .map_err(|e| other("put", path, e))?;
            f.write_all(data).map_err(|e| other("put", path, e))?;
            f.sync_all().map_err(|e| other("put", path, e))?;
            drop(f);
            match mode {
                PutMode::Create => match fs::hard_link(&staging, full) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(StoreError::AlreadyExists(path.to_string()))
                    }
                    Err(e) => return Err(other("put", path, e)),
                },
                PutMode::Overwrite => {
                    fs::rename(&staging, full).map_err(|e| other("put", path, e))?;
                }
            }
            fsync_dir(parent).map_err(|e| after_link("put", path, e))
        })();
        let _ = fs::remove_file(&staging);
        result
    }
}

/// An object written in parts to a staging file, then fsynced and renamed into place, as a
/// `put` that overwrites is.
struct LocalUpload {
    store: LocalStore,
    path: String,
    full: PathBuf,
    staging: PathBuf,
    /// `None` only while a part is being written on the blocking pool, or once completed.
    file: Option<File>,
    /// Bytes appended by parts that succeeded: a failed part is written again from here.
    written: u64,
}

impl LocalUpload {
    fn take_file(&mut self, op: &'static str) -> StoreResult<File> {
        self.file.take().ok_or_else(|| StoreError::Other {
            op,
            path: self.path.clone(),
            detail: "the upload is over".into(),
        })
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn put_part(&mut self, data: Bytes) -> StoreResult<()> {
        let mut f = self.take_file("put_part")?;
        let (path, at) = (self.path.clone(), self.written);
        let len = data.len() as u64;
        let (f, r) = self
            .store
            .blocking(move |_| {
                // From the end of the last part that succeeded, whatever a failed one left.
                let r = f
                    .set_len(at)
                    .and_then(|()| f.seek(SeekFrom::Start(at)).map(|_| ()))
                    .and_then(|()| f.write_all(&data))
                    .map_err(|e| other("put_part", &path, e));
                Ok((f, r))
            })
            .await?;
        self.file = Some(f);
        r?;
        self.written += len;
        Ok(())
    }

    async fn complete(&mut self) -> StoreResult<()> {
        let f = self.take_file("complete")?;
        let (path, full, staging) = (self.path.clone(), self.full.clone(), self.staging.clone());
        let (f, r) = self
            .store
            .blocking(move |inner| {
                let r = (|| {
                    f.sync_all().map_err(|e| other("complete", &path, e))?;
                    let parent = full
                        .parent()
                        .ok_or_else(|| StoreError::InvalidPath(path.clone()))?;
                    create_dirs_durably(&inner.root, parent)
                        .map_err(|e| other("complete", &path, e))?;
                    fs::rename(&staging, &full).map_err(|e| other("complete", &path, e))?;
                    fsync_dir(parent).map_err(|e| after_link("complete", &path, e))
                })();
                Ok((f, r))
            })
            .await?;
        // Kept until completed, so a failed completion can be tried again; Drop removes the
        // staging file if the rename did not happen.
        if r.is_err() {
            self.file = Some(f);
        }
        r
    }

    async fn abort(&mut self) -> StoreResult<()> {
        self.file = None;
        let _ = fs::remove_file(&self.staging);
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.written
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        // After a completed rename the staging name is gone (names are never reused) and this
        // finds nothing; otherwise the unfinished object goes (a crash leaves it to the sweep
        // of the next open).
        let _ = fs::remove_file(&self.staging);
    }
}

fn list_recursive(dir: &Path, rel: &str, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if rel.is_empty() && name == STAGING_DIR {
            continue;
        }
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type()?;
        if ft.is_dir() {
            list_recursive(&entry.path(), &child_rel, out)?;
        } else if ft.is_file() {
            out.push(ObjectInfo {
                path: child_rel,
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl Store for LocalStore {
    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> StoreResult<()> {
        let full = self.full(path)?;
        let path = path.to_string();
        self.blocking(move |inner| inner.put_blocking(&path, &full, &data, mode))
            .await
    }

    async fn put_parts(&self, path: &str) -> StoreResult<Option<Box<dyn Upload>>> {
        let full = self.full(path)?;
        let n = self.inner.staging_seq.fetch_add(1, Ordering::Relaxed);
        let staging =
            self.inner
                .root
                .join(STAGING_DIR)
                .join(format!("{}-{}", std::process::id(), n));
        let file = {
            let staging = staging.clone();
            let path = path.to_string();
            self.blocking(move |_| {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&staging)
                    .map_err(|e| other("put_parts", &path, e))
            })
            .await?
        };
        Ok(Some(Box::new(LocalUpload {
            store: self.clone(),
            path: path.to_string(),
            full,
            staging,
            file: Some(file),
            written: 0,
        })))
    }

    async fn get(&self, path: &str) -> StoreResult<Bytes> {
        let full = self.full(path)?;
        let path = path.to_string();
        self.blocking(move |_| {
            read_checked(&full, &path, "get", |f| {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                Ok(buf)
            })
            .map(Bytes::from)
        })
        .await
    }

    async fn get_range(&self, path: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let full = self.full(path)?;
        let path = path.to_string();
        self.blocking(move |_| {
            let len = range.end.saturating_sub(range.start);
            // No object Strata writes is near this; a bigger range is a corrupt handle.
            const MAX_RANGE: u64 = 1 << 30;
            if len > MAX_RANGE {
                return Err(StoreError::Other {
                    op: "get_range",
                    path,
                    detail: format!("range of {len} bytes is larger than {MAX_RANGE}"),
                });
            }
            read_checked(&full, &path, "get_range", |f| {
                let mut buf = vec![0u8; len as usize];
                f.seek(SeekFrom::Start(range.start))?;
                f.read_exact(&mut buf)?;
                Ok(buf)
            })
            .map(Bytes::from)
        })
        .await
    }

    async fn head(&self, path: &str) -> StoreResult<u64> {
        let full = self.full(path)?;
        let path = path.to_string();
        self.blocking(move |_| {
            fs::metadata(&full)
                .map(|m| m.len())
                .map_err(|e| map_read_err("head", &path, e))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            // Walk only the deepest directory the prefix names fully.
            let (dir_rel, _) = match prefix.rfind('/') {
                Some(i) => (&prefix[..i], &prefix[i + 1..]),
                None => ("", prefix.as_str()),
            };
            let dir = if dir_rel.is_empty() {
                inner.root.clone()
            } else {
                inner.root.join(dir_rel)
            };
            let mut out = Vec::new();
            list_recursive(&dir, dir_rel, &mut out).map_err(|e| other("list", &prefix, e))?;
            out.retain(|o| o.path.starts_with(&prefix));
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, path: &str) -> StoreResult<()> {
        let full = self.full(path)?;
        let path = path.to_string();
        self.blocking(move |inner| inner.delete_blocking(&path, &full))
            .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.inner.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A deleted small object's file is written over by the next create (no new inode), with
    /// exactly the new bytes whatever the old length; large files and a full pool are unlinked.
    #[tokio::test]
    async fn deleted_small_files_are_reused_by_creates() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let long = Bytes::from(vec![7u8; 10_000]);
        s.put("wal/1", long.clone(), PutMode::Create).await.unwrap();
        let ino = fs::metadata(dir.path().join("wal/1")).unwrap().ino();
        s.delete("wal/1").await.unwrap();
        assert!(matches!(s.get("wal/1").await, Err(StoreError::NotFound(_))));
        assert!(
            s.list("").await.unwrap().is_empty(),
            "a recycled file is listed"
        );
        s.put("wal/2", Bytes::from_static(b"short"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(fs::metadata(dir.path().join("wal/2")).unwrap().ino(), ino);
        assert_eq!(s.get("wal/2").await.unwrap(), Bytes::from_static(b"short"));
        // A create that finds its name taken keeps the recycled file for the next one.
        s.delete("wal/2").await.unwrap();
        s.put("wal/3", long.clone(), PutMode::Create).await.unwrap();
        s.put("wal/4", long.clone(), PutMode::Create).await.unwrap();
        s.delete("wal/3").await.unwrap();
        let taken = s
            .put("wal/4", Bytes::from_static(b"x"), PutMode::Create)
            .await;
        assert!(
            matches!(taken, Err(StoreError::AlreadyExists(_))),
            "{taken:?}"
        );
        assert_eq!(s.get("wal/4").await.unwrap(), long);
        s.put("wal/5", Bytes::from_static(b"five"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(s.get("wal/5").await.unwrap(), Bytes::from_static(b"five"));
        // Large files are not kept; the pool is bounded.
        s.put(
            "sst/big",
            Bytes::from(vec![1u8; (MAX_RECYCLED_BYTES + 1) as usize]),
            PutMode::Create,
        )
        .await
        .unwrap();
        s.delete("sst/big").await.unwrap();
        let kept = fs::read_dir(dir.path().join(STAGING_DIR)).unwrap().count();
        assert_eq!(kept, 0, "the large file was kept");
        s.inner.recycled.as_ref().unwrap().lock().max_files = 3;
        for i in 0..10 {
            let p = format!("m/{i}");
            s.put(&p, Bytes::from_static(b"m"), PutMode::Create)
                .await
                .unwrap();
        }
        for i in 0..10 {
            s.delete(&format!("m/{i}")).await.unwrap();
        }
        let staged = fs::read_dir(dir.path().join(STAGING_DIR)).unwrap().count();
        assert_eq!(staged, 3, "files kept beyond the pool's bound");
        assert!(s.list("m/").await.unwrap().is_empty());
        // A restart forgets (and removes) them.
        drop(s);
        let _s = LocalStore::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_dir(dir.path().join(STAGING_DIR)).unwrap().count(),
            0
        );
    }

    /// A read of an object that is deleted and whose file is reused for another object while
    /// the read runs answers "not found", not the other object's bytes; a read of a name
    /// overwritten meanwhile reads the new object.
    #[test]
    fn a_read_racing_a_reuse_of_its_file_answers_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let inner = &s.inner;
        let a = dir.path().join("wal/a");
        inner
            .put_blocking("wal/a", &a, b"object a", PutMode::Create)
            .unwrap();
        let b = dir.path().join("wal/b");
        let mut reused = false;
        let r = read_checked(&a, "wal/a", "get", |f| {
            if !reused {
                reused = true;
                inner.delete_blocking("wal/a", &a).unwrap();
                inner
                    .put_blocking("wal/b", &b, b"object b", PutMode::Create)
                    .unwrap();
            }
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(buf)
        });
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
        assert_eq!(fs::read(&b).unwrap(), b"object b");

        let c = dir.path().join("c");
        inner
            .put_blocking("c", &c, b"old", PutMode::Overwrite)
            .unwrap();
        let mut overwritten = false;
        let r = read_checked(&c, "c", "get", |f| {
            if !overwritten {
                overwritten = true;
                inner
                    .put_blocking("c", &c, b"new", PutMode::Overwrite)
                    .unwrap();
            }
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(buf)
        });
        assert_eq!(r.unwrap(), b"new");
    }

    #[tokio::test]
    async fn an_upload_in_parts_appears_whole_at_completion() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        crate::check_upload(Arc::new(s.clone())).await;
        let staged = fs::read_dir(dir.path().join(STAGING_DIR)).unwrap().count();
        assert_eq!(staged, 0, "staging files left behind");
        // Through the wrappers of a real node: counted, retried, still streamed.
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let metered = crate::Metered::new(Arc::new(s));
        let wrapped = crate::Retrying::new(Arc::new(metered.clone()), Default::default());
        crate::check_upload(Arc::new(wrapped)).await;
        assert!(metered.counts().puts >= 5, "{:?}", metered.counts());
        let staged = fs::read_dir(dir.path().join(STAGING_DIR)).unwrap().count();
        assert_eq!(staged, 0, "staging files left behind");
    }

    #[tokio::test]
    async fn create_is_exclusive_and_data_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        s.put("a/b/c.obj", Bytes::from_static(b"one"), PutMode::Create)
            .await
            .unwrap();
        let err = s
            .put("a/b/c.obj", Bytes::from_static(b"two"), PutMode::Create)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
        assert_eq!(
            s.get("a/b/c.obj").await.unwrap(),
            Bytes::from_static(b"one")
        );
        s.put(
            "a/b/c.obj",
            Bytes::from_static(b"three"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        assert_eq!(
            s.get_range("a/b/c.obj", 1..4).await.unwrap(),
            Bytes::from_static(b"hre")
        );
        assert!(s.get_range("a/b/c.obj", 3..9).await.is_err());
        assert_eq!(s.head("a/b/c.obj").await.unwrap(), 5);
        assert!(matches!(
            s.get("a/b/missing").await.unwrap_err(),
            StoreError::NotFound(_)
        ));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn creates_use_unnamed_files_where_the_filesystem_allows() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        for i in 0..20 {
            s.put(
                &format!("w/{i:03}"),
                Bytes::from(vec![i as u8; 100]),
                PutMode::Create,
            )
            .await
            .unwrap();
        }
        assert!(matches!(
            s.put("w/001", Bytes::from_static(b"x"), PutMode::Create)
                .await
                .unwrap_err(),
            StoreError::AlreadyExists(_)
        ));
        assert_eq!(s.get("w/007").await.unwrap(), Bytes::from(vec![7u8; 100]));
        // ext4, xfs and tmpfs support O_TMPFILE: the fast path must not have fallen back.
        assert!(s.inner.tmpfile_ok.load(Ordering::Relaxed));
        assert_eq!(s.list("").await.unwrap().len(), 20);
    }

    #[tokio::test]
    async fn list_filters_by_prefix_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        for p in ["x/wal/002", "x/wal/001", "x/sst/001", "y/wal/001"] {
            s.put(p, Bytes::from_static(b"d"), PutMode::Create)
                .await
                .unwrap();
        }
        let names: Vec<_> = s
            .list("x/wal/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.path)
            .collect();
        assert_eq!(names, vec!["x/wal/001", "x/wal/002"]);
        assert_eq!(s.list("x/").await.unwrap().len(), 3);
        assert_eq!(s.list("").await.unwrap().len(), 4);
        s.delete("x/wal/001").await.unwrap();
        s.delete("x/wal/001").await.unwrap();
        assert_eq!(s.list("x/wal/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn rejects_paths_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        for p in ["../x", "/abs", "a//b", "a/./b", "sp ace", ".staging/x"] {
            assert!(s.get(p).await.is_err(), "{p}");
        }
    }
}

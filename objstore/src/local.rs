//! A local directory as an object store, with the durability of a real one.
//!
//! `object_store::local::LocalFileSystem` renames a temp file into place without fsync, so
//! an acknowledged write could vanish in a power cut. Here a put is: write a staging file,
//! fsync it, link (create-if-absent) or rename (overwrite) it into place, fsync the directory.
//! Only then does `put` return.

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

/// Under `.staging`: the stores' lock files. A directory of their own, so a sweep of an older
/// binary (which removes every file of `.staging` it judges dead) cannot remove them.
const LOCKS_DIR: &str = "locks";

impl Drop for Inner {
    fn drop(&mut self) {
        // Nothing of this store is in flight any more. The lock file goes first, while its
        // flock is still held; its descriptor closes after this (field drop).
        if self._lock.is_some() {
            let _ = fs::remove_file(lock_path(&self.root, &self.staging_prefix));
        }
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
    /// `PID-NONCE`: the start of this store's staging names (the pid only helps a reader of
    /// the directory; liveness is the lock below).
    staging_prefix: String,
    staging_seq: AtomicU64,
    /// Whether the filesystem supports `O_TMPFILE` (checked on first use).
    tmpfile_ok: AtomicBool,
    /// `.staging/locks/PID-NONCE.lock`, flocked exclusively for the store's whole life: while
    /// it is held, the store's staging files are in use and no sweep removes them. `None`
    /// when it could not be taken (a read-only root, a full disk, a filesystem without
    /// locks): the store still works, and another store's sweep may then take its staging
    /// files for a dead store's, which fails only puts and uploads not yet answered.
    _lock: Option<File>,
}

/// `ROOT/.staging/locks/PREFIX.lock`.
fn lock_path(root: &Path, prefix: &str) -> PathBuf {
    root.join(STAGING_DIR)
        .join(LOCKS_DIR)
        .join(format!("{prefix}.lock"))
}

/// Opens a lock file to flock it: for writing, as NFS (which emulates flock with POSIX locks)
/// grants an exclusive lock only to a descriptor open for writing.
fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Takes an exclusive flock on `f` without waiting: `Ok(true)` when taken, `Ok(false)` when
/// another open file holds it.
fn try_flock(f: &File) -> io::Result<bool> {
    match f.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The owner prefix (`PID-NONCE`) of a staging file's name `PID-NONCE-KINDN`, or of a lock
/// file's `PID-NONCE.lock`.
fn owner_of(name: &str) -> &str {
    let base = name.strip_suffix(".lock").unwrap_or(name);
    match base.match_indices('-').nth(1) {
        Some((i, _)) => &base[..i],
        None => base,
    }
}

/// What a sweep found of one owner of staging files.
enum Verdict {
    /// Its lock is held (or could not be checked): its files stay.
    Alive,
    /// No lock file: gone (or a binary from before the lock files).
    NoLock,
    /// Its lock file is now flocked by this sweep: gone.
    Dead,
}

/// Removes the staging files of stores that are gone. A store is alive while it holds the
/// flock on its lock file; a flock is the kernel's, so this is right across processes, PID
/// namespaces (containers sharing a volume) and the stores of one process. The files of a
/// store without a lock file belong to a store that is gone — or to a running binary from
/// before the lock files, which must therefore not share a root with this one: puts that
/// never returned, uploads that never completed; nobody was answered for them.
fn sweep_staging(root: &Path) {
    let staging = root.join(STAGING_DIR);
    let locks = staging.join(LOCKS_DIR);
    let names = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // The flocks of dead owners are held until the sweep ends (their lock files go last).
    let mut held: Vec<File> = Vec::new();
    let mut verdicts: std::collections::HashMap<String, Verdict> = std::collections::HashMap::new();
    let mut gone = |owner: &str, held: &mut Vec<File>| -> bool {
        let v = verdicts.entry(owner.to_string()).or_insert_with(|| {
            match open_lock(&lock_path(root, owner)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Verdict::NoLock,
                Err(_) => Verdict::Alive,
                Ok(f) => match try_flock(&f) {
                    Ok(true) => {
                        held.push(f);
                        Verdict::Dead
                    }
                    _ => Verdict::Alive,
                },
            }
        });
        !matches!(v, Verdict::Alive)
    };
    for name in names(&staging) {
        if gone(owner_of(&name), &mut held) {
            let _ = fs::remove_file(staging.join(&name));
        }
    }
    for name in names(&locks) {
        let path = locks.join(&name);
        if name.ends_with(".lock~") {
            // An opener between creating its lock file and renaming it into place holds its
            // flock already; a leftover of a crash there can be flocked.
            if let Ok(f) = open_lock(&path) {
                if matches!(try_flock(&f), Ok(true)) {
                    let _ = fs::remove_file(&path);
                }
            }
        } else if name.ends_with(".lock") && gone(owner_of(&name), &mut held) {
            let _ = fs::remove_file(&path);
        }
    }
    drop(held);
}

/// A fresh `PID-NONCE` for a store's staging names.
fn new_staging_prefix() -> String {
    format!("{}-{:016x}", std::process::id(), crate::nonce())
}

/// Creates and flocks this store's lock file under a fresh `PID-NONCE`: created as
/// `PREFIX.lock~`, flocked, then renamed into place, so a `PREFIX.lock` is never seen
/// unlocked while its store lives. A sweep that removed the `~` file before the flock makes
/// the rename fail: then again with another nonce.
fn take_staging_lock(root: &Path) -> io::Result<(String, File)> {
    fs::create_dir_all(root.join(STAGING_DIR).join(LOCKS_DIR))?;
    let mut last = None;
    for _ in 0..8 {
        let prefix = new_staging_prefix();
        let final_path = lock_path(root, &prefix);
        let tmp = final_path.with_extension("lock~");
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let locked = match try_flock(&f) {
            Ok(true) => fs::rename(&tmp, &final_path),
            Ok(false) => Err(io::Error::new(io::ErrorKind::NotFound, "taken by a sweep")),
            Err(e) => Err(e),
        };
        match locked {
            Ok(()) => return Ok((prefix, f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free staging lock name")))
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> StoreResult<Self> {
        let root = root.as_ref().to_path_buf();
        let staging = root.join(STAGING_DIR);
        fs::create_dir_all(&staging).map_err(|e| other("open", &root.display().to_string(), e))?;
        // This store's lock first: a sweep judges others' liveness by their locks, which
        // means nothing where locks cannot be taken (then every other store would look dead).
        let (staging_prefix, lock) = match take_staging_lock(&root) {
            Ok((prefix, lock)) => (prefix, Some(lock)),
            Err(e) => {
                tracing::warn!(
                    root = %root.display(),
                    error = %e,
                    "cannot take the staging lock: .staging is not swept, and this store's \
                     unfinished writes are not protected from another store's sweep"
                );
                let prefix = new_staging_prefix();
                (prefix, None)
            }
        };
        // Leftover staging files of stores that are gone belong to puts that never returned
        // (nobody acknowledged them) or to uploads that never completed. Files of a live store
        // (another store of this process on this root, a compactor beside a server, another
        // container on a shared volume) are left alone; this store's own lock is held, and it
        // has no files yet.
        if lock.is_some() {
            sweep_staging(&root);
        }
        Ok(LocalStore {
            inner: Arc::new(Inner {
                root,
                // Staging names are `PID-NONCE-KINDN`: unique across processes and across
                // the stores of one process on the same root.
                staging_prefix,
                staging_seq: AtomicU64::new(0),
                tmpfile_ok: AtomicBool::new(true),
                _lock: lock,
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

/// Bytes written between two `fdatasync`s of a large object (RocksDB's `bytes_per_sync`).
const SYNC_STEP: usize = 8 << 20;

/// Writes `data` to `f`, syncing the data every `SYNC_STEP` bytes when it is larger: a 64 MiB
/// SST made dirty at once and fsynced at the end blocks the WAL's small fsyncs behind its
/// writeback for tens of milliseconds (measured: the scale-sheet mix had 25–47 operations over
/// 100 ms per 20 s with one fsync per streamed compaction output, 0–4 with a sync per 8 MiB
/// part; for whole puts (flushed SSTs) the same stepping gave 4–44 against 11–33, noisier).
/// The caller's final `sync_all` still makes the object durable.
fn write_in_steps(f: &mut File, data: &[u8]) -> io::Result<()> {
    if data.len() <= SYNC_STEP {
        return f.write_all(data);
    }
    for chunk in data.chunks(SYNC_STEP) {
        f.write_all(chunk)?;
        f.sync_data()?;
    }
    Ok(())
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
    write_in_steps(&mut f, data)?;
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
    /// A fresh staging path; `kind` tells puts and uploads apart.
    fn staging_name(&self, kind: &str) -> PathBuf {
        let n = self.staging_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(STAGING_DIR)
            .join(format!("{}-{kind}{n}", self.staging_prefix))
    }

    fn put_blocking(&self, path: &str, full: &Path, data: &[u8], mode: PutMode) -> StoreResult<()> {
        let parent = full
            .parent()
            .ok_or_else(|| StoreError::InvalidPath(path.to_string()))?;
        create_dirs_durably(&self.root, parent).map_err(|e| other("put", path, e))?;
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
            write_in_steps(&mut f, data).map_err(|e| other("put", path, e))?;
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
    /// Shared with each attempt's closure on the blocking pool. An attempt that timed out
    /// (the retry layer dropped its future) may still be running there: the next attempt waits
    /// for it on the mutex, then starts over from `written`, so a slow disk costs a retry,
    /// not the upload.
    shared: Arc<UploadFile>,
    /// Bytes appended by parts that succeeded: a failed part is written again from here.
    written: u64,
    /// Completed or aborted: no further part or completion.
    over: bool,
}

struct UploadFile {
    file: parking_lot::Mutex<Staged>,
    /// The staging file was renamed into place (set by the attempt that did it, even one
    /// whose caller timed out): a later attempt only repeats the directory's fsync.
    renamed: AtomicBool,
}

struct Staged {
    file: File,
    /// Bytes of the parts some attempt wrote and synced. An attempt for the part at offset
    /// `at` finds `at == committed` and writes it, or `at < committed`: an earlier attempt of
    /// the same part (the same bytes: the retry layer resends the part it was given) wrote it
    /// and its answer was lost to a timeout; rewriting would cut what follows.
    committed: u64,
}

impl LocalUpload {
    fn check_open(&self, op: &'static str) -> StoreResult<()> {
        if self.over {
            return Err(StoreError::Other {
                op,
                path: self.path.clone(),
                detail: "the upload is over".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn put_part(&mut self, data: Bytes) -> StoreResult<()> {
        self.check_open("put_part")?;
        let (path, at, shared) = (self.path.clone(), self.written, self.shared.clone());
        let len = data.len() as u64;
        self.store
            .blocking(move |_| {
                let mut st = shared.file.lock();
                if at < st.committed {
                    // The same part again (the retry layer resends the bytes it was given);
                    // anything else is a caller's bug, refused rather than half-written.
                    if at + len != st.committed {
                        return Err(StoreError::Other {
                            op: "put_part",
                            path: path.clone(),
                            detail: format!(
                                "a part of {len} bytes at {at} differs from the one written there"
                            ),
                        });
                    }
                    return Ok(());
                }
                if at > st.committed {
                    return Err(StoreError::Other {
                        op: "put_part",
                        path: path.clone(),
                        detail: format!("part at {at} after only {} bytes", st.committed),
                    });
                }
                let f = &mut st.file;
                // From the end of the last part that succeeded, whatever a failed one left.
                f.set_len(at)
                    .and_then(|()| f.seek(SeekFrom::Start(at)).map(|_| ()))
                    .and_then(|()| f.write_all(&data))
                    // Written back part by part (see `write_in_steps`), not all at completion.
                    .and_then(|()| f.sync_data())
                    .map_err(|e| other("put_part", &path, e))?;
                st.committed = at + len;
                Ok(())
            })
            .await?;
        self.written += len;
        Ok(())
    }

    async fn complete(&mut self) -> StoreResult<()> {
        self.check_open("complete")?;
        let (path, full, staging) = (self.path.clone(), self.full.clone(), self.staging.clone());
        let (shared, written) = (self.shared.clone(), self.written);
        self.store
            .blocking(move |inner| {
                let st = shared.file.lock();
                let parent = full
                    .parent()
                    .ok_or_else(|| StoreError::InvalidPath(path.clone()))?;
                // A retry after a failed directory fsync only repeats that fsync.
                if !shared.renamed.load(Ordering::Acquire) {
                    if st.committed != written {
                        return Err(StoreError::Other {
                            op: "complete",
                            path: path.clone(),
                            detail: format!(
                                "{} bytes written for the {written} of the parts answered",
                                st.committed
                            ),
                        });
                    }
                    st.file
                        .sync_all()
                        .map_err(|e| other("complete", &path, e))?;
                    create_dirs_durably(&inner.root, parent)
                        .map_err(|e| other("complete", &path, e))?;
                    fs::rename(&staging, &full).map_err(|e| other("complete", &path, e))?;
                    shared.renamed.store(true, Ordering::Release);
                }
                fsync_dir(parent).map_err(|e| after_link("complete", &path, e))
            })
            .await?;
        self.over = true;
        Ok(())
    }

    async fn abort(&mut self) -> StoreResult<()> {
        self.over = true;
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
            // An object deleted while the walk reads its directory is simply not listed.
            let size = match entry.metadata() {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(ObjectInfo {
                path: child_rel,
                size,
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
        let staging = self.inner.staging_name("u");
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
            shared: Arc::new(UploadFile {
                file: parking_lot::Mutex::new(Staged { file, committed: 0 }),
                renamed: AtomicBool::new(false),
            }),
            written: 0,
            over: false,
        })))
    }

    async fn get(&self, path: &str) -> StoreResult<Bytes> {
        let full = self.full(path)?;
        let path = path.to_string();
        self.blocking(move |_| {
            fs::read(&full)
                .map(Bytes::from)
                .map_err(|e| map_read_err("get", &path, e))
        })
        .await
    }

    async fn get_range(&self, path: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let full = self.full(path)?;
        let path = path.to_string();
        self.blocking(move |_| {
            let mut f = File::open(&full).map_err(|e| map_read_err("get_range", &path, e))?;
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
            let mut buf = vec![0u8; len as usize];
            f.seek(SeekFrom::Start(range.start))
                .map_err(|e| other("get_range", &path, e))?;
            f.read_exact(&mut buf)
                .map_err(|e| other("get_range", &path, e))?;
            Ok(Bytes::from(buf))
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
        self.blocking(move |_| match fs::remove_file(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(other("delete", &path, e)),
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.inner.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects larger than a sync step are written in steps and read back whole, by both
    /// create paths and an overwrite.
    #[tokio::test]
    async fn large_objects_round_trip_through_stepped_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let data: Bytes = (0..SYNC_STEP * 2 + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        s.put("big/a", data.clone(), PutMode::Create).await.unwrap();
        s.inner.tmpfile_ok.store(false, Ordering::Relaxed);
        s.put("big/b", data.clone(), PutMode::Create).await.unwrap();
        s.put("big/a", data.slice(1..), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(s.get("big/a").await.unwrap(), data.slice(1..));
        assert_eq!(s.get("big/b").await.unwrap(), data);
    }

    /// A part or a completion whose answer was lost (the retry layer's attempt timed out while
    /// the write went on on the blocking pool) is simply tried again: the object comes out
    /// whole and exact, never cut or doubled.
    #[tokio::test]
    async fn attempts_whose_answers_were_lost_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let mut u = s.put_parts("sst/slow").await.unwrap().unwrap();
        let part = |b: u8| Bytes::from(vec![b; 1 << 20]);
        for b in [1u8, 2, 3] {
            // Polled once (the write starts), then given up on — unless it was done by
            // then: a retry follows only an attempt that did not answer.
            let first = strata_clock::timeout(std::time::Duration::ZERO, u.put_part(part(b))).await;
            if !matches!(first, Ok(Ok(()))) {
                u.put_part(part(b)).await.unwrap();
            }
        }
        let first = strata_clock::timeout(std::time::Duration::ZERO, u.complete()).await;
        if !matches!(first, Ok(Ok(()))) {
            u.complete().await.unwrap();
        }
        let got = s.get("sst/slow").await.unwrap();
        let want: Vec<u8> = [1u8, 2, 3].iter().flat_map(|&b| vec![b; 1 << 20]).collect();
        assert!(got == want, "object of {} bytes differs", got.len());
        drop(u);
        assert_eq!(staged_files(dir.path()), 0);
    }

    /// File names in `dir` (not directories), sorted.
    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// An open's sweep removes what stores that are gone left in `.staging` (files without a
    /// lock file, files whose lock nobody holds, a lock file left between create and rename)
    /// and keeps a live store's files, and a lock file being taken; a store dropped removes
    /// its lock file.
    #[tokio::test]
    async fn the_sweep_removes_files_of_stores_that_are_gone_and_keeps_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let live: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path()).unwrap());
        let mut u = crate::start_upload(&live, "sst/live").await.unwrap();
        u.put_part(Bytes::from_static(b"kept ")).await.unwrap();
        let staging = dir.path().join(STAGING_DIR);
        let locks = staging.join(LOCKS_DIR);
        // No lock file: its store is gone. A lock file nobody holds: likewise.
        let dead = ["4242-00000000deadbeef-u0", "4243-00000000cafecafe-p7"];
        let dead_locks = [
            "4243-00000000cafecafe.lock",
            "4244-0000000012345678.lock~", // a crash between create and rename
        ];
        for name in dead {
            fs::write(staging.join(name), b"x").unwrap();
        }
        for name in dead_locks {
            fs::write(locks.join(name), b"").unwrap();
        }
        // An opener between create and rename: its `~` file is flocked, and stays.
        let taking = locks.join("4245-0000000087654321.lock~");
        let taking_file = File::create(&taking).unwrap();
        taking_file.try_lock().unwrap();
        assert_eq!(
            file_names(&staging).len(),
            dead.len() + 1,
            "and the live upload"
        );
        assert_eq!(
            file_names(&locks).len(),
            dead_locks.len() + 2,
            "and the live lock"
        );
        let second = LocalStore::open(dir.path()).unwrap();
        let (left, left_locks) = (file_names(&staging), file_names(&locks));
        assert_eq!(left.len(), 1, "only the live upload: {left:?}");
        // The first store's, the second store's, and the one being taken.
        assert_eq!(left_locks.len(), 3, "{left_locks:?}");
        assert!(taking.exists());
        u.put_part(Bytes::from_static(b"upload")).await.unwrap();
        u.complete().await.unwrap();
        assert_eq!(
            second.get("sst/live").await.unwrap(),
            Bytes::from_static(b"kept upload")
        );
        drop((u, live, second, taking_file));
        fs::remove_file(&taking).unwrap();
        assert!(file_names(&staging).is_empty());
        assert!(
            file_names(&locks).is_empty(),
            "dropped stores leave no lock files"
        );
    }

    /// A second store opened on the same root (a restore's source root, a tool beside the
    /// server) leaves the first store's staging files alone: its upload still completes.
    #[tokio::test]
    async fn opening_the_root_again_spares_a_live_stores_upload() {
        let dir = tempfile::tempdir().unwrap();
        let first: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path()).unwrap());
        let mut u = crate::start_upload(&first, "sst/big").await.unwrap();
        u.put_part(Bytes::from_static(b"part one ")).await.unwrap();
        let second = LocalStore::open(dir.path()).unwrap();
        u.put_part(Bytes::from_static(b"part two")).await.unwrap();
        u.complete().await.unwrap();
        assert_eq!(
            second.get("sst/big").await.unwrap(),
            Bytes::from_static(b"part one part two")
        );
    }

    /// Staging files of puts and uploads (not the stores' lock files).
    fn staged_files(root: &Path) -> usize {
        file_names(&root.join(STAGING_DIR)).len()
    }

    #[tokio::test]
    async fn an_upload_in_parts_appears_whole_at_completion() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        crate::check_upload(Arc::new(s.clone())).await;
        let staged = staged_files(dir.path());
        assert_eq!(staged, 0, "staging files left behind");
        // Through the wrappers of a real node: counted, retried, still streamed.
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let metered = crate::Metered::new(Arc::new(s));
        let wrapped = crate::Retrying::new(Arc::new(metered.clone()), Default::default());
        crate::check_upload(Arc::new(wrapped)).await;
        assert!(metered.counts().puts >= 5, "{:?}", metered.counts());
        let staged = staged_files(dir.path());
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

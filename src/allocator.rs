//! Tuning of glibc's allocator for a long-running server (issue 11: memory freed is returned
//! to the OS). Measured with `infra/bench-resources.sh` (flood row): glibc's default of 8
//! arenas per core held ~0.9 GiB resident at idle after a write flood; two arenas and a
//! periodic `malloc_trim` hand most of it back. `MALLOC_ARENA_MAX` in the environment wins.

/// Arenas glibc may create (its default is 8 per core).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Call first thing in `main`, before any thread exists (arenas are created per thread).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers; called before other threads allocate.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
        }
    }
}

/// Returns free heap pages to the OS every `every` (glibc keeps freed memory in its arenas
/// otherwise). Runs for the life of the process.
pub fn spawn_trimmer(every: std::time::Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only walks the allocator's own state.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
}

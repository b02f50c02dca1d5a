//! `strata-testkit`: what Strata's tests share (a dev-dependency; never published).
//!
//! - [`server`]: the `strata serve` launcher ([`Server`], [`ServerOpts`]) and the binary it
//!   runs ([`bin`]);
//! - [`infra`]: the S3 test server and etcd launchers ([`infra::S3`], [`infra::Etcd`]);
//! - [`cluster`]: a cluster of nodes on both ([`Cluster`]; [`cluster::infra`] starts both)
//!   and partition-map helpers;
//! - [`kv`]: request builders and one-line puts and gets on a [`kv::Kv`] client;
//! - [`acked`]: the recorder of acknowledged writes and its read-back check ([`Acked`]);
//! - [`linearize`]: the linearizability checker for single-key histories (and why it is ours).
//!
//! The launchers start the real binaries and kill them when dropped; a test that needs a
//! server which is not installed fails, unless `STRATA_ALLOW_SKIP=1` (then it skips).
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

pub mod acked;
pub mod cluster;
pub mod infra;
pub mod kv;
pub mod linearize;
pub mod server;

pub use acked::Acked;
pub use cluster::Cluster;
pub use server::{bin, run_bounded, Server, ServerOpts};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Raises a load test's stop flag when dropped, so writer tasks end even when the test body
/// panics first. Without it a failed assertion leaves the writers looping against servers the
/// unwinding test has already killed: a loop whose failed calls complete without yielding
/// keeps its runtime worker busy, and the runtime's shutdown, which waits for that worker,
/// never finishes (the test hangs instead of failing).
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The hang [`StopOnDrop`] prevents: a writer that never yields holds the runtime's only
    /// worker, so the runtime's shutdown after the body's panic waits until the writer sees
    /// its stop flag.
    #[test]
    fn a_panicking_test_body_stops_its_writers() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let stop = Arc::new(AtomicBool::new(false));
                    let _stop_on_panic = StopOnDrop(stop.clone());
                    let s = stop.clone();
                    tokio::spawn(async move {
                        while !s.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    });
                    // Not a tokio sleep: the timers are driven by the worker the writer holds.
                    std::thread::sleep(Duration::from_millis(50));
                    panic!("the test body fails");
                });
            });
            let _ = done.send(r.is_err());
        });
        let panicked = finished
            .recv_timeout(Duration::from_secs(20))
            .expect("the runtime's shutdown hung on a writer that never saw its stop flag");
        assert!(panicked);
    }
}

//! A node's ownership lease as this process knows it: valid until a deadline on the local
//! monotonic clock.
//!
//! The deadline is the time a keep-alive was *sent* plus the TTL etcd granted, minus a margin.
//! etcd can only expire the lease at least a TTL after it *received* that keep-alive, so
//! while our deadline has not passed no other node can own our partitions. A process frozen
//! (SIGSTOP, a long GC-like pause) wakes up past its deadline and refuses to serve before it
//! has even talked to etcd again: the monotonic clock kept running while it was stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_clock::Instant;

/// Shared view of the node's lease validity. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LeaseGuard {
    base: Instant,
    /// Nanoseconds after `base` until which the lease is valid; 0 = not valid.
    until_ns: Arc<AtomicU64>,
}

impl Default for LeaseGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseGuard {
    /// A guard that is not valid until [`LeaseGuard::renewed`] is called.
    pub fn new() -> Self {
        LeaseGuard {
            base: strata_clock::now(),
            until_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records a successful keep-alive that was sent at `sent` and granted `ttl`. Only ever
    /// moves the deadline forward.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        // 20% margin: etcd's own clock and timer granularity.
        let until = sent + ttl.mul_f64(0.8);
        let ns = until.saturating_duration_since(self.base).as_nanos() as u64;
        self.until_ns.fetch_max(ns, Ordering::SeqCst);
    }

    /// The lease is gone (or must be treated as gone).
    pub fn expire(&self) {
        self.until_ns.store(0, Ordering::SeqCst);
    }

    /// Whether the lease is certainly still ours right now.
    pub fn valid(&self) -> bool {
        let now = self.base.elapsed().as_nanos() as u64;
        now < self.until_ns.load(Ordering::SeqCst)
    }

    /// Time left, zero when not valid.
    pub fn remaining(&self) -> Duration {
        let now = self.base.elapsed().as_nanos() as u64;
        Duration::from_nanos(self.until_ns.load(Ordering::SeqCst).saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_only_until_the_deadline() {
        let g = LeaseGuard::new();
        assert!(!g.valid());
        g.renewed(strata_clock::now(), Duration::from_secs(10));
        assert!(g.valid());
        assert!(g.remaining() > Duration::from_secs(7));
        g.expire();
        assert!(!g.valid());
        g.renewed(
            strata_clock::now() - Duration::from_secs(20),
            Duration::from_secs(10),
        );
        assert!(
            !g.valid(),
            "a renewal sent long ago does not make the lease valid"
        );
    }
}

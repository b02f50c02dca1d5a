//! Time and randomness for Strata, injected rather than read from the environment.
//!
//! Code that needs the time of day (TTL expiry, manifest and WAL timestamps), the monotonic
//! clock (deadlines, graces, timers) or random numbers (object ids, writer epochs) takes a
//! [`Clock`] or an [`Rng`] instead of calling `SystemTime::now`, `Instant::now`,
//! `tokio::time::sleep` or `rand::random` — crates that adopted it ban those calls with
//! `clippy.toml` `disallowed-methods`, and this crate is the one place allowed to make them.
//!
//! - [`Clock::system`] is the real thing: the wall clock, and tokio's monotonic clock (so a
//!   test that pauses tokio's time, `#[tokio::test(start_paused = true)]`, controls every
//!   timer and deadline).
//! - [`Clock::manual`] has a wall clock that moves only when told ([`Clock::advance`]), so a
//!   test of TTLs or graces advances time instead of sleeping.
//! - [`Rng::seeded`] repeats its numbers from a seed, for reproducible runs.
#![deny(missing_docs)]
#![allow(
    clippy::disallowed_methods,
    reason = "this crate is the one place that reads the clocks and the entropy source"
)]

use parking_lot::Mutex;
use rand::{RngCore, SeedableRng};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
pub use tokio::time::Instant;

/// A source of time. Cheap to clone; clones share one clock.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    wall: Arc<Wall>,
}

#[derive(Debug, Default)]
enum Wall {
    /// The system's clock.
    #[default]
    System,
    /// Unix milliseconds that move only by [`Clock::advance`].
    Manual(AtomicU64),
}

impl Clock {
    /// The system's wall clock and tokio's monotonic clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock whose wall time starts at `start_unix_ms` and moves only by
    /// [`Clock::advance`]; its monotonic clock is still tokio's.
    pub fn manual(start_unix_ms: u64) -> Clock {
        Clock {
            wall: Arc::new(Wall::Manual(AtomicU64::new(start_unix_ms))),
        }
    }

    /// Moves a manual clock's wall time forward by `d`. Returns false (and does nothing) on
    /// the system clock, which no one may move.
    pub fn advance(&self, d: Duration) -> bool {
        match &*self.wall {
            Wall::System => false,
            Wall::Manual(ms) => {
                ms.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
                true
            }
        }
    }

    /// Milliseconds since the Unix epoch (0 if the system clock is before it).
    pub fn unix_ms(&self) -> u64 {
        match &*self.wall {
            Wall::System => system_unix_ms(),
            Wall::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// The monotonic clock (tokio's: paused and advanced with it in tests).
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Completes after `d` on the monotonic clock.
    pub fn sleep(&self, d: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(d)
    }

    /// Completes at `deadline` on the monotonic clock.
    pub fn sleep_until(&self, deadline: Instant) -> tokio::time::Sleep {
        tokio::time::sleep_until(deadline)
    }

    /// `f`, unless `d` passes first.
    pub fn timeout<F: Future>(&self, d: Duration, f: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout(d, f)
    }

    /// `f`, unless `deadline` passes first.
    pub fn timeout_at<F: Future>(&self, deadline: Instant, f: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout_at(deadline, f)
    }
}

/// The monotonic clock: tokio's, so `#[tokio::test(start_paused = true)]` (or
/// `tokio::time::pause`) controls it for everything on that runtime. For code that has no
/// [`Clock`] to hand; the same as [`Clock::now`].
pub fn now() -> Instant {
    Instant::now()
}

/// Completes after `d` on the monotonic clock.
pub fn sleep(d: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(d)
}

/// Completes at `deadline` on the monotonic clock.
pub fn sleep_until(deadline: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(deadline)
}

/// `f`, unless `d` passes first on the monotonic clock.
pub fn timeout<F: Future>(d: Duration, f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(d, f)
}

/// `f`, unless `deadline` passes first on the monotonic clock.
pub fn timeout_at<F: Future>(deadline: Instant, f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout_at(deadline, f)
}

/// The system's wall clock in Unix milliseconds (0 before the epoch). For code that has no
/// [`Clock`] to hand yet; prefer [`Clock::unix_ms`].
pub fn system_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// 64 bits from the operating system's entropy source, for names that must be unique across
/// processes and runs (object, staging and manifest names, SST ids): a seeded [`Rng`] would
/// repeat them. Never for what a simulated run must repeat (use an [`Rng`]).
pub fn unique_u64() -> u64 {
    rand::random()
}

/// A source of random numbers. Cheap to clone; clones share one generator.
#[derive(Clone, Debug)]
pub struct Rng {
    inner: Arc<Mutex<rand::rngs::StdRng>>,
}

impl Default for Rng {
    fn default() -> Self {
        Rng::from_entropy()
    }
}

impl Rng {
    /// Seeded from the operating system's entropy.
    pub fn from_entropy() -> Rng {
        Rng::seeded(rand::random())
    }

    /// The same numbers for the same seed.
    pub fn seeded(seed: u64) -> Rng {
        Rng {
            inner: Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed))),
        }
    }

    /// The next random `u64`.
    pub fn next_u64(&self) -> u64 {
        self.inner.lock().next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_the_system_clock_cannot_be() {
        let c = Clock::manual(1_000);
        assert_eq!(c.unix_ms(), 1_000);
        assert!(c.clone().advance(Duration::from_secs(2)));
        assert_eq!(c.unix_ms(), 3_000, "clones share the clock");
        let s = Clock::system();
        assert!(!s.advance(Duration::from_secs(1)));
        assert!(s.unix_ms() > 1_600_000_000_000);
    }

    #[test]
    fn a_seeded_rng_repeats() {
        let (a, b) = (Rng::seeded(7), Rng::seeded(7));
        assert_eq!((a.next_u64(), a.next_u64()), (b.next_u64(), b.next_u64()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_monotonic_clock_follows_paused_tokio_time() {
        let c = Clock::system();
        let t = c.now();
        c.sleep(Duration::from_secs(3600)).await;
        assert!(c.now() - t >= Duration::from_secs(3600));
    }
}

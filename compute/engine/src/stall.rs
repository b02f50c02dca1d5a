//! Write stalls: writes slow down before compaction debt runs away, and stop (with a deadline)
//! past a hard limit, so the disk stays bounded under a write flood.
//!
//! The debt measured is the number of L0 files, the engine's own view of how far compaction
//! is behind flushes (every flush adds one; a compaction of L0 takes them all). The memtable
//! budget already holds writes back when flushes fall behind (`commit.rs`); this is the next
//! stage down the pipeline. Modelled on RocksDB's `level0_slowdown_writes_trigger` /
//! `level0_stop_writes_trigger` (20 / 36 by default there too):
//!
//! - below `slowdown_l0`: writes go at once;
//! - from `slowdown_l0` up to `stop_l0`: every write batch waits a little, linearly more the
//!   closer L0 is to the stop limit (1 ms at the slowdown limit, up to `MAX_DELAY` just below
//!   the stop limit), which gives compaction time without refusing anyone;
//! - at `stop_l0` or more: a write waits until compaction brings L0 below the limit; if that
//!   does not happen within `max_wait`, it fails with `RESOURCE_EXHAUSTED` "write stall: …"
//!   and nothing applied (it never entered the commit loop), with a `retry-after-ms` hint.
//!
//! A stall is counted (`EngineMetrics::write_stall_*`) and logged with its reason, at most
//! once per `LOG_EVERY`.
//!
//! A full disk is the other stall ([`DiskSpace`]): while the WAL or a flush cannot write for
//! lack of space, new writes are refused at once with `RESOURCE_EXHAUSTED` "no space left
//! on …" (they never entered the commit loop, so that answer is exact). Writes already
//! sequenced when the disk filled get `UNAVAILABLE` (outcome unknown): their WAL segment is
//! retried and lands once space returns, which also lifts the refusal by itself.

use crate::error::{EngineError, EngineResult, Exhausted};
use crate::metrics::EngineMetrics;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;
use strata_clock::Instant;

/// Longest delay of one write batch in the slowdown band.
const MAX_DELAY: Duration = Duration::from_millis(50);
/// How often a stopped write looks again at the L0 count.
const POLL: Duration = Duration::from_millis(20);
/// At most one stall log line per this interval (per engine).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Limits of the write stall. A limit of 0 is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallLimits {
    /// L0 files from which writes are delayed.
    pub slowdown_l0: usize,
    /// L0 files from which writes wait for compaction.
    pub stop_l0: usize,
    /// How long a write waits at the stop limit before `RESOURCE_EXHAUSTED`.
    pub max_wait: Duration,
}

impl Default for StallLimits {
    fn default() -> Self {
        StallLimits {
            slowdown_l0: 20,
            stop_l0: 36,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// What a write must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead.
    Go,
    /// Wait this long, then go.
    Delay(Duration),
    /// Wait for compaction; the reason says why.
    Stop(String),
}

impl StallLimits {
    /// What a write does with `l0` files in L0.
    pub(crate) fn assess(&self, l0: usize) -> Admission {
        if self.stop_l0 > 0 && l0 >= self.stop_l0 {
            return Admission::Stop(format!(
                "{l0} L0 files awaiting compaction (stop limit {})",
                self.stop_l0
            ));
        }
        if self.slowdown_l0 > 0 && l0 >= self.slowdown_l0 {
            // Linear from 1 ms at the slowdown limit to MAX_DELAY just below the stop limit.
            let band = self
                .stop_l0
                .saturating_sub(self.slowdown_l0)
                .max(1)
                .min(u32::MAX as usize) as u32;
            let over = (l0 - self.slowdown_l0).min(band as usize) as u32;
            let d = Duration::from_millis(1)
                + MAX_DELAY.saturating_sub(Duration::from_millis(1)) * over / band;
            return Admission::Delay(d.min(MAX_DELAY));
        }
        Admission::Go
    }
}

/// The write stall of one engine: its limits and when it last logged.
#[derive(Debug)]
pub(crate) struct WriteStall {
    limits: StallLimits,
    last_log: Mutex<Option<Instant>>,
}

impl WriteStall {
    pub(crate) fn new(limits: StallLimits) -> Self {
        WriteStall {
            limits,
            last_log: Mutex::new(None),
        }
    }

    /// Holds a write back while compaction debt is past the limits; `l0` reads the current
    /// L0 file count. Errors (nothing applied) when the stop limit holds past `max_wait`.
    pub(crate) async fn admit(
        &self,
        partition: u32,
        metrics: &EngineMetrics,
        l0: impl Fn() -> usize,
    ) -> EngineResult<()> {
        let started = strata_clock::now();
        let mut stopped = false;
        loop {
            match self.limits.assess(l0()) {
                Admission::Go => break,
                Admission::Delay(d) => {
                    if !stopped {
                        metrics.write_stall_delays.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("strata_write_stalls_total", "reason" => "l0_files", "action" => "delay")
                            .increment(1);
                    }
                    strata_clock::sleep(d).await;
                    break;
                }
                Admission::Stop(reason) => {
                    if !stopped {
                        stopped = true;
                        metrics.write_stall_stops.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("strata_write_stalls_total", "reason" => "l0_files", "action" => "stop")
                            .increment(1);
                        self.log(partition, &reason);
                    }
                    if started.elapsed() >= self.limits.max_wait {
                        metrics.write_stall_refusals.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("strata_write_stalls_total", "reason" => "l0_files", "action" => "refuse")
                            .increment(1);
                        metrics
                            .write_stall_micros
                            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        return Err(EngineError::ResourceExhausted {
                            kind: Exhausted::WriteStall,
                            msg: format!("write stall: {reason}; nothing was applied"),
                            retry_after_ms: Some(1000),
                        });
                    }
                    strata_clock::sleep(POLL).await;
                }
            }
        }
        let waited = started.elapsed();
        if waited >= Duration::from_millis(1) {
            metrics
                .write_stall_micros
                .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn log(&self, partition: u32, reason: &str) {
        let mut last = self.last_log.lock();
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(strata_clock::now());
            tracing::warn!(partition, reason, "write stall: writes wait for compaction");
        }
    }
}

/// Where writing ran out of space, by the part of the engine that found it.
#[derive(Debug, Default)]
pub(crate) struct DiskSpace {
    wal: Mutex<Option<String>>,
    flush: Mutex<Option<String>>,
}

/// Which part of the engine reports on the disk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Writer {
    Wal,
    Flush,
}

impl DiskSpace {
    fn slot(&self, w: Writer) -> &Mutex<Option<String>> {
        match w {
            Writer::Wal => &self.wal,
            Writer::Flush => &self.flush,
        }
    }

    /// `w` could not write: `why` names the place and the error.
    pub(crate) fn full(&self, w: Writer, why: String) {
        let mut slot = self.slot(w).lock();
        if slot.is_none() {
            tracing::error!(writer = ?w, error = %why, "no space left: new writes are refused until space returns");
        }
        *slot = Some(why);
    }

    /// `w` wrote again.
    pub(crate) fn ok(&self, w: Writer) {
        if self.slot(w).lock().take().is_some() {
            tracing::info!(writer = ?w, "space is back: writes resume");
        }
    }

    /// Refuses a new write while some part of the engine cannot write for lack of space.
    pub(crate) fn check(&self) -> EngineResult<()> {
        let why = self
            .wal
            .lock()
            .clone()
            .or_else(|| self.flush.lock().clone());
        match why {
            None => Ok(()),
            Some(why) => {
                metrics::counter!("strata_write_stalls_total", "reason" => "no_space", "action" => "refuse")
                    .increment(1);
                Err(EngineError::ResourceExhausted {
                    kind: Exhausted::NoSpace,
                    msg: format!("{why}; the write was not applied"),
                    retry_after_ms: Some(1000),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assess_goes_delays_then_stops() {
        let l = StallLimits::default();
        assert_eq!(l.assess(0), Admission::Go);
        assert_eq!(l.assess(19), Admission::Go);
        assert_eq!(l.assess(20), Admission::Delay(Duration::from_millis(1)));
        let Admission::Delay(mid) = l.assess(28) else {
            panic!("expected a delay")
        };
        let Admission::Delay(top) = l.assess(35) else {
            panic!("expected a delay")
        };
        assert!(Duration::from_millis(1) < mid && mid < top && top <= MAX_DELAY);
        assert!(matches!(l.assess(36), Admission::Stop(r) if r.contains("36 L0 files")));
        let off = StallLimits {
            slowdown_l0: 0,
            stop_l0: 0,
            max_wait: Duration::ZERO,
        };
        assert_eq!(off.assess(10_000), Admission::Go);
    }

    #[test]
    fn a_full_disk_refuses_until_every_writer_wrote_again() {
        let d = DiskSpace::default();
        d.check().unwrap();
        d.full(Writer::Wal, "no space left on /x".into());
        d.full(Writer::Flush, "no space left on /x".into());
        let e = d.check().unwrap_err();
        assert!(
            matches!(&e, EngineError::ResourceExhausted { msg, .. } if msg.starts_with("no space left on /x")),
            "{e:?}"
        );
        d.ok(Writer::Wal);
        assert!(d.check().is_err(), "the flush still cannot write");
        d.ok(Writer::Flush);
        d.check().unwrap();
    }

    #[tokio::test]
    async fn a_stop_that_outlasts_the_wait_is_resource_exhausted() {
        let s = WriteStall::new(StallLimits {
            slowdown_l0: 2,
            stop_l0: 3,
            max_wait: Duration::from_millis(60),
        });
        let m = EngineMetrics::default();
        let err = s.admit(0, &m, || 3).await.unwrap_err();
        assert!(
            matches!(&err, EngineError::ResourceExhausted { msg, .. } if msg.starts_with("write stall:")),
            "{err:?}"
        );
        assert_eq!(m.write_stall_refusals.load(Ordering::Relaxed), 1);
        // Compaction catching up lets the write through.
        let s = WriteStall::new(StallLimits {
            max_wait: Duration::from_secs(30),
            ..s.limits
        });
        let n = std::sync::atomic::AtomicUsize::new(5);
        let l0 = || n.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        s.admit(0, &m, l0).await.unwrap();
        assert_eq!(m.write_stall_stops.load(Ordering::Relaxed), 2);
    }
}

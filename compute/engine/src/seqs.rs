//! The engine's sequence numbers, owned by one component so their order is kept in one place.
//!
//! Invariants (the commit loop is the only writer of all three):
//! - `durable` and `visible` advance only when a WAL segment holding every seq up to the new
//!   value has landed ([`Seqs::landed`]); `visible` is raised first, so a reader that sees a
//!   seq as durable also sees it as visible.
//! - `buffered` advances when explicitly buffered writes are acknowledged
//!   ([`Seqs::buffered_acknowledged`]): readers see them at once, but they are not durable
//!   until their group lands, and a crash loses them. A durable write is never visible
//!   through `buffered` before its segment landed: the commit loop raises `buffered` only to
//!   the seq of a buffered batch.
//! - None of them ever goes down.

use crate::memtable::Snap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// Visible, buffered and durable seqs.
#[derive(Debug)]
pub(crate) struct Seqs {
    /// Readers see entries with seq <= this.
    visible: AtomicU64,
    /// Readers also see buffered entries with seq <= this.
    buffered: AtomicU64,
    /// Every seq <= this is in a landed WAL segment (or an SST); watched by the flush task.
    durable: watch::Sender<u64>,
}

impl Seqs {
    /// After recovery: everything up to `recovered` is durable and visible.
    pub(crate) fn new(recovered: u64) -> Self {
        Seqs {
            visible: AtomicU64::new(recovered),
            buffered: AtomicU64::new(0),
            durable: watch::channel(recovered).0,
        }
    }

    /// A WAL segment holding every seq up to `max_seq` landed.
    pub(crate) fn landed(&self, max_seq: u64) {
        self.visible.fetch_max(max_seq, Ordering::SeqCst);
        self.durable.send_modify(|d| *d = (*d).max(max_seq));
    }

    /// Buffered writes up to `max_seq` were acknowledged: visible now, durable later.
    pub(crate) fn buffered_acknowledged(&self, max_seq: u64) {
        self.buffered.fetch_max(max_seq, Ordering::SeqCst);
    }

    /// What a reader may see now.
    pub(crate) fn snapshot(&self) -> Snap {
        Snap {
            durable: self.visible(),
            buffered: self.buffered(),
        }
    }

    pub(crate) fn visible(&self) -> u64 {
        self.visible.load(Ordering::SeqCst)
    }

    pub(crate) fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::SeqCst)
    }

    pub(crate) fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Wakes on every rise of the durable seq.
    pub(crate) fn watch_durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_only_rise_and_buffered_writes_are_visible_but_not_durable() {
        let s = Seqs::new(10);
        assert_eq!((s.visible(), s.durable(), s.buffered()), (10, 10, 0));
        s.buffered_acknowledged(12);
        assert_eq!((s.snapshot().durable, s.snapshot().buffered), (10, 12));
        assert_eq!(s.durable(), 10, "buffered writes are not durable");
        s.landed(15);
        s.landed(11);
        assert_eq!((s.visible(), s.durable()), (15, 15), "seqs never go down");
    }
}

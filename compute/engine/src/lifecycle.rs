//! The engine's lifecycle: open, then either closed (by its owner) or fenced (a newer writer
//! of the partition took over, or the node abandoned it). Fenced is final and wins over
//! closed: a fenced engine never acknowledges again, whatever else happens. The state is one
//! atomic so the commit loop, the flush task and WAL GC read it without a lock; only the
//! transitions below change it.

use std::sync::atomic::{AtomicU8, Ordering};

/// Where an engine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Serving reads and writes.
    Open,
    /// A newer writer fenced this one (or it was abandoned): nothing is acknowledged any more.
    Fenced,
    /// Closed by its owner after a final flush.
    Closed,
}

const OPEN: u8 = 0;
const FENCED: u8 = 1;
const CLOSED: u8 = 2;

/// The lifecycle state, with its transitions.
#[derive(Debug)]
pub(crate) struct Lifecycle(AtomicU8);

impl Lifecycle {
    /// A new engine: open.
    pub(crate) fn new() -> Self {
        Lifecycle(AtomicU8::new(OPEN))
    }

    pub(crate) fn get(&self) -> State {
        match self.0.load(Ordering::Acquire) {
            OPEN => State::Open,
            FENCED => State::Fenced,
            _ => State::Closed,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.get() == State::Open
    }

    pub(crate) fn is_fenced(&self) -> bool {
        self.get() == State::Fenced
    }

    /// Fences the engine, from any state: final.
    pub(crate) fn fence(&self) {
        self.0.store(FENCED, Ordering::Release);
    }

    /// Closes an open engine; a fenced one stays fenced.
    pub(crate) fn close(&self) {
        let _ = self
            .0
            .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_is_final_and_wins_over_closed() {
        let l = Lifecycle::new();
        assert!(l.is_open());
        l.close();
        assert_eq!(l.get(), State::Closed);
        l.fence();
        assert!(l.is_fenced());
        l.close();
        assert!(l.is_fenced(), "closing a fenced engine must not unfence it");
    }
}

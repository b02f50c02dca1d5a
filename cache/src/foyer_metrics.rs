//! A minimal metrics registry handed to foyer so we can see what it otherwise only reports
//! to Prometheus-style registries: entries its disk tier silently dropped, and disk errors.
//!
//! foyer's disk tier drops writes when its submit queue or flush buffer is full (load) and
//! when an entry does not fit its buffer; nothing fails, the entry is just not on disk.
//! Those events are counters labelled `op` in foyer's metric vectors; every other metric
//! goes to a no-op sink.

use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use mixtrics::{
    metrics::{
        BoxedCounter, BoxedCounterVec, BoxedGaugeVec, BoxedHistogramVec, CounterOps, CounterVecOps,
        RegistryOps,
    },
    registry::noop::NoopMetricsRegistry,
};

/// Counters captured from foyer.
#[derive(Debug, Default)]
pub(crate) struct FoyerCounters {
    /// Disk writes dropped: submit queue over its threshold, or flush buffer full.
    pub(crate) disk_write_drops: AtomicU64,
    /// Disk tier load errors.
    pub(crate) disk_errors: AtomicU64,
}

impl FoyerCounters {
    fn slot(&self, vec_name: &str, op: &str) -> Option<&AtomicU64> {
        match (vec_name, op) {
            ("foyer_storage_inner_op_total", "buffer_overflow" | "channel_overflow") => {
                Some(&self.disk_write_drops)
            }
            ("foyer_storage_op_total", "error") => Some(&self.disk_errors),
            _ => None,
        }
    }
}

/// Registry that routes the counters in [`FoyerCounters`] and drops everything else.
#[derive(Debug)]
pub(crate) struct CapturingRegistry {
    counters: Arc<FoyerCounters>,
}

impl CapturingRegistry {
    pub(crate) fn new(counters: Arc<FoyerCounters>) -> Self {
        Self { counters }
    }
}

#[derive(Debug)]
struct CapturingCounterVec {
    name: Cow<'static, str>,
    counters: Arc<FoyerCounters>,
}

#[derive(Debug)]
struct CapturedCounter {
    counters: Arc<FoyerCounters>,
    vec_name: Cow<'static, str>,
    op: Cow<'static, str>,
}

impl CounterOps for CapturedCounter {
    fn increase(&self, val: u64) {
        if let Some(slot) = self.counters.slot(&self.vec_name, &self.op) {
            slot.fetch_add(val, Ordering::Relaxed);
        }
    }
}

impl CounterVecOps for CapturingCounterVec {
    fn counter(&self, labels: &[Cow<'static, str>]) -> BoxedCounter {
        // foyer's label order is `["name", "op"]`.
        match labels.get(1) {
            Some(op) if self.counters.slot(&self.name, op).is_some() => Box::new(CapturedCounter {
                counters: self.counters.clone(),
                vec_name: self.name.clone(),
                op: op.clone(),
            }),
            _ => Box::new(NoopMetricsRegistry),
        }
    }
}

impl RegistryOps for CapturingRegistry {
    fn register_counter_vec(
        &self,
        name: Cow<'static, str>,
        _desc: Cow<'static, str>,
        _label_names: &'static [&'static str],
    ) -> BoxedCounterVec {
        Box::new(CapturingCounterVec {
            name,
            counters: self.counters.clone(),
        })
    }

    fn register_gauge_vec(
        &self,
        _name: Cow<'static, str>,
        _desc: Cow<'static, str>,
        _label_names: &'static [&'static str],
    ) -> BoxedGaugeVec {
        Box::new(NoopMetricsRegistry)
    }

    fn register_histogram_vec(
        &self,
        _name: Cow<'static, str>,
        _desc: Cow<'static, str>,
        _label_names: &'static [&'static str],
    ) -> BoxedHistogramVec {
        Box::new(NoopMetricsRegistry)
    }

    fn register_histogram_vec_with_buckets(
        &self,
        _name: Cow<'static, str>,
        _desc: Cow<'static, str>,
        _label_names: &'static [&'static str],
        _buckets: Vec<f64>,
    ) -> BoxedHistogramVec {
        Box::new(NoopMetricsRegistry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_the_watched_counters() {
        let counters = Arc::new(FoyerCounters::default());
        let reg = CapturingRegistry::new(counters.clone());
        let inner = reg.register_counter_vec("foyer_storage_inner_op_total".into(), "".into(), &[]);
        inner
            .counter(&["x".into(), "buffer_overflow".into()])
            .increase(2);
        inner
            .counter(&["x".into(), "channel_overflow".into()])
            .increase(3);
        inner
            .counter(&["x".into(), "queue_rotate".into()])
            .increase(100);
        let ops = reg.register_counter_vec("foyer_storage_op_total".into(), "".into(), &[]);
        ops.counter(&["x".into(), "error".into()]).increase(1);
        ops.counter(&["x".into(), "hit".into()]).increase(100);
        assert_eq!(counters.disk_write_drops.load(Ordering::Relaxed), 5);
        assert_eq!(counters.disk_errors.load(Ordering::Relaxed), 1);
    }
}

//! Cluster-wide compaction settings from etcd (`strata ctl compaction set`) on top of a
//! worker's own flags: what each field set in etcd means for [`CompactionOptions`] and the
//! snapshot schedule.

use std::time::Duration;

use strata_manifest::etcd::CompactionSettings;

use crate::error::{CompactorError, Result};
use crate::snapshot::SnapshotSchedule;
use crate::{CompactionOptions, Strategy};

/// The window a strategy name gets when neither the settings nor `base` name one (the
/// `--compaction-window-secs` default).
const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

/// `base` (a worker's flags) with every field `s` sets replaced. An error
/// ([`CompactorError::InvalidSettings`]) names the setting that cannot be applied; nothing is
/// half-applied.
pub fn apply_settings(
    s: &CompactionSettings,
    base: &CompactionOptions,
) -> Result<CompactionOptions> {
    let base_window = match base.strategy {
        Strategy::TimeWindow { window_ms } => Duration::from_millis(window_ms),
        _ => DEFAULT_WINDOW,
    };
    if s.window_secs == Some(0) {
        return Err(CompactorError::InvalidSettings(
            "window_secs must be at least 1".into(),
        ));
    }
    let window = s.window_secs.map_or(base_window, Duration::from_secs);
    let mut out = base.clone();
    if let Some(name) = &s.strategy {
        out.strategy = Strategy::parse(name, window)?;
        // A cluster-wide strategy replaces the worker's per-partition flags too, so every
        // worker runs a partition the same way.
        out.strategy_overrides.clear();
    } else if let (Some(_), Strategy::TimeWindow { .. }) = (s.window_secs, out.strategy) {
        out.strategy = Strategy::TimeWindow {
            window_ms: window.as_millis() as u64,
        };
    }
    for (p, name) in &s.strategy_for {
        let st = Strategy::parse(name, window)
            .map_err(|e| CompactorError::InvalidSettings(format!("partition {p}: {e}")))?;
        out.strategy_overrides.insert(*p, st);
    }
    if let Some(n) = s.subcompactions {
        if !(1..=64).contains(&n) {
            return Err(CompactorError::InvalidSettings(format!(
                "subcompactions {n}: must be 1 to 64"
            )));
        }
        out.subcompactions = n as usize;
    }
    Ok(out)
}

/// What partition `p`'s compactor runs by under `o`: two equal fingerprints need no restart.
pub fn fingerprint(o: &CompactionOptions, p: u32) -> String {
    let strategy = o.strategy_overrides.get(&p).unwrap_or(&o.strategy);
    format!("{strategy:?}/{}", o.subcompactions)
}

/// The snapshot schedule: `base` (a worker's flags) with what `s` sets replaced; `every` 0
/// turns it off.
pub fn schedule_with(
    s: Option<&CompactionSettings>,
    base: Option<SnapshotSchedule>,
) -> Option<SnapshotSchedule> {
    let Some(s) = s else { return base };
    let every = match s.snapshot_every_secs {
        Some(0) => return None,
        Some(n) => Duration::from_secs(n),
        None => base?.every,
    };
    let keep = s
        .snapshot_keep_secs
        .map(Duration::from_secs)
        .or(base.map(|b| b.keep))
        .unwrap_or(Duration::from_secs(86_400));
    Some(SnapshotSchedule { every, keep })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_override_only_what_they_set() {
        let base = CompactionOptions {
            subcompactions: 3,
            ..CompactionOptions::default()
        };
        let none = apply_settings(&CompactionSettings::default(), &base).unwrap();
        assert_eq!(none.strategy, Strategy::Leveled);
        assert_eq!(none.subcompactions, 3);
        let s = CompactionSettings {
            strategy: Some("time-window".into()),
            window_secs: Some(60),
            strategy_for: [(7, "size-tiered".to_string())].into(),
            ..Default::default()
        };
        let o = apply_settings(&s, &base).unwrap();
        assert_eq!(o.strategy, Strategy::TimeWindow { window_ms: 60_000 });
        assert_eq!(o.strategy_overrides.get(&7), Some(&Strategy::SizeTiered));
        assert_eq!(o.subcompactions, 3);
        let bad = CompactionSettings {
            strategy_for: [(2, "fastest".to_string())].into(),
            ..Default::default()
        };
        let e = apply_settings(&bad, &base).unwrap_err().to_string();
        assert!(e.contains("partition 2") && e.contains("fastest"), "{e}");
        let bad = CompactionSettings {
            subcompactions: Some(0),
            ..Default::default()
        };
        assert!(apply_settings(&bad, &base).is_err());
    }

    #[test]
    fn the_schedule_follows_the_settings() {
        let base = Some(SnapshotSchedule {
            every: Duration::from_secs(300),
            keep: Duration::from_secs(3600),
        });
        assert_eq!(schedule_with(None, base), base);
        let off = CompactionSettings {
            snapshot_every_secs: Some(0),
            ..Default::default()
        };
        assert_eq!(schedule_with(Some(&off), base), None);
        let on = CompactionSettings {
            snapshot_every_secs: Some(60),
            ..Default::default()
        };
        assert_eq!(
            schedule_with(Some(&on), None),
            Some(SnapshotSchedule {
                every: Duration::from_secs(60),
                keep: Duration::from_secs(86_400)
            })
        );
        let keep = CompactionSettings {
            snapshot_keep_secs: Some(10),
            ..Default::default()
        };
        assert_eq!(
            schedule_with(Some(&keep), None),
            None,
            "keep alone starts nothing"
        );
        assert_eq!(
            schedule_with(Some(&keep), base).map(|s| s.keep),
            Some(Duration::from_secs(10))
        );
    }
}

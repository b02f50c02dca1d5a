//! When to re-read a configuration file (the tokens file, the TLS files): on `SIGHUP`, and on
//! a poll of the file every second (so a change is in force within the seconds the contract
//! allows, on filesystems without change notification too).

use std::time::Duration;

/// What woke a reloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The process got `SIGHUP`: re-read now.
    Hangup,
    /// The poll interval passed: re-read if the file changed.
    Tick,
}

/// The source of [`Trigger`]s of one reloader (each has its own `SIGHUP` stream: every one
/// of them sees every signal).
pub struct Triggers {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
    tick: tokio::time::Interval,
}

impl Triggers {
    /// `SIGHUP`s (where the platform has them and the handler installs) and a tick every
    /// second. Call within a tokio runtime.
    pub fn new() -> Triggers {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Triggers {
            #[cfg(unix)]
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
            tick,
        }
    }

    /// The next trigger.
    pub async fn next(&mut self) -> Trigger {
        #[cfg(unix)]
        let hup = async {
            match self.hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = hup => Trigger::Hangup,
            _ = self.tick.tick() => Trigger::Tick,
        }
    }
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers::new()
    }
}

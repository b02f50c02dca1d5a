//! `strata bench --report-rss PID`: samples a process's resident memory while the benchmark
//! runs, so every run can show the server's memory against its budget (issue 11).
//!
//! Reads `VmRSS` from `/proc/PID/status` every `EVERY`; the peak also comes from `VmHWM`
//! (the kernel's own high-water mark), which catches spikes between samples.

use std::time::{Duration, Instant};

/// How often the sampler reads the process's RSS.
const EVERY: Duration = Duration::from_millis(250);

/// The RSS of one process over a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RssReport {
    pub pid: u32,
    /// Highest RSS seen, bytes: the larger of the samples and the kernel's high-water mark.
    pub peak_bytes: u64,
    /// RSS at the end of the run, bytes.
    pub end_bytes: u64,
    /// `(milliseconds since the start, RSS bytes)`, every 250 ms.
    pub samples: Vec<(u64, u64)>,
    /// CPU time (user + system) the process spent during the run, seconds (`None` when
    /// `/proc/PID/stat` could not be read).
    pub cpu_s: Option<f64>,
}

impl RssReport {
    /// One line for the table.
    pub fn line(&self) -> String {
        format!(
            "server RSS (pid {}): peak {} MiB, end {} MiB, {} samples{}\n",
            self.pid,
            self.peak_bytes >> 20,
            self.end_bytes >> 20,
            self.samples.len(),
            self.cpu_s
                .map(|c| format!("; CPU {c:.2} s"))
                .unwrap_or_default()
        )
    }
}

/// A field of `/proc/PID/status` in bytes (`None` if the process or field is gone).
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// User + system CPU time of `pid` so far, seconds (fields 14 and 15 of `/proc/PID/stat`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// Checks that `pid` can be sampled.
pub fn check(pid: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        status_bytes(pid, "VmRSS:").is_some(),
        "--report-rss {pid}: cannot read /proc/{pid}/status (no such process here?)"
    );
    Ok(())
}

/// Samples until `stop` resolves; returns what it saw.
pub async fn sample(pid: u32, stop: impl std::future::Future<Output = ()>) -> RssReport {
    let started = Instant::now();
    // Reset the kernel's high-water mark (best effort: "5" clears VmHWM), so the peak is this
    // run's and not that of an earlier workload against the same server.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let cpu0 = cpu_seconds(pid);
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(EVERY);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(b) = status_bytes(pid, "VmRSS:") {
                    samples.push((started.elapsed().as_millis() as u64, b));
                }
            }
            _ = &mut stop => break,
        }
    }
    let end = status_bytes(pid, "VmRSS:").unwrap_or(0);
    let peak = samples
        .iter()
        .map(|s| s.1)
        .chain(status_bytes(pid, "VmHWM:"))
        .max()
        .unwrap_or(end);
    let cpu_s = cpu0.zip(cpu_seconds(pid)).map(|(a, b)| b - a);
    RssReport {
        pid,
        peak_bytes: peak,
        end_bytes: end,
        samples,
        cpu_s,
    }
}

//! `strata ctl lifecycle`: S3 bucket lifecycle rules for a store (docs/lifecycle.md).
//!
//! Strata installs only an abort of incomplete multipart uploads and the cold tier's
//! transition to a colder storage class, and never an expiration: its garbage collector owns
//! deletion (see `strata_objstore::lifecycle`).

use anyhow::{bail, Context, Result};
use strata_objstore::lifecycle::{apply, show, RuleSummary};
use strata_objstore::{LifecyclePlan, S3Settings, TierTransition};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum LifecycleAction {
    /// Install Strata's lifecycle rules on the store's bucket (and the tier's), keeping others.
    ///
    /// Replaces the rules this store installed before (IDs `strata:BUCKET/PREFIX:…`) and
    /// keeps every other rule as it is. Never installs an expiration.
    Apply {
        /// Abort incomplete multipart uploads under the store (and the tier) this many days
        /// after they started (≥ 1).
        #[arg(long, default_value_t = 1)]
        abort_multipart_days: i32,
        /// The cold tier (`s3://BUCKET/PREFIX`, as given to the compactor's `--tier-url`):
        /// its objects move to `--tier-transition-class` after `--tier-transition-days`.
        #[arg(long, requires = "tier_transition_days")]
        tier_url: Option<String>,
        /// Days after creation before a tier object moves (≥ 1; ≥ 30 for STANDARD_IA and
        /// ONEZONE_IA, an S3 rule).
        #[arg(long, requires = "tier_url")]
        tier_transition_days: Option<i32>,
        /// Storage class of the transition: STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING or
        /// GLACIER_IR (GLACIER and DEEP_ARCHIVE are refused: Strata could not read them).
        #[arg(long, default_value = "GLACIER_IR")]
        tier_transition_class: String,
    },
    /// Show the bucket's lifecycle rules.
    Show {
        /// Another bucket to show (e.g. the tier's, `s3://BUCKET[/PREFIX]`) instead of the
        /// store's.
        #[arg(long)]
        url: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `strata ctl lifecycle ACTION` for the store at `store_url` (`s3://BUCKET[/PREFIX]`).
pub async fn run(store_url: &str, s3: S3Settings, action: &LifecycleAction) -> Result<()> {
    refuse_non_s3(store_url)?;
    match action {
        LifecycleAction::Apply {
            abort_multipart_days,
            tier_url,
            tier_transition_days,
            tier_transition_class,
        } => {
            let tier = match (tier_url, tier_transition_days) {
                (Some(url), Some(days)) => {
                    refuse_non_s3(url).context("--tier-url")?;
                    Some(TierTransition {
                        url: url.clone(),
                        after_days: *days,
                        storage_class: tier_transition_class.clone(),
                    })
                }
                (None, None) => None,
                (Some(url), None) => {
                    bail!("--tier-url {url} needs --tier-transition-days (how old a tier object is before it moves)")
                }
                (None, Some(_)) => bail!("--tier-transition-days needs --tier-url"),
            };
            let plan = LifecyclePlan {
                store_url: store_url.to_string(),
                abort_multipart_days: Some(*abort_multipart_days),
                tier,
            };
            strata_objstore::lifecycle::validate(&plan)?;
            let applied = apply(&s3, &plan)
                .await
                .with_context(|| format!("applying lifecycle rules for {store_url}"))?;
            for b in &applied.buckets {
                println!(
                    "bucket {}: installed {}; removed {} earlier rule(s) of this store; kept {} other rule(s)",
                    b.bucket,
                    if b.installed.is_empty() {
                        "nothing".to_string()
                    } else {
                        b.installed.join(", ")
                    },
                    b.removed.len(),
                    b.kept
                );
            }
            for w in &applied.warnings {
                eprintln!("WARNING: {w}");
            }
            Ok(())
        }
        LifecycleAction::Show { url, json } => {
            let url = url.as_deref().unwrap_or(store_url);
            refuse_non_s3(url).context("--url")?;
            let rules = show(&s3, url)
                .await
                .with_context(|| format!("reading the lifecycle rules of {url}"))?;
            if *json {
                let v: Vec<serde_json::Value> = rules.iter().map(rule_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_table(url, &rules);
            }
            Ok(())
        }
    }
}

/// Lifecycle rules are an S3 bucket feature: a local directory (or memory) has none.
fn refuse_non_s3(url: &str) -> Result<()> {
    if url.starts_with("s3://") {
        return Ok(());
    }
    if url.starts_with("memory://") {
        bail!("{url}: an in-memory store has no lifecycle rules (they are an S3 bucket feature)");
    }
    if url.contains("://") && !url.starts_with("file://") {
        bail!("{url}: lifecycle rules need an S3 store, s3://BUCKET[/PREFIX]");
    }
    bail!(
        "{url} is a local directory: lifecycle rules are an S3 bucket feature, there is nothing \
         to configure (use an s3://BUCKET[/PREFIX] store)"
    )
}

fn rule_json(r: &RuleSummary) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "prefix": r.prefix,
        "other_filter": r.other_filter,
        "status": r.status,
        "transitions": r.transitions.iter().map(|t| serde_json::json!({
            "days": t.days,
            "date": t.date,
            "storage_class": t.storage_class,
        })).collect::<Vec<_>>(),
        "abort_multipart_days": r.abort_multipart_days,
        "expiration_days": r.expiration_days,
        "expiration_date": r.expiration_date,
        "strata": r.strata,
    })
}

fn print_table(url: &str, rules: &[RuleSummary]) {
    if rules.is_empty() {
        println!("{url}: the bucket has no lifecycle rules");
        return;
    }
    let rows: Vec<[String; 7]> = rules
        .iter()
        .map(|r| {
            let opt = |v: Option<i32>| v.map_or_else(|| "-".to_string(), |d| format!("{d}d"));
            let transitions = if r.transitions.is_empty() {
                "-".to_string()
            } else {
                r.transitions
                    .iter()
                    .map(|t| {
                        let when = match (t.days, &t.date) {
                            (Some(d), _) => format!("{d}d"),
                            (None, Some(date)) => date.clone(),
                            (None, None) => "?".to_string(),
                        };
                        format!("{}@{when}", t.storage_class)
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let scope = match (&r.prefix, &r.other_filter) {
                (Some(p), _) if p.is_empty() => "(whole bucket)".to_string(),
                (Some(p), _) => p.clone(),
                (None, Some(f)) => f.clone(),
                (None, None) => "?".to_string(),
            };
            let expiry = match (&r.expiration_days, &r.expiration_date) {
                (Some(d), _) => format!("{d}d"),
                (None, Some(date)) => date.clone(),
                (None, None) => "-".to_string(),
            };
            [
                if r.strata { "yes" } else { "" }.to_string(),
                r.id.clone().unwrap_or_else(|| "(none)".to_string()),
                scope,
                r.status.clone(),
                transitions,
                opt(r.abort_multipart_days),
                expiry,
            ]
        })
        .collect();
    let header = [
        "STRATA",
        "ID",
        "PREFIX",
        "STATUS",
        "TRANSITIONS",
        "ABORT-MPU",
        "EXPIRATION",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.to_vec()));
    for row in &rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
    if rules
        .iter()
        .any(|r| r.expiration_days.is_some() || r.expiration_date.is_some())
    {
        println!(
            "note: Strata never installs expirations; one over a Strata store's prefix would \
             delete live SSTs (its garbage collector owns deletion)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_local_stores() {
        for url in [
            "file:///data/objects",
            "/data/objects",
            "memory://",
            "gs://b/p",
        ] {
            let e = refuse_non_s3(url).unwrap_err().to_string();
            assert!(e.contains(url), "{e}");
        }
        refuse_non_s3("s3://b/p").unwrap();
    }
}

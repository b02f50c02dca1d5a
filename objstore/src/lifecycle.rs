//! S3 bucket lifecycle rules for a Strata store, on `aws-sdk-s3` (object_store has no API for
//! bucket configuration).
//!
//! Strata installs at most these rules, each identified by an ID that starts with the marker
//! of the store that installed it, `strata:{BUCKET}/{PREFIX}:` (see [`marker`]):
//! - `…:abort-multipart`: abort incomplete multipart uploads under the store's prefix after N
//!   days (a crashed upload's parts are billed until aborted);
//! - `…:tier-transition`: move objects under the cold tier's prefix to a colder storage class
//!   after N days (the rule goes in the tier's bucket, which may be another bucket);
//! - `…:tier-abort-multipart`: the same abort rule for the tier's prefix, unless the store's
//!   own abort rule already covers it.
//!
//! [`apply`] reads the bucket's configuration, removes only the rules carrying this store's
//! marker, keeps every other rule as it is, adds ours and writes the result back.
//!
//! **Invariant: Strata never installs an Expiration rule on a data prefix.** Strata's garbage
//! collector owns deletion: it deletes an object only when no retained manifest version
//! references it, after a grace period that is part of the safety argument (docs/gc.md). An
//! age-based expiry knows nothing of that: an SST written long ago is still live for as long
//! as a manifest references it, and S3 would delete it. So a plan that would produce an
//! expiration (ours or through a bug) is refused, and a foreign rule that expires objects
//! under the store's or the tier's prefix is reported as a warning.
//!
//! A configuration is read, modified and written back as a whole: S3 offers no conditional
//! write for it, so two tools editing one bucket's rules at the same moment can lose one's
//! change. Run `strata ctl lifecycle apply` from one place.

use crate::S3Settings;
use anyhow::{anyhow, bail, Context};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus, LifecycleRule,
    LifecycleRuleFilter, Transition, TransitionStorageClass,
};
use std::time::Duration;

/// What `strata ctl lifecycle apply` installs for one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecyclePlan {
    /// The store, `s3://BUCKET[/PREFIX]`.
    pub store_url: String,
    /// Abort incomplete multipart uploads under the store (and the tier) after this many days;
    /// `None` installs no abort rule.
    pub abort_multipart_days: Option<i32>,
    /// The cold tier's transition to a colder storage class; `None` installs none.
    pub tier: Option<TierTransition>,
}

/// A transition of the cold tier's objects to a colder storage class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierTransition {
    /// The cold tier, `s3://BUCKET[/PREFIX]`: another bucket, or another prefix of the store's
    /// bucket (the same URL as the compactor's `--tier-url`).
    pub url: String,
    /// Days after an object's creation.
    pub after_days: i32,
    /// Target class, one of [`TRANSITION_CLASSES`].
    pub storage_class: String,
}

/// Storage classes S3 lifecycle transitions accept.
pub const TRANSITION_CLASSES: [&str; 6] = [
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
];

/// Classes whose objects cannot be read (GET) until restored: Strata reads its cold SSTs in
/// place, so a tier must not transition to them.
const ARCHIVE_CLASSES: [&str; 2] = ["GLACIER", "DEEP_ARCHIVE"];

/// S3 refuses transitions to these classes earlier than 30 days after creation.
const MIN_30_DAYS_CLASSES: [&str; 2] = ["STANDARD_IA", "ONEZONE_IA"];

/// S3 holds at most 1,000 rules per bucket configuration.
const MAX_RULES: usize = 1000;

/// S3 limits a rule ID to 255 characters.
const MAX_ID_LEN: usize = 255;

/// The start of every rule ID Strata installs.
pub const STRATA_ID_PREFIX: &str = "strata:";

/// Rule-ID suffixes.
const ABORT: &str = "abort-multipart";
const TIER_TRANSITION: &str = "tier-transition";
const TIER_ABORT: &str = "tier-abort-multipart";

/// A bucket and a key prefix: what an `s3://BUCKET[/PREFIX]` URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The prefix without leading or trailing `/`; empty for the whole bucket.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]` the way the store does (`open_store`): the prefix is
    /// trimmed of slashes. Prefixes are made of `[A-Za-z0-9/_.-]`, like store paths.
    pub fn parse(url: &str) -> anyhow::Result<S3Location> {
        let Some(rest) = url.strip_prefix("s3://") else {
            bail!("{url:?} is not an S3 URL: lifecycle rules need s3://BUCKET[/PREFIX]");
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            bail!("{url:?}: the S3 URL needs a bucket: s3://BUCKET[/PREFIX]");
        }
        if !bucket
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        {
            bail!("{url:?}: bucket name {bucket:?} may only hold letters, digits, '.', '-', '_'");
        }
        let prefix_ok = prefix.is_empty()
            || (!prefix.contains("//")
                && !prefix.split('/').any(|s| s == "." || s == "..")
                && prefix
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'.' | b'-')));
        if !prefix_ok {
            bail!(
                "{url:?}: prefix {prefix:?} may only hold letters, digits and '/', '_', '.', '-' \
                 (no empty, '.' or '..' segments)"
            );
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The lifecycle filter prefix of everything under this location: `PREFIX/`, or `""`
    /// (the whole bucket) for an empty prefix. The trailing slash keeps `a` from matching `ab/`.
    pub fn filter_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The ID prefix of the rules that the store at `store` installs, in whichever bucket they
/// are: `strata:{BUCKET}/{PREFIX}:`. Store prefixes hold no `:`, so no store's marker is the
/// start of another's.
pub fn marker(store: &S3Location) -> String {
    format!("{STRATA_ID_PREFIX}{}/{}:", store.bucket, store.prefix)
}

/// What [`apply`] did to one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketChange {
    /// The bucket.
    pub bucket: String,
    /// IDs of this store's rules that were there before (replaced or dropped).
    pub removed: Vec<String>,
    /// IDs of the rules installed now.
    pub installed: Vec<String>,
    /// Rules of others kept as they were.
    pub kept: usize,
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppliedRules {
    /// One entry per bucket written: the store's, then the tier's if it is another bucket.
    pub buckets: Vec<BucketChange>,
    /// Foreign rules that would delete Strata's data (expirations over its prefixes). They are
    /// kept (they are not ours), but they should be removed by whoever owns them.
    pub warnings: Vec<String>,
}

/// One transition of a rule, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionSummary {
    /// Days after creation, when the transition is by age.
    pub days: Option<i32>,
    /// Date (RFC 3339), when the transition is by date.
    pub date: Option<String>,
    /// Target storage class.
    pub storage_class: String,
}

/// One lifecycle rule of a bucket, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSummary {
    /// Rule ID (S3 makes one up when none is given).
    pub id: Option<String>,
    /// Key prefix the rule applies to (`""`: the whole bucket); `None` when the rule also
    /// filters on something else (then see `other_filter`).
    pub prefix: Option<String>,
    /// Filters beyond a prefix (tags, object sizes), described.
    pub other_filter: Option<String>,
    /// `Enabled` or `Disabled`.
    pub status: String,
    /// Transitions to other storage classes.
    pub transitions: Vec<TransitionSummary>,
    /// Days after which incomplete multipart uploads are aborted.
    pub abort_multipart_days: Option<i32>,
    /// Days after which current objects expire (are deleted).
    pub expiration_days: Option<i32>,
    /// Date (RFC 3339) on which current objects expire.
    pub expiration_date: Option<String>,
    /// Whether Strata installed the rule (its ID starts with `strata:`).
    pub strata: bool,
}

/// An S3 client for bucket configuration, built from explicit settings only: endpoint (then
/// path-style addressing), region (default `us-east-1`), static credentials. Without an access
/// key it falls back to the EC2 instance metadata service, as the object_store client does;
/// no profile files or other `AWS_*` variables are read.
pub fn s3_client(s3: &S3Settings) -> anyhow::Result<aws_sdk_s3::Client> {
    let region = s3.region.clone().unwrap_or_else(|| "us-east-1".to_string());
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(3));
    match (&s3.access_key_id, &s3.secret_access_key) {
        (Some(key), Some(secret)) => {
            b = b.credentials_provider(Credentials::new(
                key.clone(),
                secret.clone(),
                s3.session_token.clone(),
                None,
                "strata-s3-settings",
            ));
        }
        (None, None) => {
            let imds = aws_config::imds::Client::builder()
                .endpoint("http://169.254.169.254")
                .map_err(|e| anyhow!("instance metadata endpoint: {e}"))?
                .build();
            b = b.credentials_provider(
                aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                    .imds_client(imds)
                    .build(),
            );
        }
        (Some(_), None) => bail!("S3 settings have an access key id but no secret access key"),
        (None, Some(_)) => bail!("S3 settings have a secret access key but no access key id"),
    }
    if let Some(ep) = &s3.endpoint {
        b = b.endpoint_url(ep.clone()).force_path_style(true);
    }
    Ok(aws_sdk_s3::Client::from_conf(b.build()))
}

/// Checks a plan without any request: URLs, days, classes, and where the tier lies.
pub fn validate(plan: &LifecyclePlan) -> anyhow::Result<()> {
    rules_by_bucket(plan).map(|_| ())
}

/// The rules a plan installs, per bucket (the store's first). Pure: this is where the plan is
/// validated and where the no-expiration invariant is checked.
fn rules_by_bucket(plan: &LifecyclePlan) -> anyhow::Result<Vec<(String, Vec<LifecycleRule>)>> {
    let store = S3Location::parse(&plan.store_url).context("the store URL")?;
    let mark = marker(&store);
    if mark.len() + TIER_ABORT.len() > MAX_ID_LEN {
        bail!(
            "the store URL {} is too long for a lifecycle rule ID (S3 allows {MAX_ID_LEN} characters)",
            plan.store_url
        );
    }
    let store_fp = store.filter_prefix();
    let mut buckets: Vec<(String, Vec<LifecycleRule>)> = vec![(store.bucket.clone(), Vec::new())];
    if let Some(days) = plan.abort_multipart_days {
        check_days("--abort-multipart-days", days)?;
        buckets[0]
            .1
            .push(abort_rule(format!("{mark}{ABORT}"), &store_fp, days)?);
    }
    if let Some(t) = &plan.tier {
        let tier = S3Location::parse(&t.url).context("--tier-url")?;
        let tier_fp = tier.filter_prefix();
        if tier.bucket == store.bucket && store_fp.starts_with(&tier_fp) {
            if tier_fp == store_fp {
                bail!(
                    "--tier-url {} is the store itself: the cold tier must be another bucket or prefix",
                    t.url
                );
            }
            bail!(
                "--tier-url {} contains the store {}: a transition there would move the store's \
                 WAL and manifests too; the cold tier must be another bucket or a prefix outside \
                 the store",
                t.url,
                plan.store_url
            );
        }
        check_days("--tier-transition-days", t.after_days)?;
        let class = check_class(&t.storage_class)?;
        check_class_days(&class, t.after_days)?;
        let transition = LifecycleRule::builder()
            .id(format!("{mark}{TIER_TRANSITION}"))
            .filter(LifecycleRuleFilter::builder().prefix(&tier_fp).build())
            .status(ExpirationStatus::Enabled)
            .transitions(
                Transition::builder()
                    .days(t.after_days)
                    .storage_class(class)
                    .build(),
            )
            .build()
            .context("building the tier transition rule")?;
        let mut tier_rules = vec![transition];
        // The compactor's copies into the tier may be multipart uploads too; skip the rule
        // when the store's own abort rule covers the tier (overlapping prefixes with the same
        // action are refused by S3).
        let covered = tier.bucket == store.bucket && tier_fp.starts_with(&store_fp);
        if let (Some(days), false) = (plan.abort_multipart_days, covered) {
            tier_rules.push(abort_rule(format!("{mark}{TIER_ABORT}"), &tier_fp, days)?);
        }
        if tier.bucket == store.bucket {
            buckets[0].1.extend(tier_rules);
        } else {
            buckets.push((tier.bucket.clone(), tier_rules));
        }
    }
    for (bucket, rules) in &buckets {
        for r in rules {
            refuse_expiration(r).with_context(|| format!("plan for bucket {bucket}"))?;
        }
    }
    Ok(buckets)
}

fn abort_rule(id: String, filter_prefix: &str, days: i32) -> anyhow::Result<LifecycleRule> {
    LifecycleRule::builder()
        .id(id)
        .filter(LifecycleRuleFilter::builder().prefix(filter_prefix).build())
        .status(ExpirationStatus::Enabled)
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(days)
                .build(),
        )
        .build()
        .context("building the abort-multipart rule")
}

fn check_days(flag: &str, days: i32) -> anyhow::Result<()> {
    if days < 1 {
        bail!("{flag} must be at least 1 (days), got {days}");
    }
    Ok(())
}

/// The transition class named (any case), refused when S3 does not know it as a transition
/// target or when Strata could not read objects stored in it.
fn check_class(name: &str) -> anyhow::Result<TransitionStorageClass> {
    let upper = name.trim().to_ascii_uppercase();
    if !TRANSITION_CLASSES.contains(&upper.as_str()) {
        bail!(
            "--tier-transition-class {name:?} is not an S3 transition class; one of {}",
            TRANSITION_CLASSES.join(", ")
        );
    }
    if ARCHIVE_CLASSES.contains(&upper.as_str()) {
        bail!(
            "--tier-transition-class {upper}: objects in {upper} cannot be read until restored, \
             and Strata reads its cold SSTs in place (reads of tiered SSTs would fail); use \
             GLACIER_IR (millisecond reads), STANDARD_IA, ONEZONE_IA or INTELLIGENT_TIERING"
        );
    }
    Ok(TransitionStorageClass::from(upper.as_str()))
}

/// A check of the days of a transition that S3 constrains by class.
fn check_class_days(class: &TransitionStorageClass, days: i32) -> anyhow::Result<()> {
    if MIN_30_DAYS_CLASSES.contains(&class.as_str()) && days < 30 {
        bail!(
            "--tier-transition-days {days}: S3 requires objects to be at least 30 days old \
             before a transition to {}; use --tier-transition-days 30 or more (or GLACIER_IR / \
             INTELLIGENT_TIERING, which have no minimum)",
            class.as_str()
        );
    }
    Ok(())
}

/// The invariant: no rule of ours deletes current objects.
fn refuse_expiration(rule: &LifecycleRule) -> anyhow::Result<()> {
    let id = rule.id().unwrap_or("(no id)");
    if let Some(e) = rule.expiration() {
        if e.days().is_some() || e.date().is_some() {
            bail!(
                "refusing rule {id}: it has an Expiration; Strata's garbage collector owns \
                 deletion, and a lifecycle expiry would delete SSTs that manifests still reference"
            );
        }
    }
    if rule.noncurrent_version_expiration().is_some() {
        bail!("refusing rule {id}: Strata installs no expirations of any kind");
    }
    Ok(())
}

/// The result of merging our rules into a bucket's configuration.
#[derive(Debug)]
struct Merged {
    rules: Vec<LifecycleRule>,
    removed: Vec<String>,
    kept: usize,
}

/// Keeps every rule of `existing` whose ID does not start with `mark`, drops the others, and
/// appends `ours` (which must all carry `mark` and expire nothing).
fn merge_rules(
    existing: &[LifecycleRule],
    mark: &str,
    ours: Vec<LifecycleRule>,
) -> anyhow::Result<Merged> {
    for r in &ours {
        if !r.id().is_some_and(|id| id.starts_with(mark)) {
            bail!(
                "internal: rule {:?} does not carry the store's marker {mark:?}",
                r.id()
            );
        }
        refuse_expiration(r)?;
    }
    let (mine, foreign): (Vec<&LifecycleRule>, Vec<&LifecycleRule>) = existing
        .iter()
        .partition(|r| r.id().is_some_and(|id| id.starts_with(mark)));
    let kept = foreign.len();
    let mut rules: Vec<LifecycleRule> = foreign.into_iter().cloned().collect();
    rules.extend(ours);
    if rules.len() > MAX_RULES {
        bail!(
            "the bucket would hold {} lifecycle rules; S3 allows {MAX_RULES}",
            rules.len()
        );
    }
    Ok(Merged {
        rules,
        removed: mine
            .iter()
            .map(|r| r.id().unwrap_or_default().to_string())
            .collect(),
        kept,
    })
}

/// The prefix a rule's filter selects, when the rule selects by prefix only (`""`: the whole
/// bucket), and a description of any other filter.
fn rule_scope(rule: &LifecycleRule) -> (Option<String>, Option<String>) {
    #[expect(
        deprecated,
        reason = "rules written with the legacy top-level prefix still apply"
    )]
    let legacy = rule.prefix();
    let Some(f) = rule.filter() else {
        return (Some(legacy.unwrap_or_default().to_string()), None);
    };
    let mut other = Vec::new();
    let mut prefix = f.prefix().map(str::to_string);
    if let Some(t) = f.tag() {
        other.push(format!("tag {}={}", t.key(), t.value()));
    }
    if let Some(n) = f.object_size_greater_than() {
        other.push(format!("size > {n}"));
    }
    if let Some(n) = f.object_size_less_than() {
        other.push(format!("size < {n}"));
    }
    if let Some(and) = f.and() {
        if let Some(p) = and.prefix() {
            prefix = Some(p.to_string());
        }
        for t in and.tags() {
            other.push(format!("tag {}={}", t.key(), t.value()));
        }
        if let Some(n) = and.object_size_greater_than() {
            other.push(format!("size > {n}"));
        }
        if let Some(n) = and.object_size_less_than() {
            other.push(format!("size < {n}"));
        }
    }
    let prefix = prefix.unwrap_or_default();
    if other.is_empty() {
        (Some(prefix), None)
    } else {
        let desc = if prefix.is_empty() {
            other.join(" and ")
        } else {
            format!("prefix {prefix:?} and {}", other.join(" and "))
        };
        (None, Some(desc))
    }
}

/// The key prefix a rule may reach: its prefix, also when it filters on more than a prefix
/// (a tag or size filter narrows it further, but cannot be ruled out here).
fn reach(rule: &LifecycleRule) -> String {
    #[expect(
        deprecated,
        reason = "rules written with the legacy top-level prefix still apply"
    )]
    let legacy = rule.prefix();
    match rule.filter() {
        None => legacy.unwrap_or_default().to_string(),
        Some(f) => f
            .prefix()
            .or_else(|| f.and().and_then(|a| a.prefix()))
            .unwrap_or_default()
            .to_string(),
    }
}

/// Warnings about enabled foreign rules that expire current objects under `data` prefixes.
fn expiry_warnings(bucket: &str, rules: &[LifecycleRule], data: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rules {
        if r.status() != &ExpirationStatus::Enabled {
            continue;
        }
        let Some(e) = r.expiration() else { continue };
        if e.days().is_none() && e.date().is_none() {
            continue; // only removes expired delete markers
        }
        let reach = reach(r);
        for d in data {
            if d.starts_with(&reach) || reach.starts_with(d.as_str()) {
                out.push(format!(
                    "bucket {bucket}: rule {} expires objects under {reach:?}, which overlaps \
                     Strata's data under {d:?}: S3 would delete live SSTs; Strata's garbage \
                     collector owns deletion, remove that rule or narrow its prefix",
                    r.id().unwrap_or("(no id)")
                ));
                break;
            }
        }
    }
    out
}

fn summarize(rule: &LifecycleRule) -> RuleSummary {
    let (prefix, other_filter) = rule_scope(rule);
    let fmt_date = |d: &aws_sdk_s3::primitives::DateTime| {
        d.fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
            .unwrap_or_else(|_| d.to_string())
    };
    RuleSummary {
        id: rule.id().map(str::to_string),
        prefix,
        other_filter,
        status: rule.status().as_str().to_string(),
        transitions: rule
            .transitions()
            .iter()
            .map(|t| TransitionSummary {
                days: t.days(),
                date: t.date().map(fmt_date),
                storage_class: t
                    .storage_class()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_default(),
            })
            .collect(),
        abort_multipart_days: rule
            .abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation()),
        expiration_days: rule.expiration().and_then(|e| e.days()),
        expiration_date: rule.expiration().and_then(|e| e.date()).map(fmt_date),
        strata: rule.id().is_some_and(|id| id.starts_with(STRATA_ID_PREFIX)),
    }
}

/// A bucket's current lifecycle configuration: its rules (empty when it has none) and its
/// transition minimum object size (kept as is when the configuration is written back).
async fn read_config(
    client: &aws_sdk_s3::Client,
    bucket: &str,
) -> anyhow::Result<(
    Vec<LifecycleRule>,
    Option<aws_sdk_s3::types::TransitionDefaultMinimumObjectSize>,
)> {
    match client
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => Ok((
            out.rules().to_vec(),
            out.transition_default_minimum_object_size().cloned(),
        )),
        Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => Ok((Vec::new(), None)),
        Err(e) => Err(anyhow!(
            "reading the lifecycle configuration of bucket {bucket}: {}",
            DisplayErrorContext(&e)
        )),
    }
}

/// Installs the plan's rules: for each bucket concerned (the store's, and the tier's when it
/// is another bucket), reads the configuration, replaces this store's rules (and only them)
/// with the plan's, keeps all others, and writes it back. A plan with no rules for a bucket
/// removes this store's rules there (and the whole configuration if nothing else is left).
///
/// Rules this store installed in a bucket the plan no longer names (an earlier tier bucket)
/// are not touched: remove them there by hand.
pub async fn apply(s3: &S3Settings, plan: &LifecyclePlan) -> anyhow::Result<AppliedRules> {
    let buckets = rules_by_bucket(plan)?;
    let store = S3Location::parse(&plan.store_url)?;
    let mark = marker(&store);
    // Where Strata's data lies, per bucket: what a foreign expiration must not reach.
    let mut data: Vec<(String, String)> = vec![(store.bucket.clone(), store.filter_prefix())];
    if let Some(t) = &plan.tier {
        let tier = S3Location::parse(&t.url)?;
        data.push((tier.bucket.clone(), tier.filter_prefix()));
    }
    let client = s3_client(s3)?;
    let mut applied = AppliedRules::default();
    for (bucket, ours) in buckets {
        let (existing, min_size) = read_config(&client, &bucket).await?;
        let installed: Vec<String> = ours
            .iter()
            .map(|r| r.id().unwrap_or_default().to_string())
            .collect();
        let merged =
            merge_rules(&existing, &mark, ours).with_context(|| format!("bucket {bucket}"))?;
        let done = applied
            .buckets
            .iter()
            .map(|b| b.bucket.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let done = if done.is_empty() {
            String::new()
        } else {
            format!(" (bucket {done} was already updated)")
        };
        if merged.rules.is_empty() {
            if !existing.is_empty() {
                client
                    .delete_bucket_lifecycle()
                    .bucket(&bucket)
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow!(
                            "deleting the lifecycle configuration of bucket {bucket}{done}: {}",
                            DisplayErrorContext(&e)
                        )
                    })?;
            }
        } else {
            let config = BucketLifecycleConfiguration::builder()
                .set_rules(Some(merged.rules.clone()))
                .build()
                .context("building the lifecycle configuration")?;
            client
                .put_bucket_lifecycle_configuration()
                .bucket(&bucket)
                .lifecycle_configuration(config)
                .set_transition_default_minimum_object_size(min_size)
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "writing the lifecycle configuration of bucket {bucket}{done}: {}",
                        DisplayErrorContext(&e)
                    )
                })?;
        }
        let here: Vec<String> = data
            .iter()
            .filter(|(b, _)| *b == bucket)
            .map(|(_, p)| p.clone())
            .collect();
        let foreign: Vec<LifecycleRule> = merged
            .rules
            .iter()
            .filter(|r| !r.id().is_some_and(|id| id.starts_with(&mark)))
            .cloned()
            .collect();
        applied
            .warnings
            .extend(expiry_warnings(&bucket, &foreign, &here));
        applied.buckets.push(BucketChange {
            bucket,
            removed: merged.removed,
            installed,
            kept: merged.kept,
        });
    }
    Ok(applied)
}

/// The lifecycle rules of the bucket `url` names (`s3://BUCKET[/PREFIX]`; the prefix does not
/// narrow the listing), Strata's flagged.
pub async fn show(s3: &S3Settings, url: &str) -> anyhow::Result<Vec<RuleSummary>> {
    let loc = S3Location::parse(url)?;
    let client = s3_client(s3)?;
    let (rules, _) = read_config(&client, &loc.bucket).await?;
    Ok(rules.iter().map(summarize).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::types::LifecycleExpiration;

    fn plan(abort: Option<i32>, tier: Option<(&str, i32, &str)>) -> LifecyclePlan {
        LifecyclePlan {
            store_url: "s3://hot/ks1".into(),
            abort_multipart_days: abort,
            tier: tier.map(|(url, after_days, class)| TierTransition {
                url: url.into(),
                after_days,
                storage_class: class.into(),
            }),
        }
    }

    fn foreign(id: &str, prefix: &str, expire_days: Option<i32>) -> LifecycleRule {
        let mut b = LifecycleRule::builder()
            .id(id)
            .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
            .status(ExpirationStatus::Enabled);
        if let Some(d) = expire_days {
            b = b.expiration(LifecycleExpiration::builder().days(d).build());
        }
        b.build().expect("rule")
    }

    fn ids(rules: &[LifecycleRule]) -> Vec<&str> {
        rules.iter().map(|r| r.id().unwrap_or("")).collect()
    }

    fn err(p: &LifecyclePlan) -> String {
        format!("{:#}", validate(p).expect_err("should be refused"))
    }

    #[test]
    fn parses_urls() {
        let l = S3Location::parse("s3://b/a/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("b", "a/b"));
        assert_eq!(l.filter_prefix(), "a/b/");
        assert_eq!(l.url(), "s3://b/a/b");
        let l = S3Location::parse("s3://b").unwrap();
        assert_eq!(l.filter_prefix(), "");
        assert_eq!(S3Location::parse("s3://b/").unwrap().prefix, "");
        for bad in [
            "file:///tmp/x",
            "/tmp/x",
            "s3://",
            "s3:///p",
            "s3://b/a//c",
            "s3://b/a:c",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            marker(&S3Location::parse("s3://b/p").unwrap()),
            "strata:b/p:"
        );
    }

    #[test]
    fn plan_rules_store_and_other_bucket_tier() {
        let buckets =
            rules_by_bucket(&plan(Some(2), Some(("s3://cold/ks1", 30, "standard_ia")))).unwrap();
        assert_eq!(buckets.len(), 2);
        let (b, rules) = &buckets[0];
        assert_eq!(b, "hot");
        assert_eq!(ids(rules), ["strata:hot/ks1:abort-multipart"]);
        let f = rules[0].filter().unwrap();
        assert_eq!(f.prefix(), Some("ks1/"));
        assert_eq!(
            rules[0]
                .abort_incomplete_multipart_upload()
                .unwrap()
                .days_after_initiation(),
            Some(2)
        );
        let (b, rules) = &buckets[1];
        assert_eq!(b, "cold");
        assert_eq!(
            ids(rules),
            [
                "strata:hot/ks1:tier-transition",
                "strata:hot/ks1:tier-abort-multipart"
            ]
        );
        assert_eq!(rules[0].filter().unwrap().prefix(), Some("ks1/"));
        let t = &rules[0].transitions()[0];
        assert_eq!(t.days(), Some(30));
        assert_eq!(t.storage_class(), Some(&TransitionStorageClass::StandardIa));
        for r in buckets.iter().flat_map(|(_, r)| r) {
            assert!(r.expiration().is_none() && r.noncurrent_version_expiration().is_none());
            assert_eq!(r.status(), &ExpirationStatus::Enabled);
        }
    }

    #[test]
    fn plan_rules_same_bucket_and_whole_bucket() {
        // Tier under another prefix of the same bucket: one bucket, three rules.
        let b = rules_by_bucket(&plan(Some(1), Some(("s3://hot/cold", 1, "GLACIER_IR")))).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].1.len(), 3);
        // A store over the whole bucket: empty-prefix filter; it covers the tier, so no second
        // abort rule (S3 refuses overlapping prefixes for the same action).
        let mut p = plan(Some(1), Some(("s3://hot/cold", 1, "GLACIER_IR")));
        p.store_url = "s3://hot".into();
        let b = rules_by_bucket(&p).unwrap();
        assert_eq!(
            ids(&b[0].1),
            ["strata:hot/:abort-multipart", "strata:hot/:tier-transition"]
        );
        assert_eq!(b[0].1[0].filter().unwrap().prefix(), Some(""));
        assert_eq!(b[0].1[1].filter().unwrap().prefix(), Some("cold/"));
        // Nothing asked: no rules (apply then removes ours).
        let b = rules_by_bucket(&plan(None, None)).unwrap();
        assert_eq!(b, vec![("hot".to_string(), vec![])]);
    }

    #[test]
    fn validation_names_flags_and_limits() {
        assert!(err(&plan(Some(0), None)).contains("--abort-multipart-days must be at least 1"));
        assert!(err(&plan(None, Some(("s3://c/x", 0, "GLACIER_IR"))))
            .contains("--tier-transition-days must be at least 1"));
        let e = err(&plan(None, Some(("s3://c/x", 29, "STANDARD_IA"))));
        assert!(
            e.contains("at least 30 days") && e.contains("STANDARD_IA"),
            "{e}"
        );
        assert!(err(&plan(None, Some(("s3://c/x", 10, "ONEZONE_IA")))).contains("30 days"));
        validate(&plan(None, Some(("s3://c/x", 30, "ONEZONE_IA")))).unwrap();
        validate(&plan(None, Some(("s3://c/x", 1, "INTELLIGENT_TIERING")))).unwrap();
        let e = err(&plan(None, Some(("s3://c/x", 30, "REDUCED_REDUNDANCY"))));
        assert!(
            e.contains("--tier-transition-class") && e.contains("GLACIER_IR"),
            "{e}"
        );
        for archive in ["GLACIER", "DEEP_ARCHIVE"] {
            let e = err(&plan(None, Some(("s3://c/x", 30, archive))));
            assert!(e.contains("cannot be read until restored"), "{e}");
        }
        assert!(err(&plan(None, Some(("s3://hot/ks1/", 30, "GLACIER_IR"))))
            .contains("is the store itself"));
        assert!(
            err(&plan(None, Some(("s3://hot", 30, "GLACIER_IR")))).contains("contains the store")
        );
        assert!(err(&plan(None, Some(("file:///cold", 30, "GLACIER_IR")))).contains("--tier-url"));
        let mut p = plan(Some(1), None);
        p.store_url = "file:///data".into();
        assert!(err(&p).contains("not an S3 URL"));
    }

    #[test]
    fn merge_keeps_foreign_and_replaces_ours() {
        let mark = "strata:hot/ks1:";
        let existing = vec![
            foreign("logs-expiry", "logs/", Some(7)),
            foreign("strata:hot/ks1:abort-multipart", "ks1/", None),
            foreign("strata:hot/ks1:old-kind", "ks1/", None),
            // Another store's rules, even one whose prefix starts like ours, stay.
            foreign("strata:hot/ks10:abort-multipart", "ks10/", None),
            foreign("strata:hot/ks1/sub:abort-multipart", "ks1/sub/", None),
        ];
        let ours = rules_by_bucket(&plan(Some(3), None)).unwrap().remove(0).1;
        let m = merge_rules(&existing, mark, ours).unwrap();
        assert_eq!(
            ids(&m.rules),
            [
                "logs-expiry",
                "strata:hot/ks10:abort-multipart",
                "strata:hot/ks1/sub:abort-multipart",
                "strata:hot/ks1:abort-multipart"
            ]
        );
        assert_eq!(m.kept, 3);
        assert_eq!(
            m.removed,
            ["strata:hot/ks1:abort-multipart", "strata:hot/ks1:old-kind"]
        );
        // The foreign rule is untouched, expiration included.
        assert_eq!(m.rules[0], existing[0]);
        // Merging again replaces, never duplicates.
        let again = rules_by_bucket(&plan(Some(5), None)).unwrap().remove(0).1;
        let m2 = merge_rules(&m.rules, mark, again).unwrap();
        assert_eq!(m2.rules.len(), 4);
        assert_eq!(
            m2.rules[3]
                .abort_incomplete_multipart_upload()
                .unwrap()
                .days_after_initiation(),
            Some(5)
        );
        // An empty plan removes ours only.
        let m3 = merge_rules(&m2.rules, mark, vec![]).unwrap();
        assert_eq!(m3.rules.len(), 3);
    }

    #[test]
    fn merge_refuses_expirations_and_foreign_ids() {
        let mark = "strata:hot/ks1:";
        let expiring = foreign("strata:hot/ks1:bad", "ks1/", Some(30));
        let e = merge_rules(&[], mark, vec![expiring])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Expiration") && e.contains("garbage collector"),
            "{e}"
        );
        let noncurrent = LifecycleRule::builder()
            .id("strata:hot/ks1:nc")
            .status(ExpirationStatus::Enabled)
            .noncurrent_version_expiration(
                aws_sdk_s3::types::NoncurrentVersionExpiration::builder()
                    .noncurrent_days(1)
                    .build(),
            )
            .build()
            .unwrap();
        assert!(merge_rules(&[], mark, vec![noncurrent]).is_err());
        // Removing expired delete markers only deletes nothing: allowed.
        let markers = LifecycleRule::builder()
            .id("strata:hot/ks1:markers")
            .status(ExpirationStatus::Enabled)
            .expiration(
                LifecycleExpiration::builder()
                    .expired_object_delete_marker(true)
                    .build(),
            )
            .build()
            .unwrap();
        merge_rules(&[], mark, vec![markers]).unwrap();
        let unmarked = foreign("mine", "ks1/", None);
        assert!(merge_rules(&[], mark, vec![unmarked]).is_err());
        let too_many: Vec<LifecycleRule> = (0..MAX_RULES)
            .map(|i| foreign(&format!("r{i}"), &format!("p{i}/"), None))
            .collect();
        let ours = rules_by_bucket(&plan(Some(1), None)).unwrap().remove(0).1;
        assert!(merge_rules(&too_many, mark, ours)
            .unwrap_err()
            .to_string()
            .contains("1000"));
    }

    #[test]
    fn warns_about_foreign_expirations_over_data() {
        let rules = vec![
            foreign("logs", "logs/", Some(7)),
            foreign("all", "", Some(90)),
            foreign("inside", "ks1/tmp/", Some(1)),
            foreign("sibling", "ks10/", Some(1)),
            foreign("no-expiry", "ks1/", None),
        ];
        let w = expiry_warnings("hot", &rules, &["ks1/".to_string()]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("rule all") && w[1].contains("rule inside"),
            "{w:?}"
        );
    }

    #[test]
    fn summaries() {
        let ours = rules_by_bucket(&plan(Some(1), Some(("s3://hot/cold", 40, "GLACIER_IR"))))
            .unwrap()
            .remove(0)
            .1;
        let s: Vec<RuleSummary> = ours.iter().map(summarize).collect();
        assert!(s.iter().all(|r| r.strata && r.status == "Enabled"));
        assert_eq!(s[0].abort_multipart_days, Some(1));
        assert_eq!(s[0].prefix.as_deref(), Some("ks1/"));
        assert_eq!(s[1].prefix.as_deref(), Some("cold/"));
        assert_eq!(
            s[1].transitions,
            vec![TransitionSummary {
                days: Some(40),
                date: None,
                storage_class: "GLACIER_IR".into()
            }]
        );
        let f = summarize(&foreign("logs", "logs/", Some(7)));
        assert!(!f.strata);
        assert_eq!(f.expiration_days, Some(7));
        let tagged = LifecycleRule::builder()
            .id("tagged")
            .status(ExpirationStatus::Disabled)
            .filter(
                LifecycleRuleFilter::builder()
                    .tag(
                        aws_sdk_s3::types::Tag::builder()
                            .key("k")
                            .value("v")
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .build()
            .unwrap();
        let t = summarize(&tagged);
        assert_eq!(t.prefix, None);
        assert_eq!(t.other_filter.as_deref(), Some("tag k=v"));
        assert_eq!(t.status, "Disabled");
    }
}

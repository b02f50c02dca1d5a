//! gRPC metadata names. Requests and answers carry them as ASCII values.

/// On `UNAVAILABLE` answers whose request was certainly not applied: a client may resend it,
/// even a non-idempotent write, to the partition's owner.
pub const RETRY_SAFE: &str = "x-strata-retry-safe";
/// On `RESOURCE_EXHAUSTED` answers: milliseconds after which a retry may succeed.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// On requests, with a tokens file on the server: `Bearer TOKEN`. A node forwarding a request
/// passes its client's on, and the owner checks it again.
pub const AUTHORIZATION: &str = "authorization";
/// On every non-OK answer of the server: a machine-readable reason (see [`crate::reason`]), so
/// clients never parse messages.
pub const ERROR_REASON: &str = "strata-error-reason";
/// Session token: write responses carry `PARTITION:VERSION`; an eventually consistent read that
/// sends back the tokens it holds (comma-separated) sees at least those writes.
pub const SESSION: &str = "x-strata-session";
/// On requests one node forwards to another: the partition it is meant for. A node that gets a
/// forwarded request it does not own answers (retry-safe) `UNAVAILABLE` instead of forwarding
/// again, so requests never loop.
pub const FORWARDED_PARTITION: &str = "x-strata-forwarded-partition";
/// On BatchGets one node forwards to another: the bytes of results the forwarding node has room
/// for (its share of the reply budget).
pub const REPLY_BUDGET: &str = "x-strata-reply-budget";
/// On retry-safe errors: the request was grouped by an outdated partition map.
pub const MAP_CHANGED: &str = "x-strata-map-changed";
/// Response metadata: the partition that served the request.
pub const PARTITION: &str = "x-strata-partition";
/// Eventually consistent read answers: every write of the partition up to this seq is reflected.
pub const FLUSHED_SEQ: &str = "x-strata-flushed-seq";
/// Eventually consistent read answers: writes the owner had made durable beyond that, when it
/// last published its progress (about once a second).
pub const STALE_SEQS: &str = "x-strata-stale-seqs";
/// Eventually consistent read answers: age of the data read, in milliseconds (since the flush).
pub const STALE_MS: &str = "x-strata-stale-ms";
/// Response metadata: the address of the partition's owner (where a smart client should send
/// the key next time).
pub const OWNER: &str = "x-strata-owner";

//! Machine-readable reasons for non-OK answers, sent in the [`ERROR_REASON`] metadata of every
//! error status the server returns. The gRPC code says what kind of failure it is (and stays what
//! it always was); the reason says which one, so a client branches on it instead of parsing the
//! message. Reasons are `SCREAMING_SNAKE_CASE` ASCII; new ones may be added, none renamed.

use crate::headers::ERROR_REASON;
use tonic::Status;

/// `INVALID_ARGUMENT`: a request field is malformed (the message names the field).
pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
/// `INVALID_ARGUMENT`: a key is empty or longer than the limit.
pub const KEY_TOO_LARGE: &str = "KEY_TOO_LARGE";
/// `INVALID_ARGUMENT`: a value is longer than the limit.
pub const VALUE_TOO_LARGE: &str = "VALUE_TOO_LARGE";
/// `INVALID_ARGUMENT`: a batch names more operations than the limit.
pub const BATCH_TOO_LARGE: &str = "BATCH_TOO_LARGE";
/// `INVALID_ARGUMENT`: the key is in the reserved system key space.
pub const RESERVED_KEY: &str = "RESERVED_KEY";
/// `FAILED_PRECONDITION`: a write condition (`if_absent`, `if_version`) did not hold.
pub const CONDITION_FAILED: &str = "CONDITION_FAILED";
/// `FAILED_PRECONDITION`: the request is not allowed in this deployment or state (the message
/// says why).
pub const FAILED_PRECONDITION: &str = "FAILED_PRECONDITION";
/// `ABORTED`: a transaction conflicted with another one or was aborted; retry it whole.
pub const TXN_CONFLICT: &str = "TXN_CONFLICT";
/// `ABORTED` of another kind (the message says which).
pub const ABORTED: &str = "ABORTED";
/// `ABORTED`: a scan's snapshot grew too old to continue; restart it.
pub const SNAPSHOT_TOO_OLD: &str = "SNAPSHOT_TOO_OLD";
/// `UNAVAILABLE` (retry-safe): this node does not own the partition.
pub const NOT_OWNER: &str = "NOT_OWNER";
/// `UNAVAILABLE` (retry-safe): the partition is being split.
pub const SPLITTING: &str = "SPLITTING";
/// `UNAVAILABLE`: this node was fenced by a newer owner of the partition.
pub const FENCED: &str = "FENCED";
/// `UNAVAILABLE` (retry-safe): a key is locked by a transaction being committed.
pub const LOCKED: &str = "LOCKED";
/// `UNAVAILABLE` (retry-safe): the server is shutting down.
pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
/// `UNAVAILABLE` (retry-safe): the server is starting (recovering or joining its cluster), or
/// the partition is opening on its new owner.
pub const NOT_READY: &str = "NOT_READY";
/// `UNAVAILABLE` (retry-safe): a transaction's partitions aborted it because it took too
/// long; nothing was applied.
pub const TXN_TIMED_OUT: &str = "TXN_TIMED_OUT";
/// `UNAVAILABLE`: the request's deadline passed before the partition or its storage answered;
/// its outcome is unknown.
pub const DEADLINE: &str = "DEADLINE";
/// `UNAVAILABLE` (retry-safe): the request was grouped by an outdated partition map.
pub const MAP_CHANGED: &str = "MAP_CHANGED";
/// `UNAVAILABLE`: storage (object store, etcd) could not be reached; a write's outcome is unknown.
pub const STORAGE_UNAVAILABLE: &str = "STORAGE_UNAVAILABLE";
/// `UNAVAILABLE` of another kind (the message says which).
pub const UNAVAILABLE: &str = "UNAVAILABLE";
/// `RESOURCE_EXHAUSTED`: writes are held back by compaction or flush debt past its hard limit.
pub const WRITE_STALL: &str = "WRITE_STALL";
/// `RESOURCE_EXHAUSTED`: a disk is full.
pub const NO_SPACE: &str = "NO_SPACE";
/// `RESOURCE_EXHAUSTED`: a request or reply is larger than the message limit.
pub const MESSAGE_TOO_LARGE: &str = "MESSAGE_TOO_LARGE";
/// `RESOURCE_EXHAUSTED` of another kind.
pub const RESOURCE_EXHAUSTED: &str = "RESOURCE_EXHAUSTED";
/// `DATA_LOSS`: stored data failed a checksum or could not be decoded (the message names it).
pub const DATA_CORRUPTION: &str = "DATA_CORRUPTION";
/// `INTERNAL`: a bug or an unexpected failure.
pub const INTERNAL: &str = "INTERNAL";
/// `UNAUTHENTICATED`: the server has a tokens file and the request carried no token, or one
/// it does not know (`authorization: Bearer TOKEN`).
pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
/// `PERMISSION_DENIED`: the token is valid but lacks the right the call needs (read, write,
/// admin), or a node-to-node call came without a peer's credentials.
pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
/// `RESOURCE_EXHAUSTED`: the namespace is over one of its quotas (requests or written bytes
/// per second, stored bytes) or its share of the node's in-flight bytes; `retry-after-ms`
/// says when to try again.
pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
/// `NOT_FOUND`: the named object (a snapshot, a job, a keyspace) does not exist.
pub const NOT_FOUND: &str = "NOT_FOUND";

/// Every reason above.
pub const ALL: &[&str] = &[
    INVALID_ARGUMENT,
    KEY_TOO_LARGE,
    VALUE_TOO_LARGE,
    BATCH_TOO_LARGE,
    RESERVED_KEY,
    CONDITION_FAILED,
    FAILED_PRECONDITION,
    TXN_CONFLICT,
    ABORTED,
    SNAPSHOT_TOO_OLD,
    NOT_OWNER,
    SPLITTING,
    FENCED,
    LOCKED,
    SHUTTING_DOWN,
    NOT_READY,
    TXN_TIMED_OUT,
    DEADLINE,
    MAP_CHANGED,
    STORAGE_UNAVAILABLE,
    UNAVAILABLE,
    WRITE_STALL,
    NO_SPACE,
    MESSAGE_TOO_LARGE,
    RESOURCE_EXHAUSTED,
    DATA_CORRUPTION,
    INTERNAL,
    NOT_FOUND,
    UNAUTHENTICATED,
    PERMISSION_DENIED,
    QUOTA_EXCEEDED,
];

/// The reason named `s`, if it is one of [`ALL`] (to pass on a reason a peer answered with).
pub fn known(s: &str) -> Option<&'static str> {
    ALL.iter().copied().find(|r| *r == s)
}

/// `s` with `reason` in its [`ERROR_REASON`] metadata (replacing any reason it had).
pub fn with_reason(mut s: Status, reason: &'static str) -> Status {
    s.metadata_mut().insert(
        ERROR_REASON,
        tonic::metadata::MetadataValue::from_static(reason),
    );
    s
}

/// The reason the server gave for `s`, if any.
pub fn reason_of(s: &Status) -> Option<&str> {
    s.metadata().get(ERROR_REASON).and_then(|v| v.to_str().ok())
}

/// `s` as it is if it has a reason, else with the default reason of its code
/// ([`default_for`]): for errors passed on from elsewhere (a peer's stream, a transport
/// failure) that must leave the server with a reason like every other.
pub fn or_default(s: Status) -> Status {
    if reason_of(&s).is_some() {
        return s;
    }
    match default_for(s.code()) {
        Some(why) => with_reason(s, why),
        None => s,
    }
}

/// The reason a status of this code gets when nothing more specific is known.
pub fn default_for(code: tonic::Code) -> Option<&'static str> {
    use tonic::Code as C;
    Some(match code {
        C::Ok => return None,
        C::InvalidArgument | C::OutOfRange => INVALID_ARGUMENT,
        C::FailedPrecondition => FAILED_PRECONDITION,
        C::Aborted => ABORTED,
        C::Unavailable => UNAVAILABLE,
        C::ResourceExhausted => RESOURCE_EXHAUSTED,
        C::DataLoss => DATA_CORRUPTION,
        C::NotFound => NOT_FOUND,
        C::Unauthenticated => UNAUTHENTICATED,
        C::PermissionDenied => PERMISSION_DENIED,
        C::Internal | C::Unknown => INTERNAL,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_unique_ascii_and_round_trip_through_metadata() {
        let mut seen = std::collections::HashSet::new();
        for r in ALL {
            assert!(seen.insert(*r), "{r} twice");
            assert!(
                r.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{r}"
            );
            let s = with_reason(Status::internal("x"), known(r).expect("known"));
            assert_eq!(reason_of(&s), Some(*r));
        }
        let kept = or_default(with_reason(Status::unavailable("x"), NOT_OWNER));
        assert_eq!(reason_of(&kept), Some(NOT_OWNER));
        let filled = or_default(Status::unavailable("transport"));
        assert_eq!(reason_of(&filled), Some(UNAVAILABLE));
    }
}

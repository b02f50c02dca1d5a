//! The service edge of errors: every engine error becomes a gRPC status here, and only here,
//! with its machine-readable reason in the `strata-error-reason` metadata
//! ([`strata_proto::reason`]). The codes are the contract clients were built against and stay
//! what they were; the reason says which failure of that code it is.

use strata_engine::{EngineError, Exhausted};
use strata_proto::reason::{self, with_reason};
use tonic::Status;

pub use strata_proto::headers::{
    RETRY_AFTER_MS as RETRY_AFTER_HEADER, RETRY_SAFE as RETRY_SAFE_HEADER,
};
pub use strata_proto::retry::is_marked_retry_safe as is_retry_safe;

/// The gRPC status an engine error is answered with.
pub fn status(e: EngineError) -> Status {
    match e {
        EngineError::InvalidArgument(m) => {
            with_reason(Status::invalid_argument(m), reason::INVALID_ARGUMENT)
        }
        EngineError::FailedPrecondition(m) => {
            with_reason(Status::failed_precondition(m), reason::CONDITION_FAILED)
        }
        EngineError::Unavailable(m) => with_reason(Status::unavailable(m), reason::UNAVAILABLE),
        EngineError::StorageUnavailable(m) => {
            with_reason(Status::unavailable(m), reason::STORAGE_UNAVAILABLE)
        }
        EngineError::Closed => retry_safe(reason::SHUTTING_DOWN, "server is shutting down"),
        EngineError::NotServing(m) => retry_safe(reason::NOT_OWNER, m),
        EngineError::Split(m) => retry_safe(reason::SPLITTING, m),
        EngineError::Locked(m) => retry_safe(reason::LOCKED, m),
        EngineError::Fenced {
            msg,
            applied_nothing: true,
        } => retry_safe(reason::FENCED, msg),
        EngineError::Fenced { msg, .. } => with_reason(Status::unavailable(msg), reason::FENCED),
        EngineError::Conflict(m) => with_reason(Status::aborted(m), reason::TXN_CONFLICT),
        EngineError::SnapshotTooOld(m) => with_reason(Status::aborted(m), reason::SNAPSHOT_TOO_OLD),
        EngineError::ResourceExhausted {
            kind,
            msg,
            retry_after_ms,
        } => {
            let why = match kind {
                Exhausted::WriteStall => reason::WRITE_STALL,
                Exhausted::NoSpace => reason::NO_SPACE,
            };
            let mut s = with_reason(Status::resource_exhausted(msg), why);
            if let Some(ms) = retry_after_ms {
                s.metadata_mut()
                    .insert(RETRY_AFTER_HEADER, tonic::metadata::MetadataValue::from(ms));
            }
            s
        }
        EngineError::Corruption(m) => {
            // Operators must learn of corruption from the server, not only from clients:
            // the message names the object.
            // Once per object per `DATA_LOSS_LOG_EVERY`: a client retrying a corrupt key
            // must not flood the log (the count of answers in between is logged with it).
            if let Some(suppressed) = data_loss_log_due(&m) {
                tracing::error!(error = %m, suppressed, "answering DATA_LOSS");
            }
            with_reason(Status::data_loss(m), reason::DATA_CORRUPTION)
        }
        EngineError::Internal(m) => with_reason(Status::internal(m), reason::INTERNAL),
    }
}

/// At most one log line per distinct corruption message in this interval.
const DATA_LOSS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// `Some(answers not logged since the last line)` when this message's DATA_LOSS is due to
/// be logged. The table is bounded (1,024 messages).
fn data_loss_log_due(msg: &str) -> Option<u64> {
    use std::collections::HashMap;
    use std::sync::LazyLock;
    use strata_clock::Instant;
    static LAST: LazyLock<parking_lot::Mutex<HashMap<String, (Instant, u64)>>> =
        LazyLock::new(Default::default);
    let now = strata_clock::now();
    let mut t = LAST.lock();
    if let Some((at, skipped)) = t.get_mut(msg) {
        if now.duration_since(*at) < DATA_LOSS_LOG_EVERY {
            *skipped += 1;
            return None;
        }
        let n = *skipped;
        *at = now;
        *skipped = 0;
        return Some(n);
    }
    if t.len() >= 1024 {
        // Forget what is past its interval first; clear only if that frees nothing.
        t.retain(|_, (at, _)| now.duration_since(*at) < DATA_LOSS_LOG_EVERY);
        if t.len() >= 1024 {
            t.clear();
        }
    }
    t.insert(msg.to_string(), (now, 0));
    Some(0)
}

/// `UNAVAILABLE` marked as safe to retry (nothing was applied), with its reason.
pub fn retry_safe(why: &'static str, msg: impl Into<String>) -> Status {
    with_reason(strata_proto::retry::unavailable_retry_safe(msg), why)
}

/// `UNAVAILABLE` marked as safe to retry: nothing was applied (reason `UNAVAILABLE`; prefer
/// [`retry_safe`] with a specific reason).
pub fn retryable(msg: String) -> Status {
    retry_safe(reason::UNAVAILABLE, msg)
}

/// `INVALID_ARGUMENT` with a specific reason; the message names the field and the limit.
pub fn invalid(why: &'static str, msg: impl Into<String>) -> Status {
    with_reason(Status::invalid_argument(msg), why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_error_gets_its_code_and_a_reason() {
        let cases = [
            (
                EngineError::SnapshotTooOld("old".into()),
                tonic::Code::Aborted,
                reason::SNAPSHOT_TOO_OLD,
                false,
            ),
            (
                EngineError::Conflict("c".into()),
                tonic::Code::Aborted,
                reason::TXN_CONFLICT,
                false,
            ),
            (
                EngineError::Split("s".into()),
                tonic::Code::Unavailable,
                reason::SPLITTING,
                true,
            ),
            (
                EngineError::Fenced {
                    msg: "f".into(),
                    applied_nothing: true,
                },
                tonic::Code::Unavailable,
                reason::FENCED,
                true,
            ),
            (
                EngineError::Fenced {
                    msg: "f".into(),
                    applied_nothing: false,
                },
                tonic::Code::Unavailable,
                reason::FENCED,
                false,
            ),
            (
                EngineError::NotServing("n".into()),
                tonic::Code::Unavailable,
                reason::NOT_OWNER,
                true,
            ),
            (
                EngineError::ResourceExhausted {
                    kind: Exhausted::WriteStall,
                    msg: "write stall: l0".into(),
                    retry_after_ms: Some(5),
                },
                tonic::Code::ResourceExhausted,
                reason::WRITE_STALL,
                false,
            ),
            (
                EngineError::Closed,
                tonic::Code::Unavailable,
                reason::SHUTTING_DOWN,
                true,
            ),
        ];
        for (e, code, why, safe) in cases {
            let s = status(e.clone());
            assert_eq!(s.code(), code, "{e:?}");
            assert_eq!(reason::reason_of(&s), Some(why), "{e:?}");
            assert_eq!(is_retry_safe(&s), safe, "{e:?}");
        }
    }

    #[test]
    fn data_loss_is_logged_once_per_object_per_interval() {
        assert_eq!(data_loss_log_due("sst 1 corrupt (test)"), Some(0));
        assert_eq!(data_loss_log_due("sst 1 corrupt (test)"), None);
        assert_eq!(data_loss_log_due("sst 1 corrupt (test)"), None);
        // Another object is its own line.
        assert_eq!(data_loss_log_due("sst 2 corrupt (test)"), Some(0));
    }
}

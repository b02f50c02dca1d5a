//! Which failed requests certainly applied nothing, and so may be resent — even a
//! non-idempotent write. A request whose outcome is unknown (the connection broke after it was
//! sent, a timeout) is never marked: resending it is the caller's decision.

use crate::headers::RETRY_SAFE;
use tonic::{Code, Status};

/// `UNAVAILABLE` marked as safe to retry: the server applied nothing.
pub fn unavailable_retry_safe(msg: impl Into<String>) -> Status {
    let mut s = Status::unavailable(msg);
    s.metadata_mut()
        .insert(RETRY_SAFE, tonic::metadata::MetadataValue::from_static("1"));
    s
}

/// Whether the server marked `s` as having applied nothing ([`unavailable_retry_safe`]).
pub fn is_marked_retry_safe(s: &Status) -> bool {
    s.code() == Code::Unavailable && s.metadata().get(RETRY_SAFE).is_some()
}

/// Whether a failed attempt certainly applied nothing: the server marked it so, or the
/// connection could not even be opened (the request never left this process).
pub fn is_retry_safe(s: &Status) -> bool {
    if s.code() != Code::Unavailable {
        return false;
    }
    if s.metadata().get(RETRY_SAFE).is_some() {
        return true;
    }
    let msg = format!("{s:?}").to_ascii_lowercase();
    msg.contains("connection refused") || msg.contains("tcp connect error")
}

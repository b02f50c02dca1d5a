//! The service edge of errors: every engine error becomes a gRPC status here, and only here.

use strata_engine::EngineError;
use tonic::Status;

pub use strata_proto::headers::{
    RETRY_AFTER_MS as RETRY_AFTER_HEADER, RETRY_SAFE as RETRY_SAFE_HEADER,
};
pub use strata_proto::retry::is_marked_retry_safe as is_retry_safe;

/// The gRPC status an engine error is answered with.
pub fn status(e: EngineError) -> Status {
    match e {
        EngineError::InvalidArgument(m) => Status::invalid_argument(m),
        EngineError::FailedPrecondition(m) => Status::failed_precondition(m),
        EngineError::Unavailable(m) => Status::unavailable(m),
        EngineError::Closed => retryable("server is shutting down".into()),
        EngineError::NotServing(m) | EngineError::Locked(m) => retryable(m),
        EngineError::Conflict(m) => Status::aborted(m),
        EngineError::ResourceExhausted {
            msg,
            retry_after_ms,
        } => {
            let mut s = Status::resource_exhausted(msg);
            if let Some(ms) = retry_after_ms {
                s.metadata_mut()
                    .insert(RETRY_AFTER_HEADER, tonic::metadata::MetadataValue::from(ms));
            }
            s
        }
        EngineError::Corruption(m) => {
            // Operators must learn of corruption from the server, not only from clients:
            // the message names the object.
            tracing::error!(error = %m, "answering DATA_LOSS");
            Status::data_loss(m)
        }
        EngineError::Internal(m) => Status::internal(m),
    }
}

/// `UNAVAILABLE` marked as safe to retry: nothing was applied.
pub fn retryable(msg: String) -> Status {
    strata_proto::retry::unavailable_retry_safe(msg)
}

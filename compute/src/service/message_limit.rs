//! The request size limit, answered as gRPC says: a request larger than the server accepts
//! gets `RESOURCE_EXHAUSTED` (tonic itself answers `OUT_OF_RANGE`, which clients take for a
//! bad argument range).
//!
//! tonic checks a message's length prefix before it buffers the body and answers with a
//! trailers-only response (the status in the headers), so nothing of such a request is read,
//! let alone applied. This wrapper rewrites that one answer.
//!
//! It is also the last place an error answer passes on its way out, so it gives every
//! trailers-only error (a unary call's failure, or tonic's own: a body that does not decode, an
//! unknown method) that has no `strata-error-reason` yet the default reason of its code.
//! Errors in the trailers of a stream are given theirs where the stream sends them
//! (`kv.rs`: `status.rs` for the engine's, `reason::or_default` for a peer's).

use crate::MAX_MESSAGE_BYTES;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::server::NamedService;

/// A tonic service whose oversized requests are answered `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
}

impl<S> MessageLimit<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        MessageLimit { inner }
    }
}

impl<S: NamedService> NamedService for MessageLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> Service<http::Request<B>> for MessageLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            rewrite_oversize(resp.headers_mut());
            default_reason(resp.headers_mut());
            Ok(resp)
        })
    }
}

/// Turns tonic's `OUT_OF_RANGE` "decoded message length too large" into `RESOURCE_EXHAUSTED`
/// naming the limit.
fn rewrite_oversize(headers: &mut http::HeaderMap) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if !out_of_range {
        return;
    }
    let msg = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .replace("%20", " ");
    if !msg.contains("decoded message length too large") {
        return;
    }
    // tonic's text: "... found N bytes, the limit is: L bytes".
    let found = msg
        .split("found ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .unwrap_or("?");
    let status = strata_proto::reason::with_reason(
        tonic::Status::resource_exhausted(format!(
            "request: {found} bytes is larger than the server's message limit of \
             {MAX_MESSAGE_BYTES} bytes; split it into smaller requests (batches hold at most \
             10,000 keys or ops)"
        )),
        strata_proto::reason::MESSAGE_TOO_LARGE,
    );
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if status.add_header(headers).is_err() {
        // Could not encode the new status: keep tonic's own answer.
        headers.insert("grpc-status", http::HeaderValue::from_static("11"));
    }
}

/// Adds the default reason of a trailers-only error's code when it has none.
fn default_reason(headers: &mut http::HeaderMap) {
    use strata_proto::headers::ERROR_REASON;
    if headers.contains_key(ERROR_REASON) {
        return;
    }
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    if let Some(why) = strata_proto::reason::default_for(tonic::Code::from_i32(code)) {
        headers.insert(ERROR_REASON, http::HeaderValue::from_static(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_becomes_resource_exhausted_and_others_pass() {
        let mut h = http::HeaderMap::new();
        tonic::Status::out_of_range(
            "Error, decoded message length too large: found 70000000 bytes, the limit is: 67108864 bytes",
        )
        .add_header(&mut h)
        .unwrap();
        rewrite_oversize(&mut h);
        let s = tonic::Status::from_header_map(&h).unwrap();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("70000000 bytes"), "{}", s.message());
        default_reason(&mut h);
        let s = tonic::Status::from_header_map(&h).unwrap();
        assert_eq!(
            strata_proto::reason::reason_of(&s),
            Some(strata_proto::reason::MESSAGE_TOO_LARGE)
        );

        let mut h = http::HeaderMap::new();
        tonic::Status::out_of_range("something else")
            .add_header(&mut h)
            .unwrap();
        rewrite_oversize(&mut h);
        let s = tonic::Status::from_header_map(&h).unwrap();
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        default_reason(&mut h);
        let s = tonic::Status::from_header_map(&h).unwrap();
        assert_eq!(
            strata_proto::reason::reason_of(&s),
            Some(strata_proto::reason::INVALID_ARGUMENT)
        );
    }
}

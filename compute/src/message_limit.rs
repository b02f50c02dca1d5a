//! The request size limit, answered as gRPC says: a request larger than the server accepts
//! gets `RESOURCE_EXHAUSTED` (tonic itself answers `OUT_OF_RANGE`, which clients take for a
//! bad argument range).
//!
//! tonic checks a message's length prefix before it buffers the body and answers with a
//! trailers-only response (the status in the headers), so nothing of such a request is read,
//! let alone applied. This wrapper rewrites that one answer; every other response passes
//! through untouched.

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
    let status = tonic::Status::resource_exhausted(format!(
        "request: {found} bytes is larger than the server's message limit of {MAX_MESSAGE_BYTES} \
         bytes; split it into smaller requests (batches hold at most 10,000 keys or ops)"
    ));
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if status.add_header(headers).is_err() {
        // Could not encode the new status: keep tonic's own answer.
        headers.insert("grpc-status", http::HeaderValue::from_static("11"));
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

        let mut h = http::HeaderMap::new();
        tonic::Status::out_of_range("something else")
            .add_header(&mut h)
            .unwrap();
        rewrite_oversize(&mut h);
        let s = tonic::Status::from_header_map(&h).unwrap();
        assert_eq!(s.code(), tonic::Code::OutOfRange);
    }
}

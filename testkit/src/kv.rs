//! Small helpers for `strata.v1.KV` calls: request builders and one-line puts and gets.
//!
//! Two flavours:
//! - [`put`] and [`get`] panic when the call fails (for tests where any error is a failure);
//! - [`try_put`] (with a per-request deadline) and [`try_get`] return the status (for tests
//!   that expect errors, or retry through another node).
//!
//! Keys and values are anything that is bytes (`&str`, `String`, `&[u8]`, `Vec<u8>`,
//! [`Bytes`]); they are copied into the request. Reads are of the default consistency.

use bytes::Bytes;
use std::time::Duration;
use strata_proto::pb;
use strata_proto::pb::kv_client::KvClient;
use tonic::transport::Channel;

/// A KV client, as [`crate::Server::client`] returns it.
pub type Kv = KvClient<Channel>;

/// `s` copied into [`Bytes`].
pub fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
}

/// An unconditional put of `value` under `key`, every other field at its default.
pub fn put_req(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> pb::PutRequest {
    pb::PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

/// A read of `key` (default consistency).
pub fn get_req(key: impl AsRef<[u8]>) -> pb::GetRequest {
    pb::GetRequest {
        key: b(key),
        consistency: 0,
    }
}

/// Puts `value` under `key` ([`put_req`]); returns the version. Panics if the put fails.
pub async fn put(c: &mut Kv, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> u64 {
    c.put(put_req(key, value))
        .await
        .expect("put")
        .into_inner()
        .version
}

/// Reads `key` ([`get_req`]). Panics if the read fails.
pub async fn get(c: &mut Kv, key: impl AsRef<[u8]>) -> pb::GetResponse {
    c.get(get_req(key)).await.expect("get").into_inner()
}

/// Puts `value` under `key` ([`put_req`]) with a deadline of `timeout`; the version, or the
/// status the put failed with.
pub async fn try_put(
    c: &mut Kv,
    key: impl AsRef<[u8]>,
    value: impl AsRef<[u8]>,
    timeout: Duration,
) -> Result<u64, tonic::Status> {
    let mut req = tonic::Request::new(put_req(key, value));
    req.set_timeout(timeout);
    c.put(req).await.map(|r| r.into_inner().version)
}

/// Reads `key` ([`get_req`]): `Some((value, version))`, `None` when absent, or the status the
/// read failed with.
pub async fn try_get(
    c: &mut Kv,
    key: impl AsRef<[u8]>,
) -> Result<Option<(Bytes, u64)>, tonic::Status> {
    let r = c.get(get_req(key)).await?.into_inner();
    Ok(r.found.then_some((r.value, r.version)))
}

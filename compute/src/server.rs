//! The gRPC `strata.v1.KV` service: request validation and mapping onto the engine.
//!
//! Validation happens before anything reaches the engine, so a bad op in a batch rejects
//! the whole batch with nothing applied, and every message names the field and the limit.

use crate::commit::{Cond, Op, WriteOp};
use crate::db::Db;
use crate::error::EngineError;
use crate::pb;
use crate::pb::kv_server::{Kv, KvServer};
use crate::{MAX_KEY_BYTES, MAX_MESSAGE_BYTES, MAX_VALUE_BYTES};
use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Most entries in one scan response chunk.
const SCAN_CHUNK_ENTRIES: usize = 256;
/// Approximate largest scan response chunk.
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Most keys or ops in one batch.
pub const MAX_BATCH_OPS: usize = 10_000;

/// The KV service. Until the engine has recovered, every call answers `UNAVAILABLE`.
#[derive(Clone, Debug, Default)]
pub struct KvService {
    db: Arc<OnceLock<Db>>,
}

impl KvService {
    /// A service whose engine is not open yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the service answer with `db`.
    pub fn set_db(&self, db: Db) {
        let _ = self.db.set(db);
    }

    fn db(&self) -> Result<&Db, Status> {
        self.db
            .get()
            .ok_or_else(|| Status::unavailable("server is recovering; retry shortly"))
    }

    /// The tonic service with our message size limits.
    pub fn into_server(self) -> KvServer<KvService> {
        KvServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn check_key(field: &str, key: &[u8]) -> Result<(), Status> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field}: must be 1 to {MAX_KEY_BYTES} bytes, got {} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(field: &str, value: &[u8]) -> Result<(), Status> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field}: must be at most {MAX_VALUE_BYTES} bytes, got {} bytes",
            value.len()
        )));
    }
    Ok(())
}

fn check_consistency(field: &str, v: i32) -> Result<(), Status> {
    pb::Consistency::try_from(v).map(|_| ()).map_err(|_| {
        Status::invalid_argument(format!(
            "{field}: unknown consistency {v} (expected 0 = unspecified, 1 = strong, 2 = eventual)"
        ))
    })
}

fn durable(field: &str, v: i32) -> Result<bool, Status> {
    match pb::Durability::try_from(v) {
        Ok(pb::Durability::Buffered) => Ok(false),
        Ok(_) => Ok(true),
        Err(_) => Err(Status::invalid_argument(format!(
            "{field}: unknown durability {v} (expected 0 = unspecified, 1 = durable, 2 = buffered)"
        ))),
    }
}

fn check_batch_len(field: &str, n: usize) -> Result<(), Status> {
    if n > MAX_BATCH_OPS {
        return Err(Status::invalid_argument(format!(
            "{field}: at most {MAX_BATCH_OPS} per batch, got {n}"
        )));
    }
    Ok(())
}

fn put_op(field: &str, p: pb::PutRequest) -> Result<WriteOp, Status> {
    check_key(&format!("{field}key"), &p.key)?;
    check_value(&format!("{field}value"), &p.value)?;
    let cond = match p.condition {
        None | Some(pb::put_request::Condition::IfAbsent(false)) => Cond::None,
        Some(pb::put_request::Condition::IfAbsent(true)) => Cond::IfAbsent,
        Some(pb::put_request::Condition::IfVersion(v)) => Cond::IfVersion(v),
    };
    Ok(WriteOp {
        key: p.key,
        op: Op::Put {
            value: p.value,
            ttl_ms: p.ttl_ms,
        },
        cond,
    })
}

fn delete_op(field: &str, d: pb::DeleteRequest) -> Result<WriteOp, Status> {
    check_key(&format!("{field}key"), &d.key)?;
    Ok(WriteOp {
        key: d.key,
        op: Op::Delete,
        cond: d.if_version.map(Cond::IfVersion).unwrap_or(Cond::None),
    })
}

fn status(e: EngineError) -> Status {
    e.into()
}

/// The smallest key greater than every key with `prefix`, or `None` if there is none
/// (the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xff {
            p.push(last + 1);
            return Some(Bytes::from(p));
        }
    }
    None
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<pb::ScanResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let r = req.into_inner();
        check_key("key", &r.key)?;
        check_consistency("consistency", r.consistency)?;
        let db = self.db()?;
        let res = db.get(&r.key).await.map_err(status)?;
        Ok(Response::new(match res {
            Some((value, version)) => pb::GetResponse {
                found: true,
                value,
                version,
            },
            None => pb::GetResponse::default(),
        }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let r = req.into_inner();
        let d = durable("durability", r.durability)?;
        let op = put_op("", r)?;
        let db = self.db()?;
        let out = db.write(vec![op], d).await.map_err(status)?;
        Ok(Response::new(pb::PutResponse {
            version: out.first().map(|o| o.version).unwrap_or(0),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = req.into_inner();
        let d = durable("durability", r.durability)?;
        let op = delete_op("", r)?;
        let db = self.db()?;
        let out = db.write(vec![op], d).await.map_err(status)?;
        let o = out.first().copied().unwrap_or(crate::OpOutcome {
            version: 0,
            found: false,
        });
        Ok(Response::new(pb::DeleteResponse {
            found: o.found,
            version: o.version,
        }))
    }

    async fn batch_get(
        &self,
        req: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let r = req.into_inner();
        check_consistency("consistency", r.consistency)?;
        check_batch_len("keys", r.keys.len())?;
        for (i, k) in r.keys.iter().enumerate() {
            check_key(&format!("keys[{i}]"), k)?;
        }
        let db = self.db()?;
        let res = db.multi_get(&r.keys).await.map_err(status)?;
        let results = res
            .into_iter()
            .map(|r| match r {
                Some((value, version)) => pb::GetResponse {
                    found: true,
                    value,
                    version,
                },
                None => pb::GetResponse::default(),
            })
            .collect();
        Ok(Response::new(pb::BatchGetResponse { results }))
    }

    async fn batch_write(
        &self,
        req: Request<pb::BatchWriteRequest>,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        let r = req.into_inner();
        let d = durable("durability", r.durability)?;
        check_batch_len("ops", r.ops.len())?;
        let mut ops = Vec::with_capacity(r.ops.len());
        for (i, op) in r.ops.into_iter().enumerate() {
            // Each op's own durability is ignored: the batch's applies.
            ops.push(match op.op {
                Some(pb::write_op::Op::Put(p)) => put_op(&format!("ops[{i}].put."), p)?,
                Some(pb::write_op::Op::Delete(dl)) => delete_op(&format!("ops[{i}].delete."), dl)?,
                None => {
                    return Err(Status::invalid_argument(format!(
                        "ops[{i}]: op must be set to put or delete"
                    )))
                }
            });
        }
        if ops.is_empty() {
            return Ok(Response::new(pb::BatchWriteResponse::default()));
        }
        let db = self.db()?;
        let out = db.write(ops, d).await.map_err(status)?;
        Ok(Response::new(pb::BatchWriteResponse {
            versions: out.into_iter().map(|o| o.version).collect(),
        }))
    }

    type ScanStream = ScanStream;

    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let r = req.into_inner();
        check_consistency("consistency", r.consistency)?;
        for (field, v) in [("start", &r.start), ("end", &r.end), ("prefix", &r.prefix)] {
            if v.len() > MAX_KEY_BYTES {
                return Err(Status::invalid_argument(format!(
                    "{field}: must be at most {MAX_KEY_BYTES} bytes, got {} bytes",
                    v.len()
                )));
            }
        }
        // [start, end) intersected with the prefix's range.
        let mut start = r.start.clone();
        let mut end: Option<Bytes> = (!r.end.is_empty()).then(|| r.end.clone());
        if !r.prefix.is_empty() {
            if r.prefix > start {
                start = r.prefix.clone();
            }
            if let Some(pe) = prefix_end(&r.prefix) {
                if end.as_ref().is_none_or(|e| pe < *e) {
                    end = Some(pe);
                }
            }
        }
        let db = self.db()?;
        let mut scanner = db.scan(start, end).map_err(status)?;
        let limit = r.limit as usize;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ScanResponse, Status>>(4);
        tokio::spawn(async move {
            let mut sent = 0usize;
            let mut chunk = Vec::new();
            let mut chunk_bytes = 0usize;
            while !scanner.is_done() && (limit == 0 || sent < limit) {
                let want = if limit == 0 {
                    SCAN_CHUNK_ENTRIES
                } else {
                    (limit - sent).min(SCAN_CHUNK_ENTRIES)
                };
                let entries = match scanner.next_chunk(want).await {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                for (key, value, version) in entries {
                    if limit != 0 && sent >= limit {
                        break;
                    }
                    chunk_bytes += key.len() + value.len() + 16;
                    chunk.push(pb::KeyValue {
                        key,
                        value,
                        version,
                    });
                    sent += 1;
                    if chunk.len() >= SCAN_CHUNK_ENTRIES || chunk_bytes >= SCAN_CHUNK_BYTES {
                        let entries = std::mem::take(&mut chunk);
                        chunk_bytes = 0;
                        if tx.send(Ok(pb::ScanResponse { entries })).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = tx.send(Ok(pb::ScanResponse { entries: chunk })).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Joins a key prefix and returns the smallest key after `key` (for cursors).
pub fn key_successor(key: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(key.len() + 1);
    b.extend_from_slice(key);
    b.extend_from_slice(&[0]);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_non_ff_byte() {
        assert_eq!(prefix_end(b"ab").as_deref(), Some(&b"ac"[..]));
        assert_eq!(prefix_end(b"a\xff").as_deref(), Some(&b"b"[..]));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}

//! Transaction intent records: the value stored under a partition's system key
//! `\xff\xffstrata/txn/{txn id}` while a cross-partition transaction is prepared there, and
//! the resolution marker that replaces it.
//!
//! ```text
//! value : "STXI" | u8 format version (1) | u8 state | state body
//!   1 prepared  : u64 created_ms | u32 op_count | op*
//!       op      : u8 kind (1 put, 2 delete) | u64 ttl_ms | u32 key_len | key
//!                 | u32 value_len | value
//!   2 committed : u32 count | u64 version*
//!   3 aborted   : (empty)
//! ```
//!
//! The record travels inside a WAL record or an SST block, whose checksums cover it; the
//! decoder still rejects anything malformed (bad magic, unknown state, truncation, trailing
//! bytes) instead of guessing.

use bytes::Bytes;

use crate::codec::{len_u32, put_u32, put_u64, Reader};
use crate::error::{corrupt, Result};

const WHAT: &str = "transaction intent";

/// Keys reserved for the store's own records; user keys may not start with it.
pub const SYSTEM_PREFIX: &[u8] = b"\xff\xffstrata/";
/// Intent records and resolution markers: `INTENT_PREFIX ++ txn id`.
pub const INTENT_PREFIX: &[u8] = b"\xff\xffstrata/txn/";

/// Whether `key` is in the reserved system keyspace.
pub fn is_system_key(key: &[u8]) -> bool {
    key.starts_with(SYSTEM_PREFIX)
}
const INTENT_MAGIC: &[u8; 4] = b"STXI";
const INTENT_VERSION: u8 = 1;

/// What an intent key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentState {
    /// Prepared and undecided here: the ops wait for the decision.
    Prepared {
        /// When the coordinator started the transaction (Unix ms).
        created_ms: u64,
        /// The partition's ops, in batch order.
        ops: Vec<TxnOp>,
    },
    /// Applied; the versions the ops got, in order.
    Committed {
        /// One version per op.
        versions: Vec<u64>,
    },
    /// Aborted: nothing was applied, and no prepare may install an intent any more.
    Aborted,
}

/// One op of a prepared intent (its condition was checked at prepare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOp {
    /// The user key.
    pub key: Bytes,
    /// The value to put; `None` deletes.
    pub value: Option<Bytes>,
    /// Time to live of a put, 0 for none.
    pub ttl_ms: u64,
}

/// Encodes an intent record value.
pub fn encode_intent(s: &IntentState) -> Bytes {
    let mut out = Vec::new();
    out.extend_from_slice(INTENT_MAGIC);
    out.push(INTENT_VERSION);
    match s {
        IntentState::Prepared { created_ms, ops } => {
            out.push(1);
            put_u64(&mut out, *created_ms);
            put_u32(&mut out, len_u32(ops.len(), "intent op count"));
            for op in ops {
                out.push(if op.value.is_some() { 1 } else { 2 });
                put_u64(&mut out, op.ttl_ms);
                put_u32(&mut out, len_u32(op.key.len(), "key"));
                out.extend_from_slice(&op.key);
                let v = op.value.as_deref().unwrap_or_default();
                put_u32(&mut out, len_u32(v.len(), "value"));
                out.extend_from_slice(v);
            }
        }
        IntentState::Committed { versions } => {
            out.push(2);
            put_u32(&mut out, len_u32(versions.len(), "intent version count"));
            for v in versions {
                put_u64(&mut out, *v);
            }
        }
        IntentState::Aborted => out.push(3),
    }
    Bytes::from(out)
}

/// Decodes an intent record value.
pub fn decode_intent(b: &Bytes) -> Result<IntentState> {
    let mut r = Reader::new(b, WHAT);
    let magic: [u8; 4] = r.array("magic")?;
    if &magic != INTENT_MAGIC {
        return Err(corrupt(WHAT, "bad magic"));
    }
    let version = r.u8("version")?;
    if version != INTENT_VERSION {
        return Err(corrupt(WHAT, format!("unknown format version {version}")));
    }
    let st = match r.u8("state")? {
        1 => {
            let created_ms = r.u64("created_ms")?;
            let n = r.u32("op count")? as usize;
            let mut ops = Vec::with_capacity(n.min(r.remaining() / 21 + 1));
            for _ in 0..n {
                let kind = r.u8("op kind")?;
                let ttl_ms = r.u64("ttl")?;
                let klen = r.u32("key length")? as usize;
                let key = slice(b, &mut r, klen, "key")?;
                let vlen = r.u32("value length")? as usize;
                let value = slice(b, &mut r, vlen, "value")?;
                ops.push(TxnOp {
                    key,
                    value: match kind {
                        1 => Some(value),
                        2 => None,
                        k => return Err(corrupt(WHAT, format!("unknown op kind {k}"))),
                    },
                    ttl_ms,
                });
            }
            IntentState::Prepared { created_ms, ops }
        }
        2 => {
            let n = r.u32("version count")? as usize;
            let mut versions = Vec::with_capacity(n.min(r.remaining() / 8 + 1));
            for _ in 0..n {
                versions.push(r.u64("version")?);
            }
            IntentState::Committed { versions }
        }
        3 => IntentState::Aborted,
        s => return Err(corrupt(WHAT, format!("unknown state {s}"))),
    };
    if !r.is_empty() {
        return Err(corrupt(WHAT, format!("{} trailing bytes", r.remaining())));
    }
    Ok(st)
}

/// The next `n` bytes as a zero-copy slice of `b`.
fn slice(b: &Bytes, r: &mut Reader<'_>, n: usize, field: &str) -> Result<Bytes> {
    let at = r.position();
    r.bytes(n, field)?;
    Ok(b.slice(at..at + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_round_trip_and_reject_garbage() {
        let states = [
            IntentState::Prepared {
                created_ms: 17,
                ops: vec![
                    TxnOp {
                        key: Bytes::from_static(b"a"),
                        value: Some(Bytes::from_static(b"1")),
                        ttl_ms: 5,
                    },
                    TxnOp {
                        key: Bytes::from_static(b"b"),
                        value: None,
                        ttl_ms: 0,
                    },
                ],
            },
            IntentState::Committed {
                versions: vec![3, 4],
            },
            IntentState::Aborted,
        ];
        for s in states {
            let b = encode_intent(&s);
            assert_eq!(decode_intent(&b).expect("decodes"), s);
            // Truncation and trailing garbage are errors, never a shorter record.
            assert!(decode_intent(&b.slice(..b.len() - 1)).is_err());
            let mut longer = b.to_vec();
            longer.push(0);
            assert!(decode_intent(&Bytes::from(longer)).is_err());
        }
        assert!(decode_intent(&Bytes::from_static(b"nope!!")).is_err());
        assert!(decode_intent(&Bytes::from_static(b"STXI\x01\x09")).is_err());
    }
}

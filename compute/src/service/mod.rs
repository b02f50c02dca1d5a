//! The service layer: the gRPC services on top of the cluster layer and the engine.
//!
//! - `kv`: `strata.v1.KV` — request validation (every message names the field and the
//!   limit), routing to the local engine or the partition's owner, forwarding;
//! - `admin`: `strata.v1.Admin` — the routing table;
//! - `auth`: tenants — bearer tokens, rights, namespaces (key prefixes), quotas, and the
//!   tower layer that checks them before any service runs;
//! - `txn`: cross-partition `BatchWrite` (the coordinator) and the node-to-node
//!   `strata.v1.Txn` service its participants answer;
//! - `status`: the one place engine errors become gRPC statuses, with their
//!   `strata-error-reason`;
//! - `message_limit`: oversized requests answered `RESOURCE_EXHAUSTED`, and the default
//!   reason on every error answer that has none.
//!
//! Nothing below this layer (`cluster`, the engine) names it.

mod admin;
pub mod auth;
mod kv;
pub mod message_limit;
pub(crate) mod status;
mod txn;

pub use admin::AdminService;
pub use kv::{
    key_successor, KvService, FLUSHED_SEQ_HEADER, FORWARDED_HEADER, MAP_CHANGED_HEADER,
    MAX_BATCH_OPS, OWNER_HEADER, PARTITION_HEADER, SESSION_HEADER, STALE_MS_HEADER,
    STALE_SEQS_HEADER,
};
pub use txn::TxnService;

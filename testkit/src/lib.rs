//! `strata-testkit`: what Strata's tests share (a dev-dependency; never published).
//!
//! - [`server`]: the `strata serve` launcher ([`Server`], [`ServerOpts`]) and the binary it
//!   runs ([`bin`]);
//! - [`infra`]: the S3 test server and etcd launchers ([`infra::S3`], [`infra::Etcd`]);
//! - [`cluster`]: a cluster of nodes on both ([`Cluster`]; [`cluster::infra`] starts both)
//!   and partition-map helpers;
//! - [`kv`]: request builders and one-line puts and gets on a [`kv::Kv`] client;
//! - [`acked`]: the recorder of acknowledged writes and its read-back check ([`Acked`]);
//! - [`linearize`]: the linearizability checker for single-key histories (and why it is ours).
//!
//! The launchers start the real binaries and kill them when dropped; a test that needs a
//! server which is not installed fails, unless `STRATA_ALLOW_SKIP=1` (then it skips).
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

pub mod acked;
pub mod cluster;
pub mod infra;
pub mod kv;
pub mod linearize;
pub mod server;

pub use acked::Acked;
pub use cluster::Cluster;
pub use server::{bin, Server, ServerOpts};

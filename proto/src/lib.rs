//! Strata's wire contract, shared by the server (`strata-compute`), the Rust client and the
//! CLI so that nothing of it is defined twice:
//!
//! - [`pb`]: the generated protobuf messages and gRPC stubs of `strata.v1` (`strata/v1/*.proto`);
//! - [`headers`]: the names of the metadata Strata puts on requests and answers;
//! - [`reason`]: the machine-readable reasons that go with every non-OK status in the
//!   [`headers::ERROR_REASON`] metadata;
//! - [`retry`]: which failures certainly applied nothing and may be resent.
//!
//! The names here are contracts other clients are built against: add freely, never rename.
#![deny(missing_docs)]

pub mod headers;
pub mod reason;
pub mod retry;

/// Generated protobuf and gRPC code for `strata.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("strata.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strata_descriptor");
}

/// Largest gRPC request or response, in bytes (both directions, server and client).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

//! `strata bench --target`: the gRPC backend. Requests go over several HTTP/2 channels, on a
//! cluster straight to each key's owner (as the client library routes) unless `--forward`.

use std::time::Duration;

use crate::client_cli::{Creds, Transport as Channel};
use rand::Rng;
use strata_compute::pb;
use strata_compute::pb::kv_client::KvClient;
use tonic_health::pb::health_client::HealthClient;

use super::driver::{Backend, Op, OpError};
use super::stats::Outcome;
use crate::client_cli;

/// The gRPC system under test.
pub struct Grpc {
    /// One client per bench client (clients share channels).
    pub clients: Vec<KvClient<Channel>>,
    /// Health clients on the same channels (the empty round trip of `--workload ping`).
    pub health: Vec<HealthClient<Channel>>,
    pub durability: i32,
    pub consistency: i32,
    /// Partitions of the target (1 for a single node). A batch write is sent as one request
    /// per partition its keys fall in, concurrently: a cluster keeps batches within one
    /// partition.
    pub partitions: u32,
    /// Per partition, clients connected straight to its owner (empty: every request goes to
    /// the client's own target, and cluster nodes forward what they do not own).
    pub direct: Vec<Vec<KvClient<Channel>>>,
    /// The prefix the server stores this token's keys under (`ClusterMap.key_prefix`).
    pub key_prefix: bytes::Bytes,
    /// Measured batch writes go whole (cross-partition transactions on a cluster).
    pub txn: bool,
}

fn is_retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
    )
}

fn op_error(status: tonic::Status) -> OpError {
    OpError {
        code: client_cli::code_name(status.code()),
        retryable: is_retryable(status.code()),
        // Only a quota's refusal asks the client to wait; other refusals that carry the
        // header (an engine's write stall) are the load being measured.
        retry_after: (strata_proto::reason::reason_of(&status)
            == Some(strata_proto::reason::QUOTA_EXCEEDED))
        .then(|| status.metadata().get(strata_proto::headers::RETRY_AFTER_MS))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.min(60_000))),
        message: client_cli::status_error(status).to_string(),
    }
}

impl Grpc {
    fn put_request(&self, key: bytes::Bytes, value: bytes::Bytes) -> pb::PutRequest {
        pb::PutRequest {
            key,
            value,
            ttl_ms: 0,
            condition: None,
            durability: self.durability,
        }
    }

    /// The partition of `key` as the server stores it (under the tenant's namespace prefix).
    fn partition_of(&self, key: &[u8]) -> u32 {
        if self.key_prefix.is_empty() {
            return strata_format::partition_of(key, self.partitions);
        }
        let mut k = self.key_prefix.to_vec();
        k.extend_from_slice(key);
        strata_format::partition_of(&k, self.partitions)
    }

    /// The client for `key`: straight to its owner when the map is known, else `client`'s.
    fn client_for(&self, client: usize, key: Option<&[u8]>) -> KvClient<Channel> {
        key.and_then(|k| self.direct.get(self.partition_of(k) as usize))
            .filter(|cs| !cs.is_empty())
            .map(|cs| cs[rand::rng().random_range(0..cs.len())].clone())
            .unwrap_or_else(|| self.clients[client % self.clients.len()].clone())
    }

    /// A batch write, split by partition (unless `--txn`) and sent concurrently.
    async fn batch_write(
        &self,
        client: usize,
        items: Vec<(bytes::Bytes, bytes::Bytes)>,
    ) -> Result<(), tonic::Status> {
        let op = |(k, v)| pb::WriteOp {
            op: Some(pb::write_op::Op::Put(self.put_request(k, v))),
        };
        if self.partitions <= 1 || self.txn {
            let mut c = self.clients[client % self.clients.len()].clone();
            c.batch_write(pb::BatchWriteRequest {
                ops: items.into_iter().map(op).collect(),
                durability: self.durability,
            })
            .await?;
            return Ok(());
        }
        let mut groups: std::collections::BTreeMap<u32, Vec<pb::WriteOp>> = Default::default();
        for (k, v) in items {
            groups
                .entry(self.partition_of(&k))
                .or_default()
                .push(op((k, v)));
        }
        let sends = groups.into_values().map(|ops| {
            let first = match ops.first().and_then(|o| o.op.as_ref()) {
                Some(pb::write_op::Op::Put(p)) => Some(p.key.clone()),
                _ => None,
            };
            let mut c = self.client_for(client, first.as_deref());
            let req = pb::BatchWriteRequest {
                ops,
                durability: self.durability,
            };
            async move { c.batch_write(req).await }
        });
        futures::future::try_join_all(sends).await?;
        Ok(())
    }

    async fn get(&self, client: usize, key: bytes::Bytes) -> Result<Outcome, tonic::Status> {
        let key_len = key.len() as u64;
        let mut c = self.client_for(client, Some(&key));
        let resp = c
            .get(pb::GetRequest {
                key,
                consistency: self.consistency,
            })
            .await?
            .into_inner();
        Ok(Outcome {
            items: 1,
            not_found: u64::from(!resp.found),
            bytes_read: if resp.found {
                key_len + resp.value.len() as u64
            } else {
                0
            },
            ..Outcome::default()
        })
    }

    async fn put(
        &self,
        client: usize,
        key: bytes::Bytes,
        value: bytes::Bytes,
    ) -> Result<Outcome, tonic::Status> {
        let mut c = self.client_for(client, Some(&key));
        c.put(self.put_request(key, value)).await?;
        Ok(Outcome {
            items: 1,
            ..Outcome::default()
        })
    }

    async fn run(&self, client: usize, op: Op) -> Result<Outcome, tonic::Status> {
        match op {
            Op::Get(key) => self.get(client, key).await,
            Op::Put(key, value) | Op::Insert(key, value) => self.put(client, key, value).await,
            Op::ReadModifyWrite(key, value) => {
                let read = self.get(client, key.clone()).await?;
                self.put(client, key, value).await?;
                Ok(Outcome { items: 1, ..read })
            }
            Op::BatchGet(keys) => {
                let key_lens: Vec<u64> = keys.iter().map(|k| k.len() as u64).collect();
                let mut c = self.client_for(client, keys.first().map(|k| &k[..]));
                let resp = c
                    .batch_get(pb::BatchGetRequest {
                        keys,
                        consistency: self.consistency,
                    })
                    .await?
                    .into_inner();
                let mut o = Outcome {
                    items: key_lens.len() as u64,
                    ..Outcome::default()
                };
                for (res, key_len) in resp.results.iter().zip(key_lens) {
                    if res.found {
                        o.bytes_read += key_len + res.value.len() as u64;
                    } else {
                        o.not_found += 1;
                    }
                }
                Ok(o)
            }
            Op::BatchWrite(items) => {
                let n = items.len() as u64;
                self.batch_write(client, items).await?;
                Ok(Outcome {
                    items: n,
                    ..Outcome::default()
                })
            }
            Op::Delete(key) => {
                let mut c = self.client_for(client, Some(&key));
                let resp = c
                    .delete(pb::DeleteRequest {
                        key,
                        if_version: None,
                        durability: self.durability,
                    })
                    .await?
                    .into_inner();
                Ok(Outcome {
                    items: 1,
                    not_found: u64::from(!resp.found),
                    ..Outcome::default()
                })
            }
            Op::Scan(start, limit) => {
                let mut c = self.clients[client % self.clients.len()].clone();
                let mut stream = c
                    .scan(pb::ScanRequest {
                        start,
                        end: Default::default(),
                        prefix: Default::default(),
                        limit,
                        consistency: self.consistency,
                    })
                    .await?
                    .into_inner();
                let mut o = Outcome::default();
                while let Some(chunk) = stream.message().await? {
                    for kv in &chunk.entries {
                        o.items += 1;
                        o.bytes_read += (kv.key.len() + kv.value.len()) as u64;
                    }
                }
                Ok(o)
            }
            Op::Floor(_) => {
                let mut h = self.health[client % self.health.len()].clone();
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
                Ok(Outcome {
                    items: 1,
                    ..Outcome::default()
                })
            }
        }
    }
}

impl Backend for Grpc {
    async fn execute(&self, client: usize, op: Op) -> Result<Outcome, OpError> {
        self.run(client, op).await.map_err(op_error)
    }
}

/// The routing table of the cluster behind `channel` (`None` for a single node or an older
/// server).
pub async fn cluster_map(channel: Channel) -> Option<pb::ClusterMapResponse> {
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let m = admin
        .cluster_map(pb::ClusterMapRequest {})
        .await
        .ok()?
        .into_inner();
    (m.partitions > 1).then_some(m)
}

/// Channels straight to each partition's owner, `per_node` connections per node.
pub async fn direct_clients(
    map: &pb::ClusterMapResponse,
    per_node: usize,
    timeout: Duration,
    creds: &Creds,
) -> anyhow::Result<Vec<Vec<KvClient<Channel>>>> {
    let mut by_addr: std::collections::HashMap<String, Vec<KvClient<Channel>>> = Default::default();
    let mut out = vec![Vec::new(); map.partitions as usize];
    for o in &map.owners {
        if o.addr.is_empty() {
            continue;
        }
        if !by_addr.contains_key(&o.addr) {
            let chans = futures::future::try_join_all(
                (0..per_node.max(1)).map(|_| client_cli::connect(&o.addr, timeout, creds)),
            )
            .await?;
            by_addr.insert(
                o.addr.clone(),
                chans.into_iter().map(client_cli::kv_client).collect(),
            );
        }
        if let Some(slot) = out.get_mut(o.partition as usize) {
            *slot = by_addr[&o.addr].clone();
        }
    }
    Ok(out)
}

//! A cluster of real `strata serve` nodes on loopback sharing one etcd and one bucket prefix
//! of the S3 test server ([`crate::infra`]), and helpers to read its partition map.

use crate::acked::Acked;
use crate::infra::{Etcd, BUCKET, S3};
use crate::kv::Kv;
use crate::server::{bin, Server, ServerOpts};
use bytes::Bytes;
use std::time::{Duration, Instant};
use strata_proto::pb;
use strata_proto::pb::admin_client::AdminClient;
use tonic::transport::Channel;

/// Starts the S3 test server and etcd; `None` (skip) when one is not installed and
/// `STRATA_ALLOW_SKIP=1` (see [`crate::infra`]).
pub fn infra() -> Option<(S3, Etcd)> {
    let s3 = S3::start()?;
    let etcd = Etcd::start()?;
    Some((s3, etcd))
}

/// A cluster of nodes on one etcd and one bucket prefix.
pub struct Cluster {
    pub etcd_url: String,
    pub s3_env: Vec<(String, String)>,
    pub prefix: String,
    /// The nodes by index; `None` once stopped.
    pub nodes: Vec<Option<Server>>,
    /// Node ids (`n1`, `n2`, ...), by index.
    pub ids: Vec<String>,
    pub dirs: Vec<tempfile::TempDir>,
    /// Extra `strata serve` flags for every node.
    pub args: Vec<String>,
}

impl Cluster {
    pub fn start(s3: &S3, etcd: &Etcd, n: usize, prefix: &str) -> Cluster {
        Self::start_with_args(s3, etcd, n, prefix, &[])
    }

    pub fn start_with_args(s3: &S3, etcd: &Etcd, n: usize, prefix: &str, args: &[&str]) -> Cluster {
        let mut c = Cluster {
            etcd_url: etcd.endpoint.clone(),
            s3_env: s3.env(),
            prefix: prefix.to_string(),
            nodes: Vec::new(),
            ids: Vec::new(),
            dirs: Vec::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        for _ in 0..n {
            c.add_node();
        }
        c
    }

    /// Starts one more node; returns its index.
    pub fn add_node(&mut self) -> usize {
        self.add_node_with(Vec::new())
    }

    /// Starts one more node with extra environment variables; returns its index.
    pub fn add_node_with(&mut self, env: Vec<(String, String)>) -> usize {
        let i = self.nodes.len();
        let id = format!("n{}", i + 1);
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = ServerOpts {
            extra_args: vec![
                "--etcd".into(),
                self.etcd_url.clone(),
                "--object-store".into(),
                format!("s3://{BUCKET}/{}", self.prefix),
                "--node-id".into(),
                id.clone(),
                "--memtable-mb".into(),
                "4".into(),
                "--lease-ttl-secs".into(),
                "2".into(),
            ]
            .into_iter()
            .chain(self.args.iter().cloned())
            .collect(),
            env: self.s3_env.iter().cloned().chain(env).collect(),
        };
        let s = Server::start_with(dir.path(), opts);
        self.nodes.push(Some(s));
        self.ids.push(id);
        self.dirs.push(dir);
        i
    }

    pub fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Indexes of the running nodes.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    pub async fn client(&self, i: usize) -> Kv {
        self.node(i).client().await
    }

    /// The cluster map as node `i` sees it.
    pub async fn map(&self, i: usize) -> pb::ClusterMapResponse {
        let ch = Channel::from_shared(self.node(i).url())
            .expect("url")
            .connect()
            .await
            .expect("connect admin");
        AdminClient::new(ch)
            .cluster_map(pb::ClusterMapRequest {})
            .await
            .expect("cluster map")
            .into_inner()
    }

    /// Waits until every partition has an owner with an epoch among the running nodes, as
    /// node `via` sees it, and the ownership matches `pred`.
    pub async fn wait_settled<F>(
        &self,
        via: usize,
        timeout: Duration,
        pred: F,
    ) -> pb::ClusterMapResponse
    where
        F: Fn(&pb::ClusterMapResponse) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let live: Vec<String> = self.live().iter().map(|&i| self.ids[i].clone()).collect();
        // Settled = every partition owned by a running node, and no move for 600 ms (hand-offs
        // of a rebalance happen within a few hundred ms of each other).
        let mut last: Option<(Vec<String>, Instant)> = None;
        loop {
            let m = self.map(via).await;
            let all_owned = m
                .owners
                .iter()
                .all(|o| live.contains(&o.node_id) && o.epoch != 0);
            let owners: Vec<String> = m.owners.iter().map(|o| o.node_id.clone()).collect();
            let stable_since = match &last {
                Some((prev, since)) if *prev == owners => *since,
                _ => Instant::now(),
            };
            last = Some((owners, stable_since));
            if all_owned && pred(&m) && stable_since.elapsed() >= Duration::from_millis(600) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not settle within {timeout:?}: {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` of node `i` (if it runs).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            s.kill9();
        }
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.node(i).child.id()
    }

    /// Every write `acked` holds reads back through node `i` ([`Acked::verify_via`]).
    pub async fn verify_acked(&self, i: usize, acked: &Acked) -> usize {
        let mut kv = self.client(i).await;
        acked
            .verify_via(&mut kv, &format!("node {}", self.ids[i]))
            .await
    }

    /// `strata ctl` on this cluster (with its S3 settings: snapshots and restores read the
    /// bucket); fails the test if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(bin())
            .arg("ctl")
            .args(["--etcd", &self.etcd_url])
            .args(args)
            .envs(self.s3_env.iter().cloned())
            .output()
            .expect("run strata ctl");
        assert!(
            out.status.success(),
            "strata ctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The partitions node `id` owns in `m`.
pub fn owned_by(m: &pb::ClusterMapResponse, id: &str) -> Vec<u32> {
    m.owners
        .iter()
        .filter(|o| o.node_id == id)
        .map(|o| o.partition)
        .collect()
}

/// A key of `partition` (of `partitions`), distinct per `tag` and `n`.
pub fn key_in(partition: u32, partitions: u32, tag: &str, n: usize) -> Bytes {
    let mut j = 0u64;
    loop {
        let k = format!("{tag}-{n}-{j}");
        if strata_format::partition_of(k.as_bytes(), partitions) == partition {
            return Bytes::from(k);
        }
        j += 1;
    }
}

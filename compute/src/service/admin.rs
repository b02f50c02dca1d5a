//! The gRPC `strata.v1.Admin` service: the routing table smart clients cache.

use super::kv::{Backend, KvService};
use crate::pb;
use tonic::{Request, Response, Status};

/// `strata.v1.Admin`: the routing table.
#[derive(Clone, Debug, Default)]
pub struct AdminService {
    kv: KvService,
}

impl AdminService {
    /// Admin answers for the same node as `kv`.
    pub fn new(kv: KvService) -> Self {
        AdminService { kv }
    }

    /// The tonic service.
    pub fn into_server(
        self,
    ) -> super::message_limit::MessageLimit<crate::pb::admin_server::AdminServer<AdminService>>
    {
        super::message_limit::MessageLimit::new(crate::pb::admin_server::AdminServer::new(self))
    }
}

#[tonic::async_trait]
impl crate::pb::admin_server::Admin for AdminService {
    async fn cluster_map(
        &self,
        req: Request<pb::ClusterMapRequest>,
    ) -> Result<Response<pb::ClusterMapResponse>, Status> {
        let cx = self.kv.ctx(&req)?;
        let key_prefix = cx
            .who
            .namespace()
            .map(|ns| ns.range().0)
            .unwrap_or_default();
        let mut map = match self.kv.backend()? {
            Backend::Single(db) => pb::ClusterMapResponse {
                partitions: 1,
                owners: vec![pb::PartitionOwner {
                    partition: 0,
                    node_id: String::new(),
                    addr: self.kv.me.get().cloned().unwrap_or_default(),
                    epoch: db.writer_epoch(),
                }],
                ..Default::default()
            },
            Backend::Cluster(n) => n.cluster_map(),
        };
        map.key_prefix = key_prefix;
        Ok(Response::new(map))
    }
}

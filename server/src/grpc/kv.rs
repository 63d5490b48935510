//! `agora.market.v1.KvService`: the replicated register.

use std::sync::Arc;

use agora_proto::market::kv_service_server::KvService;
use agora_proto::market::{GetReply, GetRequest, PutReply, PutRequest};
use tonic::{Request, Response, Status};

use super::{freshness, request_key};
use crate::node::Node;
use crate::raft::command::{Op, Outcome, Proposal};
use crate::store;

/// The service, over a running node.
pub struct KvApi {
    node: Arc<Node>,
}

impl KvApi {
    /// Serves `node`.
    #[must_use]
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl KvService for KvApi {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        let req = request.into_inner();
        let proposal = Proposal {
            request: Some(request_key(req.request_id)?),
            op: Op::Put {
                key: req.key,
                value: req.value,
            },
        };
        let applied = self.node.write(proposal).await?;
        match applied.outcome {
            Outcome::Put { revision } => Ok(Response::new(PutReply {
                index: applied.index,
                revision,
            })),
            other => Err(Status::internal(format!(
                "unexpected outcome {other:?} for a put"
            ))),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        let req = request.into_inner();
        crate::domain::kv::validate_key(&req.key).map_err(Status::invalid_argument)?;
        let applied_index = self.node.read_barrier(freshness(req.consistency)).await?;
        let stored = store::kv::get(self.node.state.readers(), &req.key)
            .await
            .map_err(|e| Status::internal(format!("reading the key failed: {e}")))?;
        Ok(Response::new(match stored {
            Some(s) => GetReply {
                found: true,
                value: s.value,
                revision: s.revision,
                applied_index,
            },
            None => GetReply {
                found: false,
                value: Vec::new(),
                revision: 0,
                applied_index,
            },
        }))
    }
}

//! `agora.raft.v1.RaftService`: the node-to-node listener (mutual TLS).

use std::sync::Arc;

use agora_proto::raft::raft_service_server::RaftService;
use agora_proto::raft::{
    ForwardWriteReply, ForwardWriteRequest, RaftPayload, ReadIndexReply, ReadIndexRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::error::WriteError;
use crate::node::Node;
use crate::raft::command::Proposal;
use crate::raft::network::{decode, encode};
use crate::raft::TypeConfig;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};

/// The service, over a running node.
pub struct RaftApi {
    node: Arc<Node>,
}

impl RaftApi {
    /// Serves `node`.
    #[must_use]
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn parse<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, Status> {
    decode(&payload.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode(value)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("cannot encode the raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftApi {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = parse(request.get_ref())?;
        let leader_commit = rpc.leader_commit.map_or(0, |l| l.index);
        let result = self.node.raft.append_entries(rpc).await;
        if matches!(
            result,
            Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
        ) {
            self.node.local.abstention.saw_leader_commit(leader_commit);
        }
        reply(&result)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = parse(request.get_ref())?;
        let applied = *self.node.state.applied().borrow();
        self.node
            .local
            .abstention
            .may_vote(applied)
            .map_err(Status::unavailable)?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = parse(request.get_ref())?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward_write(
        &self,
        request: Request<ForwardWriteRequest>,
    ) -> Result<Response<ForwardWriteReply>, Status> {
        let proposal: Proposal = decode(&request.get_ref().proposal)
            .map_err(|e| Status::invalid_argument(format!("undecodable proposal: {e}")))?;
        let result: Result<_, WriteError> = match proposal.op.validate() {
            Ok(()) => self.node.write_local(proposal).await,
            Err(rejection) => Err(rejection.into()),
        };
        let result = encode(&result)
            .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))?;
        Ok(Response::new(ForwardWriteReply { result }))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        match self.node.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(Response::new(ReadIndexReply {
                read_index: read.map_or(0, |l| l.index),
            })),
            Err(e) => Err(Status::unavailable(format!("not the leader: {e}"))),
        }
    }
}

//! gRPC services, one file each, with thin handlers: validate, convert,
//! call the node, convert back. Errors map to statuses in `crate::error`.

pub mod account;
pub mod admin;
pub mod catalogue;
pub mod kv;
pub mod ledger;
pub mod limits;
pub mod purchase;
pub mod raft;
pub mod rate_limit;
pub mod request_errors;
pub mod rpc_metrics;

use agora_proto::market;
use tonic::Status;

use crate::node::Freshness;
use crate::raft::command::RequestKey;

/// Longest request id or client name accepted.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Checks and converts a request id; every write needs one.
///
/// # Errors
/// `INVALID_ARGUMENT` when it is missing, empty or too long.
pub fn request_key(id: Option<market::RequestId>) -> Result<RequestKey, Status> {
    let id = id.ok_or_else(|| {
        Status::invalid_argument("request_id is missing; every write needs one (a fresh UUID per write, reused on retry)")
    })?;
    for (what, value) in [("request_id.client", &id.client), ("request_id.id", &id.id)] {
        if value.is_empty() || value.len() > MAX_REQUEST_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "{what} must be 1 to {MAX_REQUEST_ID_BYTES} bytes long"
            )));
        }
    }
    Ok(RequestKey {
        client: id.client,
        id: id.id,
    })
}

/// Converts a read's consistency options.
#[must_use]
pub fn freshness(c: Option<market::ReadConsistency>) -> Freshness {
    c.map(|c| Freshness {
        min_index: c.min_index,
        linearizable: c.linearizable,
    })
    .unwrap_or_default()
}

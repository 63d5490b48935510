//! `agora.market.v1.PurchaseService`: opening a purchase, the seller's key
//! deposit, the settlement that releases the key, cancelling, and reading
//! purchases back.
//!
//! Every write goes through the replicated log; the handler then reads the
//! purchase back at the write's index on this node (a forwarded write may
//! have been applied on the leader first). The ticket is signed here, from
//! the purchase row, so a retried `BeginPurchase` gets the same ticket.

use std::sync::Arc;

use agora_proto::auth::Role;
use agora_proto::dispute;
use agora_proto::market::purchase_service_server::PurchaseService;
use agora_proto::market::{
    BeginPurchaseReply, BeginPurchaseRequest, CancelPurchaseRequest, CompletePurchaseReply,
    CompletePurchaseRequest, DepositKeyRequest, DisputeRequest, GetPurchaseReply,
    GetPurchaseRequest, Purchase, PurchaseReply, PurchaseRole, PurchaseState as WireState,
    PurchasesReply, PurchasesRequest, RequestId, TicketKeyReply, TicketKeyRequest,
};
use agora_proto::ticket::Ticket;
use tonic::{Request, Response, Status};

use super::{freshness, request_key};
use crate::auth::Session;
use crate::domain::purchases::PurchaseState;
use crate::node::Node;
use crate::raft::command::{Actor, Op, Outcome, Proposal, MAX_PURCHASE_TTL_MS};
use crate::store;
use crate::store::purchases::{Proceeds, PurchaseRow, Side};

// The page sizes live with the other limits.
use super::limits::{DEFAULT_PURCHASES_PAGE as DEFAULT_PAGE, MAX_PURCHASES_PAGE as MAX_PAGE};

/// The service, over a running node.
pub struct PurchaseApi {
    node: Arc<Node>,
    /// How long a purchase holds the money when the buyer names no time.
    default_hold_ms: u64,
}

fn internal(e: &sqlx::Error) -> Status {
    Status::internal(format!("reading this node's state failed: {e}"))
}

fn bytes32(what: &str, bytes: &[u8]) -> Result<[u8; 32], Status> {
    bytes
        .try_into()
        .map_err(|_| Status::invalid_argument(format!("{what} is 32 bytes (got {})", bytes.len())))
}

fn purchase_id(id: u64) -> Result<u64, Status> {
    if id == 0 {
        return Err(Status::invalid_argument(
            "purchase_id is missing; `agora downloads` lists your purchases",
        ));
    }
    Ok(id)
}

fn wire_state(state: PurchaseState) -> WireState {
    match state {
        PurchaseState::Open => WireState::Open,
        PurchaseState::Keyed => WireState::Keyed,
        PurchaseState::Completed => WireState::Completed,
        PurchaseState::Cancelled => WireState::Cancelled,
        PurchaseState::Expired => WireState::Expired,
    }
}

/// The wire form of a purchase; never carries the escrowed key.
fn to_proto(p: &PurchaseRow) -> Purchase {
    let completed = p.state == PurchaseState::Completed;
    Purchase {
        id: p.id,
        listing_id: p.listing_id,
        title: p.title.clone(),
        buyer_id: p.buyer_id,
        buyer: p.buyer.clone(),
        seller_id: p.seller_id,
        seller: p.seller.clone(),
        price: p.price,
        commission: p.commission,
        net: if completed {
            p.price.saturating_sub(p.commission)
        } else {
            0
        },
        state: wire_state(p.state).into(),
        size: p.size,
        chunk_size: p.chunk_size,
        merkle_root: p.merkle_root.to_vec(),
        ciphertext_root: p.ciphertext_root.map(|r| r.to_vec()).unwrap_or_default(),
        created_ms: p.created_ms,
        expires_at_ms: p.expires_at_ms,
        closed_ms: p.closed_ms.unwrap_or(0),
        proceeds_pending: p.proceeds == Some(Proceeds::Pending),
        dispute_until_ms: p.release_at_ms.unwrap_or(0),
        refunded: p.proceeds == Some(Proceeds::Refunded),
    }
}

impl PurchaseApi {
    /// Serves `node`; purchases hold money for `default_hold_ms` unless the
    /// buyer names a time.
    #[must_use]
    pub fn new(node: Arc<Node>, default_hold_ms: u64) -> Self {
        Self {
            node,
            default_hold_ms,
        }
    }

    /// Proposes `op` as the session's user and returns the purchase it
    /// names, read back on this node at the write's index.
    async fn write(
        &self,
        session: &Session,
        id: Option<RequestId>,
        op: Op,
    ) -> Result<(PurchaseRow, u64), Status> {
        let mut key = request_key(id)?;
        key.client = format!("user:{}", session.user_id());
        let applied = self
            .node
            .write(Proposal {
                request: Some(key),
                op,
            })
            .await?;
        let Outcome::Purchase { purchase_id } = applied.outcome else {
            return Err(Status::internal(format!(
                "unexpected outcome {:?} for a purchase write",
                applied.outcome
            )));
        };
        self.node.wait_applied(applied.index).await?;
        let row = self.row(purchase_id).await?;
        Ok((row, applied.index))
    }

    async fn row(&self, purchase_id: u64) -> Result<PurchaseRow, Status> {
        store::purchases::get(self.node.state.readers(), purchase_id)
            .await
            .map_err(|e| internal(&e))?
            .ok_or_else(|| Status::not_found(format!("there is no purchase {purchase_id}")))
    }
}

#[tonic::async_trait]
impl PurchaseService for PurchaseApi {
    async fn begin_purchase(
        &self,
        request: Request<BeginPurchaseRequest>,
    ) -> Result<Response<BeginPurchaseReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        if req.listing_id == 0 {
            return Err(Status::invalid_argument(
                "listing_id is missing; `agora search` finds listings",
            ));
        }
        let ttl_ms = match u64::from(req.hold_seconds) * 1000 {
            // The replicated setting, when an admin set one, else this
            // node's own default.
            0 => crate::store::purchases::hold_ttl_ms(self.node.state.readers())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .unwrap_or(self.default_hold_ms),
            ms if ms > MAX_PURCHASE_TTL_MS => {
                return Err(Status::invalid_argument(format!(
                    "hold_seconds is at most {} (24 hours)",
                    MAX_PURCHASE_TTL_MS / 1000
                )))
            }
            ms => ms,
        };
        let op = Op::BeginPurchase {
            buyer_id: session.user_id(),
            listing_id: req.listing_id,
            ttl_ms,
        };
        let (row, index) = self.write(&session, req.request_id, op).await?;
        let readers = self.node.state.readers();
        let endpoint = store::catalogue::presence(readers, row.seller_id)
            .await
            .map_err(|e| internal(&e))?
            .map(|p| p.endpoint)
            .unwrap_or_default();
        let seller_key = store::accounts::user_by_id(readers, row.seller_id)
            .await
            .map_err(|e| internal(&e))?
            .map(|u| u.identity_public_key)
            .unwrap_or_default();
        let keys = self.node.auth.keys().await?;
        let ticket = Ticket {
            purchase_id: row.id,
            listing_id: row.listing_id,
            seller_id: row.seller_id,
            buyer_id: row.buyer_id,
            buyer_key: row.buyer_key,
            issued_at_ms: row.created_ms,
            expires_at_ms: row.expires_at_ms,
        }
        .sign(&keys.tickets);
        Ok(Response::new(BeginPurchaseReply {
            purchase: Some(to_proto(&row)),
            ticket,
            seller_endpoint: endpoint,
            seller_key,
            index,
        }))
    }

    async fn deposit_key(
        &self,
        request: Request<DepositKeyRequest>,
    ) -> Result<Response<PurchaseReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let op = Op::DepositKey {
            purchase_id: purchase_id(req.purchase_id)?,
            seller_id: session.user_id(),
            key: bytes32("the key", &req.key)?,
            ciphertext_root: bytes32("the ciphertext root", &req.ciphertext_root)?,
        };
        let (row, index) = self.write(&session, req.request_id, op).await?;
        Ok(Response::new(PurchaseReply {
            purchase: Some(to_proto(&row)),
            index,
        }))
    }

    async fn complete_purchase(
        &self,
        request: Request<CompletePurchaseRequest>,
    ) -> Result<Response<CompletePurchaseReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let op = Op::CompletePurchase {
            purchase_id: purchase_id(req.purchase_id)?,
            buyer_id: session.user_id(),
            ciphertext_root: bytes32("the ciphertext root", &req.ciphertext_root)?,
        };
        let (row, index) = self.write(&session, req.request_id, op).await?;
        // The command checked that the caller is the buyer and settled; the
        // key is theirs now.
        let key = match (row.state, row.escrow_key) {
            (PurchaseState::Completed, Some(key)) if row.buyer_id == session.user_id() => key,
            _ => {
                return Err(Status::internal(format!(
                    "purchase {} is {} after completing",
                    row.id,
                    row.state.as_str()
                )))
            }
        };
        Ok(Response::new(CompletePurchaseReply {
            purchase: Some(to_proto(&row)),
            key: key.to_vec(),
            index,
        }))
    }

    async fn cancel_purchase(
        &self,
        request: Request<CancelPurchaseRequest>,
    ) -> Result<Response<PurchaseReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let op = Op::CancelPurchase {
            purchase_id: purchase_id(req.purchase_id)?,
            actor: Actor {
                user_id: session.user_id(),
                admin: session.claims.role == Role::Admin,
            },
        };
        let (row, index) = self.write(&session, req.request_id, op).await?;
        Ok(Response::new(PurchaseReply {
            purchase: Some(to_proto(&row)),
            index,
        }))
    }

    async fn get_purchase(
        &self,
        request: Request<GetPurchaseRequest>,
    ) -> Result<Response<GetPurchaseReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let id = purchase_id(req.purchase_id)?;
        let applied_index = self.node.read_barrier(freshness(req.consistency)).await?;
        let row = self.row(id).await?;
        let me = session.user_id();
        if row.buyer_id != me && row.seller_id != me && session.claims.role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "purchase {id} is not yours; only its buyer, its seller or an admin can see it"
            )));
        }
        let seller_endpoint = store::catalogue::presence(self.node.state.readers(), row.seller_id)
            .await
            .map_err(|e| internal(&e))?
            .filter(|p| p.online)
            .map(|p| p.endpoint)
            .unwrap_or_default();
        Ok(Response::new(GetPurchaseReply {
            purchase: Some(to_proto(&row)),
            applied_index,
            seller_endpoint,
        }))
    }

    async fn purchases(
        &self,
        request: Request<PurchasesRequest>,
    ) -> Result<Response<PurchasesReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let side = match PurchaseRole::try_from(req.role) {
            Ok(PurchaseRole::Buyer) => Side::Buyer,
            Ok(PurchaseRole::Seller) => Side::Seller,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "role {} is neither BUYER nor SELLER",
                    req.role
                )))
            }
        };
        let limit = match req.limit {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "a page has at most {MAX_PAGE} purchases"
                )))
            }
            n => n,
        };
        let applied_index = self.node.read_barrier(freshness(req.consistency)).await?;
        let rows = store::purchases::list(
            self.node.state.readers(),
            session.user_id(),
            side,
            req.before_id,
            limit,
        )
        .await
        .map_err(|e| internal(&e))?;
        let next_before_id = if rows.len() == limit as usize {
            rows.last().map_or(0, |r| r.id)
        } else {
            0
        };
        Ok(Response::new(PurchasesReply {
            purchases: rows.iter().map(to_proto).collect(),
            next_before_id,
            applied_index,
        }))
    }

    async fn dispute(
        &self,
        request: Request<DisputeRequest>,
    ) -> Result<Response<PurchaseReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let id = purchase_id(req.purchase_id)?;
        let evidence = dispute::decode(&req.evidence)
            .map_err(|e| Status::invalid_argument(format!("the evidence does not decode: {e}")))?;
        // Judge against the latest state: the key and roots never change
        // once deposited, and the replicated command re-checks the window.
        self.node
            .read_barrier(crate::node::Freshness {
                min_index: 0,
                linearizable: true,
            })
            .await?;
        let row = self.row(id).await?;
        if row.buyer_id != session.user_id() {
            return Err(Status::permission_denied(format!(
                "purchase {id} is not yours; only its buyer disputes it"
            )));
        }
        let (Some(key), Some(ciphertext_root), PurchaseState::Completed) =
            (row.escrow_key, row.ciphertext_root, row.state)
        else {
            return Err(Status::failed_precondition(format!(
                "purchase {id} is not completed; only a paid purchase can be disputed (cancel it instead)"
            )));
        };
        let key = agora_proto::escrow::EscrowKey::from_bytes(key);
        let case = dispute::Case {
            purchase_id: id,
            key: &key,
            ciphertext_root: &ciphertext_root,
            plaintext_root: &row.merkle_root,
            size: row.size,
            chunk_size: row.chunk_size,
        };
        let fault = dispute::judge(&case, &evidence)
            .map_err(|refusal| Status::failed_precondition(refusal.to_string()))?;
        let op = Op::ReverseSale {
            purchase_id: id,
            buyer_id: session.user_id(),
            chunk_index: evidence.index,
            fault: match fault {
                dispute::Fault::DoesNotDecrypt => "does not decrypt".into(),
                dispute::Fault::WrongContent => "wrong content".into(),
            },
            evidence_hash: *blake3::hash(&req.evidence).as_bytes(),
        };
        let (row, index) = self.write(&session, req.request_id, op).await?;
        Ok(Response::new(PurchaseReply {
            purchase: Some(to_proto(&row)),
            index,
        }))
    }

    async fn ticket_key(
        &self,
        _request: Request<TicketKeyRequest>,
    ) -> Result<Response<TicketKeyReply>, Status> {
        let keys = self.node.auth.keys().await?;
        Ok(Response::new(TicketKeyReply {
            public_key: keys.tickets.verifying_key().to_bytes().to_vec(),
        }))
    }
}

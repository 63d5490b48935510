//! `agora.market.v1.LedgerService`: a user's balance, cash flows and
//! withdrawals. Reads are linearizable unless the request says otherwise
//! (read-index: any node answers once it has applied the leader's commit
//! index), so a deposit an admin just made shows in the very next read.

use std::sync::Arc;

use agora_proto::auth::Role;
use agora_proto::market::ledger_service_server::LedgerService;
use agora_proto::market::{
    BalanceReply, BalanceRequest, CashFlow, CashFlowsReply, CashFlowsRequest, ReadConsistency,
    WithdrawReply, WithdrawRequest,
};
use tonic::{Request, Response, Status};

use super::request_key;
use crate::auth::Session;
use crate::domain::ledger::Account;
use crate::node::{Freshness, Node};
use crate::raft::command::{Op, Outcome, Proposal};
use crate::store;
use crate::store::ledger::FlowFilter;

// The cash-flow page sizes live with the other limits.
use super::limits::{DEFAULT_CASH_FLOWS_PAGE as DEFAULT_PAGE, MAX_CASH_FLOWS_PAGE as MAX_PAGE};

/// The service, over a running node.
pub struct LedgerApi {
    node: Arc<Node>,
}

impl LedgerApi {
    /// Serves `node`.
    #[must_use]
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Whose data a read is about: the caller's own (0 or their id), or
    /// anyone's for an admin.
    fn subject(session: &Session, user_id: u64) -> Result<u64, Status> {
        if user_id == 0 || user_id == session.user_id() {
            return Ok(session.user_id());
        }
        if session.claims.role == Role::Admin {
            return Ok(user_id);
        }
        Err(Status::permission_denied(
            "you can read only your own account",
        ))
    }

    async fn barrier(&self, consistency: Option<ReadConsistency>) -> Result<u64, Status> {
        let freshness = consistency.map_or(
            Freshness {
                min_index: 0,
                linearizable: true,
            },
            |c| Freshness {
                min_index: c.min_index,
                linearizable: c.linearizable,
            },
        );
        Ok(self.node.read_barrier(freshness).await?)
    }

    /// Waits for `consistency`, then opens a read transaction on the state
    /// database and reads `user_id`'s account and the applied index in it.
    /// Every later statement in the transaction sees the same state (SQLite
    /// WAL keeps that snapshot until it ends), so a reply made from it is
    /// exactly the state at the index it reports.
    async fn account_snapshot(
        &self,
        consistency: Option<ReadConsistency>,
        user_id: u64,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Sqlite>, u64, Account), Status> {
        self.barrier(consistency).await?;
        let mut tx = self
            .node
            .state
            .readers()
            .begin()
            .await
            .map_err(|e| internal(&e))?;
        let applied_index = store::meta::applied_index(&mut tx)
            .await
            .map_err(|e| internal(&e))?;
        let account = store::ledger::user_account(&mut *tx, user_id)
            .await
            .map_err(|e| internal(&e))?
            .ok_or_else(|| Status::not_found(format!("user {user_id} has no account")))?;
        Ok((tx, applied_index, account))
    }
}

fn internal(e: &sqlx::Error) -> Status {
    Status::internal(e.to_string())
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    async fn balance(
        &self,
        request: Request<BalanceRequest>,
    ) -> Result<Response<BalanceReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let user_id = Self::subject(&session, req.user_id)?;
        // The balance, the held and pending money and the index they are
        // reported at all come from one state.
        let (mut tx, applied_index, account) =
            self.account_snapshot(req.consistency, user_id).await?;
        let pending = store::purchases::pending_proceeds(&mut *tx, user_id)
            .await
            .map_err(|e| internal(&e))?;
        Ok(Response::new(BalanceReply {
            user_id,
            balance: non_negative(account.balance),
            held: account.held,
            available: non_negative(account.available()),
            applied_index,
            pending,
        }))
    }

    async fn cash_flows(
        &self,
        request: Request<CashFlowsRequest>,
    ) -> Result<Response<CashFlowsReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let user_id = Self::subject(&session, req.user_id)?;
        let limit = match req.limit {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "a page has at most {MAX_PAGE} entries"
                )))
            }
            n => n,
        };
        let before_id = if req.cursor.is_empty() {
            None
        } else {
            Some(req.cursor.parse::<i64>().map_err(|_| {
                Status::invalid_argument("the cursor is not one this service gave out")
            })?)
        };
        if req.kinds.iter().any(|k| k.len() > 32) || req.kinds.len() > 16 {
            return Err(Status::invalid_argument(
                "at most 16 kinds of up to 32 characters",
            ));
        }
        let (mut tx, applied_index, account) =
            self.account_snapshot(req.consistency, user_id).await?;
        let filter = FlowFilter {
            kinds: req.kinds,
            from_ms: (req.from_ms > 0).then_some(req.from_ms),
            to_ms: (req.to_ms > 0).then_some(req.to_ms),
            before_id,
            limit,
        };
        let flows = store::ledger::flows(&mut *tx, account.id, &filter)
            .await
            .map_err(|e| internal(&e))?;
        let next_cursor = if flows.len() == limit as usize {
            flows.last().map(|f| f.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(CashFlowsReply {
            entries: flows
                .into_iter()
                .map(|f| CashFlow {
                    id: non_negative(f.id),
                    kind: f.kind,
                    amount: f.amount,
                    counterparty: f.counterparty,
                    time_ms: f.time_ms,
                    log_index: f.log_index,
                    hold_id: f.hold_id.map_or(0, non_negative),
                })
                .collect(),
            next_cursor,
            applied_index,
        }))
    }

    async fn withdraw(
        &self,
        request: Request<WithdrawRequest>,
    ) -> Result<Response<WithdrawReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let mut key = request_key(req.request_id)?;
        key.client = format!("user:{}", session.user_id());
        let applied = self
            .node
            .write(Proposal {
                request: Some(key),
                op: Op::Withdraw {
                    user_id: session.user_id(),
                    amount: req.amount,
                },
            })
            .await?;
        match applied.outcome {
            Outcome::Balance { balance, held } => Ok(Response::new(WithdrawReply {
                index: applied.index,
                balance: non_negative(balance),
                available: non_negative(balance).saturating_sub(held),
            })),
            other => Err(Status::internal(format!(
                "unexpected outcome {other:?} for a withdrawal"
            ))),
        }
    }
}

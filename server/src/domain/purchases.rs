//! A purchase's life, as plain Rust: which step may follow which, and who
//! may take it. The state machine loads the purchase a command names, asks
//! these functions, and stores the result, so the rules live here once.
//!
//! ```text
//! open ──DepositKey──▶ keyed ──CompletePurchase──▶ completed
//!   │                    │
//!   └──── cancel / expiry ┴──▶ cancelled / expired
//! ```
//!
//! The money moves in the same command that moves a purchase to
//! `completed` (the hold is posted) or to `cancelled` / `expired` (the hold
//! is voided): no state has the key released without the payment, or the
//! payment without the key.

/// Where a purchase is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurchaseState {
    /// Money held; no key yet.
    Open,
    /// The seller deposited the key and the ciphertext root.
    Keyed,
    /// Paid; the key is the buyer's.
    Completed,
    /// The buyer gave up; the money went back.
    Cancelled,
    /// Not completed in time; the money went back.
    Expired,
}

impl PurchaseState {
    /// The name stored and shown.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseState::Open => "open",
            PurchaseState::Keyed => "keyed",
            PurchaseState::Completed => "completed",
            PurchaseState::Cancelled => "cancelled",
            PurchaseState::Expired => "expired",
        }
    }

    /// Parses a stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(PurchaseState::Open),
            "keyed" => Some(PurchaseState::Keyed),
            "completed" => Some(PurchaseState::Completed),
            "cancelled" => Some(PurchaseState::Cancelled),
            "expired" => Some(PurchaseState::Expired),
            _ => None,
        }
    }

    /// Still waiting for the key or the settlement.
    #[must_use]
    pub fn is_live(self) -> bool {
        matches!(self, PurchaseState::Open | PurchaseState::Keyed)
    }
}

/// What the rules need to know about a purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseFacts {
    /// Its id.
    pub id: u64,
    /// Who buys.
    pub buyer_id: u64,
    /// Who sells.
    pub seller_id: u64,
    /// Where it is.
    pub state: PurchaseState,
    /// When it lapses unless completed (leader's clock, Unix ms).
    pub expires_at_ms: u64,
    /// The deposited key and ciphertext root, if any.
    pub escrow: Option<([u8; 32], [u8; 32])>,
}

/// Why a step is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurchaseError {
    /// The caller is not the party this step belongs to.
    #[error("{0}")]
    NotYours(String),
    /// The purchase's state does not allow the step.
    #[error("{0}")]
    WrongState(String),
}

/// What a `DepositKey` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deposit {
    /// Record the key: the purchase becomes keyed.
    Record,
    /// The same key and root again (a retry or a resumed transfer): nothing
    /// changes.
    Again,
}

/// What a `CompletePurchase` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Post the hold and release the key.
    Settle,
    /// Completed before: answer with the key again, move nothing.
    Again,
}

/// What a `CancelPurchase` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// Void the hold.
    Void,
    /// Already cancelled or expired: the money is back already.
    Again,
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PurchaseFacts {
    fn closed(&self) -> Option<PurchaseError> {
        let id = self.id;
        match self.state {
            PurchaseState::Cancelled => Some(PurchaseError::WrongState(format!(
                "purchase {id} was cancelled; its money went back to the buyer"
            ))),
            PurchaseState::Expired => Some(PurchaseError::WrongState(format!(
                "purchase {id} expired before it was completed; its money went back to the buyer"
            ))),
            _ => None,
        }
    }

    fn lapsed(&self, now_ms: u64) -> Option<PurchaseError> {
        (now_ms >= self.expires_at_ms).then(|| {
            PurchaseError::WrongState(format!(
                "purchase {} expired at {} ms; its money goes back to the buyer",
                self.id, self.expires_at_ms
            ))
        })
    }

    /// The seller deposits `key` for ciphertext with Merkle root `root`.
    ///
    /// # Errors
    /// Not the seller; the purchase is closed or past its expiry; a
    /// different key or root was deposited before.
    pub fn deposit(
        &self,
        seller_id: u64,
        key: &[u8; 32],
        root: &[u8; 32],
        now_ms: u64,
    ) -> Result<Deposit, PurchaseError> {
        if seller_id != self.seller_id {
            return Err(PurchaseError::NotYours(format!(
                "purchase {} is not a sale of yours; only its seller deposits the key",
                self.id
            )));
        }
        if let Some(e) = self.closed() {
            return Err(e);
        }
        if let Some((k, r)) = &self.escrow {
            if k == key && r == root {
                return Ok(Deposit::Again);
            }
            return Err(PurchaseError::WrongState(format!(
                "purchase {} already has a different key (ciphertext root {}); a purchase has exactly one key",
                self.id,
                hex(r)
            )));
        }
        if let Some(e) = self.lapsed(now_ms) {
            return Err(e);
        }
        Ok(Deposit::Record)
    }

    /// The buyer settles, having received ciphertext with Merkle root `root`.
    ///
    /// # Errors
    /// Not the buyer; closed, lapsed, or not keyed yet; `root` is not what
    /// the seller committed to.
    pub fn complete(
        &self,
        buyer_id: u64,
        root: &[u8; 32],
        now_ms: u64,
    ) -> Result<Completion, PurchaseError> {
        let id = self.id;
        if buyer_id != self.buyer_id {
            return Err(PurchaseError::NotYours(format!(
                "purchase {id} is not yours; only its buyer completes it"
            )));
        }
        if self.state == PurchaseState::Completed {
            return Ok(Completion::Again);
        }
        if let Some(e) = self.closed().or_else(|| self.lapsed(now_ms)) {
            return Err(e);
        }
        let Some((_, committed)) = &self.escrow else {
            return Err(PurchaseError::WrongState(format!(
                "the seller has not deposited the key for purchase {id} yet; it does so when it sends the last chunk, so finish the download first"
            )));
        };
        if committed != root {
            return Err(PurchaseError::WrongState(format!(
                "the ciphertext you received (root {}) is not what the seller committed to (root {}); nothing was charged. Fetch it again, or cancel purchase {id}",
                hex(root),
                hex(committed)
            )));
        }
        Ok(Completion::Settle)
    }

    /// The buyer (or an admin) gives up.
    ///
    /// # Errors
    /// Not the buyer; already completed.
    pub fn cancel(&self, user_id: u64, admin: bool) -> Result<Cancellation, PurchaseError> {
        let id = self.id;
        if user_id != self.buyer_id && !admin {
            return Err(PurchaseError::NotYours(format!(
                "purchase {id} is not yours; only its buyer cancels it"
            )));
        }
        match self.state {
            PurchaseState::Completed => Err(PurchaseError::WrongState(format!(
                "purchase {id} is completed and paid; it cannot be cancelled"
            ))),
            PurchaseState::Cancelled | PurchaseState::Expired => Ok(Cancellation::Again),
            PurchaseState::Open | PurchaseState::Keyed => Ok(Cancellation::Void),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> PurchaseFacts {
        PurchaseFacts {
            id: 7,
            buyer_id: 1,
            seller_id: 2,
            state: PurchaseState::Open,
            expires_at_ms: 1_000,
            escrow: None,
        }
    }

    fn keyed() -> PurchaseFacts {
        PurchaseFacts {
            state: PurchaseState::Keyed,
            escrow: Some(([1; 32], [2; 32])),
            ..open()
        }
    }

    #[test]
    fn only_the_seller_deposits_and_only_one_key() {
        assert_eq!(
            open().deposit(2, &[1; 32], &[2; 32], 10),
            Ok(Deposit::Record)
        );
        assert!(matches!(
            open().deposit(1, &[1; 32], &[2; 32], 10),
            Err(PurchaseError::NotYours(_))
        ));
        assert_eq!(
            keyed().deposit(2, &[1; 32], &[2; 32], 10),
            Ok(Deposit::Again)
        );
        assert!(matches!(
            keyed().deposit(2, &[9; 32], &[2; 32], 10),
            Err(PurchaseError::WrongState(_))
        ));
        assert!(matches!(
            keyed().deposit(2, &[1; 32], &[9; 32], 10),
            Err(PurchaseError::WrongState(_))
        ));
    }

    #[test]
    fn nothing_happens_after_expiry() {
        assert!(open().deposit(2, &[1; 32], &[2; 32], 1_000).is_err());
        assert!(keyed().complete(1, &[2; 32], 1_000).is_err());
        let expired = PurchaseFacts {
            state: PurchaseState::Expired,
            ..keyed()
        };
        assert!(expired.deposit(2, &[1; 32], &[2; 32], 10).is_err());
        assert!(expired.complete(1, &[2; 32], 10).is_err());
        assert_eq!(expired.cancel(1, false), Ok(Cancellation::Again));
    }

    #[test]
    fn completion_needs_the_buyer_the_key_and_the_committed_root() {
        assert_eq!(keyed().complete(1, &[2; 32], 10), Ok(Completion::Settle));
        assert!(matches!(
            keyed().complete(2, &[2; 32], 10),
            Err(PurchaseError::NotYours(_))
        ));
        assert!(matches!(
            keyed().complete(1, &[3; 32], 10),
            Err(PurchaseError::WrongState(_))
        ));
        assert!(matches!(
            open().complete(1, &[2; 32], 10),
            Err(PurchaseError::WrongState(_))
        ));
        let done = PurchaseFacts {
            state: PurchaseState::Completed,
            ..keyed()
        };
        // A retry after the deadline still gets the key it paid for.
        assert_eq!(done.complete(1, &[2; 32], 5_000), Ok(Completion::Again));
    }

    #[test]
    fn only_the_buyer_or_an_admin_cancels_and_never_after_payment() {
        assert_eq!(keyed().cancel(1, false), Ok(Cancellation::Void));
        assert_eq!(keyed().cancel(9, true), Ok(Cancellation::Void));
        assert!(matches!(
            keyed().cancel(2, false),
            Err(PurchaseError::NotYours(_))
        ));
        let done = PurchaseFacts {
            state: PurchaseState::Completed,
            ..keyed()
        };
        assert!(done.cancel(1, false).is_err());
    }

    #[test]
    fn states_round_trip() {
        for s in [
            PurchaseState::Open,
            PurchaseState::Keyed,
            PurchaseState::Completed,
            PurchaseState::Cancelled,
            PurchaseState::Expired,
        ] {
            assert_eq!(PurchaseState::parse(s.as_str()), Some(s));
        }
    }
}

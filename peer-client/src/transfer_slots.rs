//! How many transfers a selling peer serves at once: at most
//! [`TransferLimits::per_buyer`] for one buyer and
//! [`TransferLimits::total`] for everybody.
//!
//! A transfer beyond either limit is refused at once (never queued: a
//! queued buyer would wait on a stalled stream with no word of why), with a
//! sentence that names the limit and tells the buyer to try again when one
//! of its transfers ends. The buyer is the account named in the purchase
//! ticket, which the seller has already matched with the TLS identity the
//! buyer presented, so one account cannot spread its transfers over
//! several connections to get past its share.
//!
//! A slot is taken by [`TransferSlots::try_take`] and given back when its
//! [`TransferSlot`] drops (when the transfer task ends, whether the file was
//! sent, the buyer went away or an error stopped it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Transfers one buyer may have open at once by default: enough for a few
/// downloads side by side, small enough that one account cannot take the
/// seller's bandwidth and memory from everybody else.
pub const DEFAULT_TRANSFERS_PER_BUYER: usize = 4;
/// Transfers served at once by default, all buyers together. Each holds at
/// most a few chunks in memory (see [`crate::selling::PIPELINE_CHUNKS`]).
pub const DEFAULT_TRANSFERS_TOTAL: usize = 64;

/// The two limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLimits {
    /// Transfers one buyer may have open at once.
    pub per_buyer: usize,
    /// Transfers open at once, all buyers together.
    pub total: usize,
}

impl Default for TransferLimits {
    fn default() -> Self {
        Self {
            per_buyer: DEFAULT_TRANSFERS_PER_BUYER,
            total: DEFAULT_TRANSFERS_TOTAL,
        }
    }
}

/// Why a transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefused {
    /// The buyer has its share open already.
    #[error("this seller serves at most {limit} transfers to one buyer at a time, and {limit} of yours are open; try again when one of them finishes")]
    Buyer {
        /// The per-buyer limit.
        limit: usize,
    },
    /// The seller serves as many transfers as it will.
    #[error("this seller serves at most {limit} transfers at a time and is serving {limit} now; try again in a moment, when one of them finishes")]
    Total {
        /// The total limit.
        limit: usize,
    },
}

/// Open transfers, by buyer. Shared by every request of one file server.
#[derive(Debug, Clone)]
pub struct TransferSlots {
    limits: TransferLimits,
    /// One lock for both counts, so a check and its increment are one step
    /// and the two limits never disagree.
    open: Arc<Mutex<Open>>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_buyer: HashMap<u64, usize>,
}

impl TransferSlots {
    /// Slots under `limits` (a limit of 0 is taken as 1: a seller that serves
    /// nobody is not a seller).
    #[must_use]
    pub fn new(limits: TransferLimits) -> Self {
        Self {
            limits: TransferLimits {
                per_buyer: limits.per_buyer.max(1),
                total: limits.total.max(1),
            },
            open: Arc::default(),
        }
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> TransferLimits {
        self.limits
    }

    /// Takes a slot for `buyer_id`, or says which limit is reached.
    ///
    /// # Errors
    /// [`SlotRefused`] when the buyer or the seller is at its limit.
    pub fn try_take(&self, buyer_id: u64) -> Result<TransferSlot, SlotRefused> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = open.by_buyer.get(&buyer_id).copied().unwrap_or(0);
        if mine >= self.limits.per_buyer {
            return Err(SlotRefused::Buyer {
                limit: self.limits.per_buyer,
            });
        }
        if open.total >= self.limits.total {
            return Err(SlotRefused::Total {
                limit: self.limits.total,
            });
        }
        open.total += 1;
        *open.by_buyer.entry(buyer_id).or_insert(0) += 1;
        Ok(TransferSlot {
            buyer_id,
            open: Arc::clone(&self.open),
        })
    }

    /// Transfers open now (all buyers).
    #[must_use]
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// One open transfer; gives its slot back when dropped.
#[derive(Debug)]
pub struct TransferSlot {
    buyer_id: u64,
    open: Arc<Mutex<Open>>,
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_buyer.get_mut(&self.buyer_id) {
            *n -= 1;
            if *n == 0 {
                // Forget buyers with nothing open, so the map stays as small
                // as the set of buyers being served.
                open.by_buyer.remove(&self.buyer_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_buyer_gets_its_share_and_no_more() {
        let slots = TransferSlots::new(TransferLimits {
            per_buyer: 2,
            total: 10,
        });
        let a = slots.try_take(1).expect("first");
        let _b = slots.try_take(1).expect("second");
        assert_eq!(
            slots.try_take(1).err(),
            Some(SlotRefused::Buyer { limit: 2 })
        );
        // Another buyer is not affected.
        let _c = slots.try_take(2).expect("another buyer");
        drop(a);
        let _d = slots.try_take(1).expect("a slot came back");
        assert_eq!(slots.open(), 3);
    }

    #[test]
    fn the_total_caps_everybody() {
        let slots = TransferSlots::new(TransferLimits {
            per_buyer: 2,
            total: 3,
        });
        let held: Vec<_> = [1, 2, 3]
            .iter()
            .map(|b| slots.try_take(*b).expect("under the total"))
            .collect();
        assert_eq!(
            slots.try_take(4).err(),
            Some(SlotRefused::Total { limit: 3 })
        );
        drop(held);
        assert_eq!(slots.open(), 0);
        assert!(slots.open.lock().expect("lock").by_buyer.is_empty());
        let _again = slots.try_take(4).expect("all slots came back");
    }

    #[test]
    fn refusals_say_what_to_do() {
        let buyer = SlotRefused::Buyer { limit: 4 }.to_string();
        assert!(buyer.contains("at most 4 transfers to one buyer") && buyer.contains("try again"));
        let total = SlotRefused::Total { limit: 64 }.to_string();
        assert!(total.contains("at most 64 transfers") && total.contains("try again"));
    }

    #[test]
    fn a_zero_limit_still_serves_one() {
        let slots = TransferSlots::new(TransferLimits {
            per_buyer: 0,
            total: 0,
        });
        let _one = slots.try_take(1).expect("one");
        assert!(slots.try_take(2).is_err());
    }
}

//! Sellers' presence leases, kept by the leader in memory.
//!
//! A selling peer announces its endpoint and renews every half lease. Only
//! a *change* is replicated: coming online or moving to a new endpoint
//! (`SetPresence`), going offline (`SetPresence` with no endpoint), or a
//! lease lapsing (`LapsePresence`, proposed by the leader for every seller
//! it has not heard from within a lease, in batches). A renewal touches
//! only this table, so presence at 100,000 sellers renewing every minute
//! costs about 1,700 small RPCs a second on the leader and no Raft write.
//!
//! A new leader starts its table from the replicated state: every seller
//! online there gets a full lease from the moment of the takeover (they
//! renew with the new leader within half a lease). Each lease remembers the
//! log index of the presence change it stands for, and a lapse carries it,
//! so a lapse that crosses a fresh announcement in the log changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::node::Node;
use crate::raft::command::{Op, Proposal, MAX_LAPSES};

/// How often the leader looks for lapsed leases.
const LAPSE_CHECK: Duration = Duration::from_millis(500);

/// The leader's lease table.
pub struct Leases {
    /// How long a lease lasts without renewal.
    lease: Duration,
    /// Seller -> lease. A plain mutex: every critical section is a map
    /// operation, never held across an await.
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// The term this table was loaded for; `None` when not leading.
    term: Option<u64>,
    /// Live leases.
    leases: HashMap<u64, Lease>,
}

struct Lease {
    /// When the seller last announced.
    renewed: Instant,
    /// Index of the replicated change the lease stands for.
    since_index: u64,
}

impl Leases {
    /// A table whose leases last `lease`.
    #[must_use]
    pub fn new(lease: Duration) -> Arc<Self> {
        Arc::new(Self {
            lease,
            table: Mutex::new(Table::default()),
        })
    }

    /// How long a lease lasts.
    #[must_use]
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every update leaves the map consistent, so a poisoned lock is usable.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Renews (or starts) `user_id`'s lease, standing for the replicated
    /// change at `since_index`.
    pub fn renew(&self, user_id: u64, since_index: u64) {
        self.table().leases.insert(
            user_id,
            Lease {
                renewed: Instant::now(),
                since_index,
            },
        );
    }

    /// Renews `user_id`'s lease if it still holds one standing for the
    /// change at `since_index`; false when it holds none (it lapsed, and
    /// the lapse may be in flight), so the caller must replicate the
    /// announcement instead.
    pub fn renew_held(&self, user_id: u64, since_index: u64) -> bool {
        match self.table().leases.get_mut(&user_id) {
            Some(lease) if lease.since_index == since_index => {
                lease.renewed = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Forgets a seller that went offline.
    pub fn forget(&self, user_id: u64) {
        self.table().leases.remove(&user_id);
    }

    /// Live leases (for metrics and tests).
    #[must_use]
    pub fn len(&self) -> usize {
        self.table().leases.len()
    }

    /// Whether no seller holds a lease.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns the leases older than the lease length.
    fn take_lapsed(&self, now: Instant) -> Vec<(u64, u64)> {
        let lease = self.lease;
        let mut table = self.table();
        let lapsed: Vec<(u64, u64)> = table
            .leases
            .iter()
            .filter(|(_, l)| now.duration_since(l.renewed) >= lease)
            .map(|(user, l)| (*user, l.since_index))
            .collect();
        for (user, _) in &lapsed {
            table.leases.remove(user);
        }
        lapsed
    }
}

/// Keeps the lease table while this node leads: loads it on taking over,
/// clears it on stepping down, and proposes `LapsePresence` for the leases
/// that ran out.
pub async fn run_lease_keeper(node: Arc<Node>, leases: Arc<Leases>) {
    let mut ticker = tokio::time::interval(LAPSE_CHECK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (state, term) = {
            let metrics = node.raft.metrics();
            let m = metrics.borrow();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            let mut table = leases.table();
            table.term = None;
            table.leases.clear();
            continue;
        }
        if leases.table().term != Some(term) && !load(&node, &leases, term).await {
            continue;
        }
        let lapsed = leases.take_lapsed(Instant::now());
        for batch in lapsed.chunks(MAX_LAPSES) {
            let proposal = Proposal {
                request: None,
                op: Op::LapsePresence {
                    lapses: batch.to_vec(),
                },
            };
            match node.write_local(proposal).await {
                Ok(_) => {
                    metrics::counter!("agora_presence_lapses_total").increment(batch.len() as u64)
                }
                Err(e) => {
                    // Put them back: the next check proposes them again.
                    tracing::warn!(error = %e, "proposing presence lapses failed; will retry");
                    for (user, since) in batch {
                        leases.table().leases.entry(*user).or_insert(Lease {
                            renewed: Instant::now()
                                .checked_sub(leases.lease)
                                .unwrap_or_else(Instant::now),
                            since_index: *since,
                        });
                    }
                }
            }
        }
        metrics::gauge!("agora_presence_leases").set(leases.len() as f64);
    }
}

/// Starts the table of a new term from the replicated state, once this
/// node has applied everything committed before it led.
async fn load(node: &Node, leases: &Leases, term: u64) -> bool {
    let caught_up = match node.read_index().await {
        Ok(index) => node.wait_applied(index).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = caught_up {
        tracing::debug!(error = %e, "presence leases wait for the leader's read index");
        return false;
    }
    let online = match crate::store::catalogue::online_sellers(node.state.readers()).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot load presence; will retry");
            return false;
        }
    };
    let now = Instant::now();
    let mut table = leases.table();
    table.term = Some(term);
    table.leases = online
        .into_iter()
        .map(|row| {
            (
                row.user_id,
                Lease {
                    renewed: now,
                    since_index: row.changed_index,
                },
            )
        })
        .collect();
    tracing::info!(
        sellers = table.leases.len(),
        term,
        "presence leases loaded for this term"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_lapse_after_their_length_only() {
        let leases = Leases::new(Duration::from_secs(60));
        leases.renew(1, 10);
        leases.renew(2, 11);
        let now = Instant::now();
        assert!(leases.take_lapsed(now).is_empty());
        let later = now + Duration::from_secs(61);
        let mut lapsed = leases.take_lapsed(later);
        lapsed.sort_unstable();
        assert_eq!(lapsed, vec![(1, 10), (2, 11)]);
        assert!(leases.is_empty(), "lapsed leases leave the table");
        // A renewal after the lapse was taken is not a renewal.
        assert!(!leases.renew_held(1, 10));
        leases.renew(1, 12);
        assert!(leases.renew_held(1, 12));
        assert!(!leases.renew_held(1, 10), "a lease for an older change");
    }
}

//! Abstaining from elections after log damage.
//!
//! When [`LogStore::open`](super::log_store::LogStore::open) finds that the
//! log lost entries the state machine had not applied yet, some of them may
//! have been acknowledged to a leader and counted toward a commit: this node
//! may have been part of the only majority that holds a committed entry.
//! Were it to vote (or stand) for a node that lacks the entry, the entry
//! could be lost. So until it has caught up with a leader, it neither
//! grants votes nor starts elections.
//!
//! "Caught up" means: the first leader that replicates to it after the
//! start announces its commit index (every entry committed anywhere is in
//! that leader's log and at or below an index it will commit); once this
//! node has applied up to that index, what it lost is back.
//!
//! Safety over availability: a cluster that needs this node's vote to elect
//! a leader waits until a node holding the lost entries returns.

use std::sync::{Arc, Mutex};

use crate::events::{EventKind, EventSink};

use super::typ;

/// How often an abstaining node looks whether it has caught up, besides
/// every change of its applied index.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether this node may take part in elections; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Abstention {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Votes and stands as usual.
    #[default]
    Voting,
    /// Neither votes nor stands until it has applied the commit index of
    /// the first leader it hears from (`None`: none heard yet).
    Abstaining { catch_up_to: Option<u64> },
}

impl Abstention {
    /// A node that votes as usual.
    #[must_use]
    pub fn voting() -> Self {
        Self::default()
    }

    /// A node that abstains until it has caught up with a leader.
    #[must_use]
    pub fn until_caught_up() -> Self {
        Self {
            inner: Arc::new(Mutex::new(State::Abstaining { catch_up_to: None })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the node abstains now.
    #[must_use]
    pub fn abstains(&self) -> bool {
        *self.state() != State::Voting
    }

    /// Notes a leader's commit index from a replication request this node
    /// accepted; the first one after the start is the index to reach.
    pub fn saw_leader_commit(&self, commit: u64) {
        let mut state = self.state();
        if let State::Abstaining { catch_up_to: None } = *state {
            *state = State::Abstaining {
                catch_up_to: Some(commit),
            };
        }
    }

    /// Whether this node may grant a vote, having applied up to `applied`;
    /// the error says why not. Ends the abstention once caught up.
    ///
    /// # Errors
    /// While the node abstains.
    pub fn may_vote(&self, applied: u64) -> Result<(), String> {
        self.refresh(applied);
        match *self.state() {
            State::Voting => Ok(()),
            State::Abstaining { catch_up_to: None } => Err(
                "this node's raft log lost entries it may have acknowledged, and it abstains \
                 from elections until a leader has brought it up to date"
                    .to_owned(),
            ),
            State::Abstaining {
                catch_up_to: Some(index),
            } => Err(format!(
                "this node's raft log lost entries it may have acknowledged, and it abstains \
                 from elections until it has applied index {index} (it is at {applied})"
            )),
        }
    }

    /// Ends the abstention when `applied` reached the index to catch up
    /// to; returns whether it just ended.
    pub fn refresh(&self, applied: u64) -> bool {
        let mut state = self.state();
        match *state {
            State::Abstaining {
                catch_up_to: Some(index),
            } if applied >= index => {
                *state = State::Voting;
                true
            }
            _ => false,
        }
    }
}

/// Keeps elections off while `abstention` lasts, and turns them back on
/// (with an event) once the node has caught up.
pub async fn run_abstention(
    raft: typ::Raft,
    abstention: Abstention,
    mut applied: tokio::sync::watch::Receiver<u64>,
    events: EventSink,
    id: u64,
) {
    if !abstention.abstains() {
        return;
    }
    raft.runtime_config().elect(false);
    loop {
        let now = *applied.borrow_and_update();
        if abstention.refresh(now) || !abstention.abstains() {
            break;
        }
        // The target is set by a replication request, which need not move
        // the applied index: look again at least every tick.
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
    raft.runtime_config().elect(true);
    let index = *applied.borrow();
    tracing::info!(
        index,
        "caught up with the leader after log damage; taking part in elections again"
    );
    events.note(
        EventKind::LogRepaired,
        id,
        format!(
            "node {id} caught up with the leader at index {index} after its raft log was \
             repaired, and takes part in elections again"
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voting_node_votes() {
        assert_eq!(Abstention::voting().may_vote(0), Ok(()));
    }

    #[test]
    fn an_abstaining_node_votes_once_it_applied_the_first_leader_commit() {
        let abstention = Abstention::until_caught_up();
        assert!(abstention.may_vote(100).is_err(), "no leader heard yet");
        abstention.saw_leader_commit(50);
        // Only the first leader commit sets the target.
        abstention.saw_leader_commit(80);
        let refused = abstention.may_vote(49).expect_err("behind the leader");
        assert!(refused.contains("index 50"), "{refused}");
        assert_eq!(abstention.may_vote(50), Ok(()));
        assert!(!abstention.abstains());
        // And it stays a voter.
        abstention.saw_leader_commit(1000);
        assert_eq!(abstention.may_vote(0), Ok(()));
    }
}

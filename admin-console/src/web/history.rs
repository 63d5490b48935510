//! The dashboard's memory: a sample of the whole cluster every second
//! (requests/s, commits/s, replication lag, who answers, who leads), kept
//! for the last minutes in the console process, so the charts survive a
//! page reload and every browser sees the same history.
//!
//! Samples come from each node's `/metrics` page (see [`scrape`]): no
//! session is needed, so the history fills from the moment the console
//! starts. Between two samples the sampler also notes what changed (a node
//! stopped answering, a new leader), the console's own event list.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::scrape::{self, NodeFigures, ScrapeClient};

/// How often the sampler looks at the cluster.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How many samples are kept: ten minutes at one a second.
pub const HISTORY_SAMPLES: usize = 600;
/// How many observed events are kept.
pub const MAX_OBSERVED_EVENTS: usize = 200;

/// One point of the charts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// When it was taken (Unix ms).
    pub at_ms: u64,
    /// gRPC requests served per second, all nodes together.
    pub requests_per_sec: f64,
    /// Log entries committed per second.
    pub commits_per_sec: f64,
    /// The largest replication lag the leader reports (entries), if a
    /// leader answered.
    pub max_lag: Option<u64>,
    /// Nodes whose metrics page answered.
    pub reachable: Vec<u64>,
    /// The node whose page says it leads, if any.
    pub leader: Option<u64>,
}

/// Something the console saw change between two samples.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ObservedEvent {
    /// When it was seen (Unix ms).
    pub at_ms: u64,
    /// The node concerned, if one.
    pub node_id: Option<u64>,
    /// What happened, as a sentence.
    pub text: String,
}

/// A node the sampler scrapes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Raft node id.
    pub id: u64,
    /// `host:port` of its metrics listener.
    pub metrics_addr: String,
}

/// What one node's page said (or that it did not answer).
type Scraped = (u64, Result<NodeFigures, String>);

/// The kept samples and events, behind one lock (readers take a copy).
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    points: VecDeque<Point>,
    events: VecDeque<ObservedEvent>,
    /// The previous scrape, to turn counters into rates and notice changes.
    previous: Option<Previous>,
}

#[derive(Debug)]
struct Previous {
    at: Instant,
    figures: BTreeMap<u64, NodeFigures>,
    unreachable: BTreeMap<u64, String>,
    leader: Option<u64>,
}

impl History {
    /// Every kept point, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.lock().points.iter().cloned().collect()
    }

    /// Every kept event, newest first.
    pub fn events(&self) -> Vec<ObservedEvent> {
        self.lock().events.iter().rev().cloned().collect()
    }

    /// Folds one round of scrapes (taken at `at`, `at_ms`) into the history.
    pub fn record(&self, at: Instant, at_ms: u64, scraped: Vec<Scraped>) {
        let mut inner = self.lock();
        let mut figures = BTreeMap::new();
        let mut unreachable = BTreeMap::new();
        for (id, result) in scraped {
            match result {
                Ok(f) => {
                    figures.insert(id, f);
                }
                Err(why) => {
                    unreachable.insert(id, why);
                }
            }
        }
        let leader = figures
            .iter()
            .filter(|(_, f)| f.is_leader)
            .max_by_key(|(_, f)| f.term)
            .map(|(id, _)| *id);
        let (requests_per_sec, commits_per_sec) = match &inner.previous {
            Some(previous) => rates(previous, at, &figures),
            None => (0.0, 0.0),
        };
        let max_lag = leader.and_then(|id| {
            figures[&id]
                .lag
                .iter()
                .filter(|(target, _)| **target != id)
                .map(|(_, lag)| *lag)
                .max()
                .or(Some(0))
        });
        let events = changes(inner.previous.as_ref(), &figures, &unreachable, leader);
        for (node_id, text) in events {
            inner.events.push_back(ObservedEvent {
                at_ms,
                node_id,
                text,
            });
            if inner.events.len() > MAX_OBSERVED_EVENTS {
                inner.events.pop_front();
            }
        }
        inner.points.push_back(Point {
            at_ms,
            requests_per_sec,
            commits_per_sec,
            max_lag,
            reachable: figures.keys().copied().collect(),
            leader,
        });
        if inner.points.len() > HISTORY_SAMPLES {
            inner.points.pop_front();
        }
        inner.previous = Some(Previous {
            at,
            figures,
            unreachable,
            leader,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the history whole, so a poisoned lock is fine.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Requests/s over all nodes and commits/s, from two scrapes. A counter
/// that went down belongs to a restarted process: its new value is what
/// it served since.
fn rates(previous: &Previous, at: Instant, now: &BTreeMap<u64, NodeFigures>) -> (f64, f64) {
    let secs = at.duration_since(previous.at).as_secs_f64();
    if secs <= 0.0 {
        return (0.0, 0.0);
    }
    let mut requests = 0.0;
    for (id, figures) in now {
        let before = previous.figures.get(id).map_or(0.0, |f| f.requests_total);
        requests += if figures.requests_total >= before {
            figures.requests_total - before
        } else {
            figures.requests_total
        };
    }
    let committed =
        |figures: &BTreeMap<u64, NodeFigures>| figures.values().map(|f| f.committed_index).max();
    let commits = match (committed(&previous.figures), committed(now)) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => 0,
    };
    #[allow(clippy::cast_precision_loss)]
    let commits = commits as f64;
    (requests / secs, commits / secs)
}

/// What changed since the previous scrape (or what the first one found),
/// as `(node, sentence)` pairs.
fn changes(
    previous: Option<&Previous>,
    figures: &BTreeMap<u64, NodeFigures>,
    unreachable: &BTreeMap<u64, String>,
    leader: Option<u64>,
) -> Vec<(Option<u64>, String)> {
    let was_unreachable = |id: &u64| previous.is_some_and(|p| p.unreachable.contains_key(id));
    let mut out = Vec::new();
    for (id, why) in unreachable {
        if !was_unreachable(id) {
            out.push((Some(*id), format!("node {id} stopped answering: {why}")));
        }
    }
    for id in figures.keys() {
        if was_unreachable(id) {
            out.push((Some(*id), format!("node {id} answers again")));
        }
    }
    let previous_leader = previous.and_then(|p| p.leader);
    if leader != previous_leader && (leader.is_some() || previous.is_some()) {
        match leader {
            Some(id) => {
                let term = figures.get(&id).map_or(0, |f| f.term);
                out.push((Some(id), format!("node {id} leads (term {term})")));
            }
            None => out.push((None, "no node says it leads".to_owned())),
        }
    }
    out
}

/// Scrapes every target each [`SAMPLE_INTERVAL`] into `history`, until the
/// process ends.
pub async fn run_sampler(history: std::sync::Arc<History>, targets: Vec<Target>) {
    let client = scrape::client();
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let scraped = sample_once(&client, &targets).await;
        history.record(Instant::now(), agora_peer::account::now_ms(), scraped);
    }
}

async fn sample_once(client: &ScrapeClient, targets: &[Target]) -> Vec<Scraped> {
    let calls = targets.iter().map(|target| async move {
        let result = scrape::scrape(client, &target.metrics_addr)
            .await
            .map(|samples| NodeFigures::from_samples(&samples))
            .map_err(|e| e.to_string());
        (target.id, result)
    });
    futures::future::join_all(calls).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(requests: f64, committed: u64, leader: bool, lag: &[(u64, u64)]) -> NodeFigures {
        NodeFigures {
            requests_total: requests,
            committed_index: committed,
            is_leader: leader,
            term: 2,
            lag: lag.iter().copied().collect(),
        }
    }

    #[test]
    fn turns_counters_into_rates_and_notes_changes() {
        let history = History::default();
        let start = Instant::now();
        history.record(
            start,
            1_000,
            vec![
                (1, Ok(node(100.0, 10, true, &[(1, 0), (2, 0), (3, 4)]))),
                (2, Ok(node(50.0, 10, false, &[]))),
                (3, Ok(node(50.0, 9, false, &[]))),
            ],
        );
        history.record(
            start + Duration::from_secs(2),
            3_000,
            vec![
                (1, Ok(node(140.0, 30, true, &[(1, 0), (2, 1), (3, 25)]))),
                // Restarted: its counter started again from zero.
                (2, Ok(node(6.0, 30, false, &[]))),
                (3, Err("connection refused".to_owned())),
            ],
        );
        let points = history.points();
        assert_eq!(points.len(), 2);
        let last = &points[1];
        // (40 + 6) requests and 20 commits over 2 s.
        assert!((last.requests_per_sec - 23.0).abs() < 1e-9, "{last:?}");
        assert!((last.commits_per_sec - 10.0).abs() < 1e-9, "{last:?}");
        assert_eq!(last.max_lag, Some(25));
        assert_eq!(last.reachable, vec![1, 2]);
        assert_eq!(last.leader, Some(1));
        let events = history.events();
        // Newest first; the leader was noted by the first sample.
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            events[0].text,
            "node 3 stopped answering: connection refused"
        );
        assert_eq!(events[0].node_id, Some(3));
        assert_eq!(events[1].text, "node 1 leads (term 2)");
        assert_eq!(events[1].at_ms, 1_000);
    }

    #[test]
    fn keeps_a_bounded_history() {
        let history = History::default();
        let start = Instant::now();
        for i in 0..(HISTORY_SAMPLES as u64 + 5) {
            history.record(
                start + Duration::from_secs(i),
                i,
                vec![(1, Ok(node(0.0, i, true, &[])))],
            );
        }
        let points = history.points();
        assert_eq!(points.len(), HISTORY_SAMPLES);
        assert_eq!(points[0].at_ms, 5);
    }
}

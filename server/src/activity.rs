//! What a node counts about its own traffic for the admin console: gRPC
//! requests per second (from the same layer that feeds Prometheus) and the
//! last login of each account it served. Neither is replicated: each node
//! reports its own.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the request counter is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: the rate is averaged over this many intervals.
const SAMPLES: usize = 10;

/// Counts every gRPC request this node serves (shared with the metrics
/// layer) and keeps recent samples to compute a rate.
#[derive(Debug, Clone, Default)]
pub struct RequestRate {
    total: Arc<AtomicU64>,
    samples: Arc<Mutex<VecDeque<(Instant, u64)>>>,
}

impl RequestRate {
    /// Counts one request.
    pub fn count(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests served since the process started.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Records a sample (called every [`SAMPLE_EVERY`] by [`Self::run_sampler`]).
    pub fn sample(&self, at: Instant) {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        samples.push_back((at, self.total()));
        while samples.len() > SAMPLES + 1 {
            samples.pop_front();
        }
    }

    /// Requests per second between the oldest and the newest sample (0
    /// before there are two).
    #[must_use]
    pub fn per_sec(&self) -> f64 {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (samples.front(), samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                #[allow(clippy::cast_precision_loss)]
                let requests = n1.saturating_sub(*n0) as f64;
                requests / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Samples the counter forever.
    pub async fn run_sampler(self) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            self.sample(Instant::now());
        }
    }
}

/// Accounts most remembered; beyond it the oldest logins are forgotten, so
/// a flood of accounts cannot grow the map without bound.
const MAX_REMEMBERED_LOGINS: usize = 100_000;

/// The last successful login of each account on this node, Unix ms.
#[derive(Debug, Default)]
pub struct LastLogins {
    logins: Mutex<HashMap<u64, u64>>,
}

impl LastLogins {
    /// Notes that `user_id` logged in at `at_ms`.
    pub fn record(&self, user_id: u64, at_ms: u64) {
        let mut logins = self
            .logins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if logins.len() >= MAX_REMEMBERED_LOGINS && !logins.contains_key(&user_id) {
            if let Some(oldest) = logins.iter().min_by_key(|(_, at)| **at).map(|(u, _)| *u) {
                logins.remove(&oldest);
            }
        }
        logins.insert(user_id, at_ms);
    }

    /// When `user_id` last logged in here, if it did since this node started.
    #[must_use]
    pub fn last(&self, user_id: u64) -> Option<u64> {
        self.logins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&user_id)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_requests_over_the_sampled_time() {
        let rate = RequestRate::default();
        let t0 = Instant::now();
        assert!(rate.per_sec().abs() < f64::EPSILON);
        rate.sample(t0);
        for _ in 0..30 {
            rate.count();
        }
        rate.sample(t0 + Duration::from_secs(3));
        assert!((rate.per_sec() - 10.0).abs() < 1e-9);
        assert_eq!(rate.total(), 30);
    }

    #[test]
    fn only_the_last_samples_count() {
        let rate = RequestRate::default();
        let t0 = Instant::now();
        for i in 0..30u64 {
            rate.count();
            rate.sample(t0 + Duration::from_secs(i));
        }
        // One request per second, whatever the window.
        assert!((rate.per_sec() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn logins_keep_the_latest_time() {
        let logins = LastLogins::default();
        logins.record(7, 100);
        logins.record(7, 200);
        assert_eq!(logins.last(7), Some(200));
        assert_eq!(logins.last(8), None);
    }
}

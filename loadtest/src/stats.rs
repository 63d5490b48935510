//! What a `run` measures while it runs: every operation's latency (overall
//! and per second, HDR histograms), every error a user saw by kind, and
//! when each successful write finished (for the failover gap).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::latency::{new_histogram, Percentiles};

/// The operations a simulated user performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Full-text search, on a follower.
    Search,
    /// The user's balance.
    Balance,
    /// The user's latest cash flows.
    History,
    /// A seller publishes a new listing (a write).
    Publish,
    /// A seller changes a listing's price (a write).
    Reprice,
    /// A real purchase from a simulated seller (several writes and a
    /// peer-to-peer transfer).
    Buy,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 6] = [
        Op::Search,
        Op::Balance,
        Op::History,
        Op::Publish,
        Op::Reprice,
        Op::Buy,
    ];

    /// Its name in `--mix` and the report.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Op::Search => "search",
            Op::Balance => "balance",
            Op::History => "history",
            Op::Publish => "publish",
            Op::Reprice => "reprice",
            Op::Buy => "buy",
        }
    }

    /// Whether a success means the cluster accepted a replicated write.
    #[must_use]
    pub fn writes(self) -> bool {
        matches!(self, Op::Publish | Op::Reprice | Op::Buy)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A per-second histogram: 2 significant digits keep one second of six
/// operations small even for long runs.
fn second_histogram() -> Histogram<u64> {
    // Valid constant bounds, so creation cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// One second of the run.
struct Second {
    latency: Vec<Histogram<u64>>,
    errors: u64,
}

impl Second {
    fn new() -> Self {
        Self {
            latency: Op::ALL.iter().map(|_| second_histogram()).collect(),
            errors: 0,
        }
    }
}

struct Inner {
    overall: Vec<Histogram<u64>>,
    ok: Vec<u64>,
    failed: Vec<u64>,
    seconds: Vec<Second>,
    /// `op/kind` -> count, of errors the user saw.
    errors: BTreeMap<String, u64>,
    /// First message seen of each error kind, to show the operator.
    samples: BTreeMap<String, String>,
    /// Milliseconds since the start at which a write succeeded.
    write_done_ms: Vec<u64>,
}

/// The shared recorder of one run.
pub struct Recorder {
    started: Instant,
    inner: Mutex<Inner>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            inner: Mutex::new(Inner {
                overall: Op::ALL.iter().map(|_| new_histogram()).collect(),
                ok: vec![0; Op::ALL.len()],
                failed: vec![0; Op::ALL.len()],
                seconds: Vec::new(),
                errors: BTreeMap::new(),
                samples: BTreeMap::new(),
                write_done_ms: Vec::new(),
            }),
        }
    }

    /// When the run started.
    #[must_use]
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Milliseconds since the start.
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Only counters inside: a panic elsewhere leaves them usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a success of `op` that took `latency`, finishing now.
    pub fn ok(&self, op: Op, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 60_000_000);
        let now = self.now_ms();
        let second = usize::try_from(now / 1000).unwrap_or(usize::MAX);
        let mut inner = self.lock();
        let _ = inner.overall[op.index()].record(us);
        inner.ok[op.index()] += 1;
        while inner.seconds.len() <= second {
            inner.seconds.push(Second::new());
        }
        let _ = inner.seconds[second].latency[op.index()].record(us);
        if op.writes() {
            inner.write_done_ms.push(now);
        }
    }

    /// Records a failure of `op` that a user saw, of kind `kind`.
    pub fn failed(&self, op: Op, kind: &str, message: &str) {
        let second = usize::try_from(self.now_ms() / 1000).unwrap_or(usize::MAX);
        let key = format!("{}/{kind}", op.name());
        let mut inner = self.lock();
        inner.failed[op.index()] += 1;
        while inner.seconds.len() <= second {
            inner.seconds.push(Second::new());
        }
        inner.seconds[second].errors += 1;
        if !inner.samples.contains_key(&key) {
            inner.samples.insert(key.clone(), message.to_owned());
        }
        *inner.errors.entry(key).or_default() += 1;
    }

    /// Totals so far: successes, failures, and the p99 of the last whole
    /// second (ms), for the progress line.
    #[must_use]
    pub fn glance(&self) -> (u64, u64, f64) {
        let inner = self.lock();
        let ok = inner.ok.iter().sum();
        let failed = inner.failed.iter().sum();
        let last = inner.seconds.len().saturating_sub(2);
        let p99 = inner.seconds.get(last).map_or(0.0, |s| {
            let mut all = second_histogram();
            for h in &s.latency {
                let _ = all.add(h);
            }
            ms(all.value_at_quantile(0.99))
        });
        (ok, failed, p99)
    }

    /// Latency of every success that finished outside the given windows
    /// (whole seconds since the start, inclusive), from the per-second
    /// histograms (2 significant digits).
    #[must_use]
    pub fn latency_outside(&self, windows: &[(u64, u64)]) -> Percentiles {
        let inner = self.lock();
        let mut all = second_histogram();
        for (t, second) in inner.seconds.iter().enumerate() {
            let t = t as u64;
            if windows.iter().any(|(from, to)| (*from..=*to).contains(&t)) {
                continue;
            }
            for h in &second.latency {
                let _ = all.add(h);
            }
        }
        Percentiles::of(&all)
    }

    /// Everything recorded, summarized, for a run of `seconds`.
    #[must_use]
    pub fn summary(&self, seconds: f64) -> Summary {
        let inner = self.lock();
        let mut ops = BTreeMap::new();
        let mut all = new_histogram();
        for op in Op::ALL {
            let h = &inner.overall[op.index()];
            let _ = all.add(h);
            ops.insert(
                op.name().to_owned(),
                OpSummary::of(h, inner.ok[op.index()], inner.failed[op.index()], seconds),
            );
        }
        let ok_all = inner.ok.iter().sum();
        let failed_all = inner.failed.iter().sum();
        ops.insert(
            "all".to_owned(),
            OpSummary::of(&all, ok_all, failed_all, seconds),
        );
        let per_second = inner
            .seconds
            .iter()
            .enumerate()
            .map(|(t, s)| {
                let mut total = second_histogram();
                let mut by_op = BTreeMap::new();
                for op in Op::ALL {
                    let h = &s.latency[op.index()];
                    let _ = total.add(h);
                    by_op.insert(
                        op.name().to_owned(),
                        SecondOp {
                            ok: h.len(),
                            p99_ms: ms(h.value_at_quantile(0.99)),
                        },
                    );
                }
                SecondSummary {
                    t: t as u64,
                    ok: total.len(),
                    errors: s.errors,
                    p50_ms: ms(total.value_at_quantile(0.5)),
                    p99_ms: ms(total.value_at_quantile(0.99)),
                    max_ms: ms(total.max()),
                    ops: by_op,
                }
            })
            .collect();
        let mut writes = inner.write_done_ms.clone();
        writes.sort_unstable();
        Summary {
            ops,
            per_second,
            errors: inner.errors.clone(),
            error_samples: inner.samples.clone(),
            write_done_ms: writes,
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

#[allow(clippy::cast_precision_loss)]
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One operation over the whole run.
#[derive(Debug, Serialize)]
pub struct OpSummary {
    /// Successes.
    pub ok: u64,
    /// Failures a user saw.
    pub errors: u64,
    /// Successes per second.
    pub per_sec: f64,
    /// Latency of the successes.
    pub latency_ms: Percentiles,
}

impl OpSummary {
    #[allow(clippy::cast_precision_loss)]
    fn of(h: &Histogram<u64>, ok: u64, errors: u64, seconds: f64) -> Self {
        Self {
            ok,
            errors,
            per_sec: ok as f64 / seconds.max(0.001),
            latency_ms: Percentiles::of(h),
        }
    }
}

/// One operation in one second.
#[derive(Debug, Serialize)]
pub struct SecondOp {
    /// Successes that finished in this second.
    pub ok: u64,
    /// Their 99th percentile latency.
    pub p99_ms: f64,
}

/// One second of the run.
#[derive(Debug, Serialize)]
pub struct SecondSummary {
    /// Seconds since the start.
    pub t: u64,
    /// Successes that finished in this second.
    pub ok: u64,
    /// Failures users saw in this second.
    pub errors: u64,
    /// Median latency of the successes.
    pub p50_ms: f64,
    /// 99th percentile latency of the successes.
    pub p99_ms: f64,
    /// Slowest success.
    pub max_ms: f64,
    /// The same per operation.
    pub ops: BTreeMap<String, SecondOp>,
}

/// What [`Recorder::summary`] returns.
pub struct Summary {
    /// Per operation, and `all`.
    pub ops: BTreeMap<String, OpSummary>,
    /// Per second.
    pub per_second: Vec<SecondSummary>,
    /// Errors users saw, `op/kind` -> count.
    pub errors: BTreeMap<String, u64>,
    /// The first message of each error kind.
    pub error_samples: BTreeMap<String, String>,
    /// When each successful write finished, ms since the start, ascending.
    pub write_done_ms: Vec<u64>,
}

/// The longest stretch without a finished write inside `[from, to]` ms,
/// counting from the last write before `from` (or `from` itself).
#[must_use]
pub fn longest_write_gap(writes: &[u64], from: u64, to: u64) -> u64 {
    let start = writes.partition_point(|t| *t < from);
    let mut previous = if start > 0 { writes[start - 1] } else { from };
    let mut longest = 0;
    for t in &writes[start..] {
        if *t > to {
            longest = longest.max(t - previous);
            return longest;
        }
        longest = longest.max(t - previous);
        previous = *t;
    }
    longest.max(to.saturating_sub(previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_spans_the_crash() {
        let writes = [100, 200, 300, 2300, 2400];
        // Crash at 350: the last write before was at 300, the next at 2300.
        assert_eq!(longest_write_gap(&writes, 350, 3000), 2000);
        // A window with steady writes has the longest of its own gaps.
        assert_eq!(longest_write_gap(&writes, 2350, 2400), 100);
        // No writes at all after the crash: the whole window.
        assert_eq!(longest_write_gap(&[10], 100, 900), 890);
    }

    #[test]
    fn records_and_summarizes() {
        let r = Recorder::new();
        r.ok(Op::Search, Duration::from_millis(3));
        r.ok(Op::Buy, Duration::from_millis(30));
        r.failed(Op::Buy, "unavailable", "no leader");
        let s = r.summary(1.0);
        assert_eq!(s.ops["search"].ok, 1);
        assert_eq!(s.ops["buy"].errors, 1);
        assert_eq!(s.ops["all"].ok, 2);
        assert_eq!(s.errors["buy/unavailable"], 1);
        assert_eq!(s.write_done_ms.len(), 1);
    }
}

//! Latency histograms and the percentiles every report prints.

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram of 1 µs .. 60 s at 3 significant digits, in µs.
pub fn new_histogram() -> Histogram<u64> {
    // These bounds are valid constants, so creation cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a microsecond histogram, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Percentiles {
    /// Reads them off `h` (values in µs).
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

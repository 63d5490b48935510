//! Reading a node's Prometheus `/metrics` page: fetching it over plain
//! HTTP/1 and picking out the few series the dashboard charts.
//!
//! The sampler needs no credential this way (the metrics listener is open,
//! like Prometheus needs it), so the charts keep filling while nobody is
//! signed in, and the console never needs the operator certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Longest one scrape may take: a dead node must not hold up the others'
/// samples (the sampler asks every node at once, each second).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// A metrics page larger than this is refused (ours are a few tens of KiB).
const MAX_PAGE_BYTES: usize = 4 << 20;

/// An HTTP client for metrics pages, reused across scrapes (it keeps
/// connections open).
pub type ScrapeClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// A new client for [`scrape`].
#[must_use]
pub fn client() -> ScrapeClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Why a scrape failed, as a sentence.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// `host:port` did not make a URL.
    #[error("{0:?} is not a host:port address")]
    Address(String),
    /// No answer within [`SCRAPE_TIMEOUT`].
    #[error("no answer within {} ms", SCRAPE_TIMEOUT.as_millis())]
    Timeout,
    /// The connection failed.
    #[error("could not fetch the metrics page: {0}")]
    Http(String),
    /// Not a 200.
    #[error("the metrics page answered HTTP {0}")]
    Status(u16),
    /// Not UTF-8.
    #[error("the metrics page is not UTF-8 text")]
    NotText,
}

/// Fetches `http://ADDR/metrics` and parses it.
///
/// # Errors
/// When the page cannot be fetched within [`SCRAPE_TIMEOUT`] or is not
/// text.
pub async fn scrape(client: &ScrapeClient, addr: &str) -> Result<Vec<Sample>, ScrapeError> {
    let uri: hyper::Uri = format!("http://{addr}/metrics")
        .parse()
        .map_err(|_| ScrapeError::Address(addr.to_owned()))?;
    let fetch = async {
        let response = client
            .get(uri)
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
            .collect()
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::NotText)
    };
    let text = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .map_err(|_| ScrapeError::Timeout)??;
    Ok(parse(&text))
}

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with its `_bucket` / `_sum` / `_count` suffix, if any).
    pub name: String,
    /// Label pairs, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Parses the sample lines of a Prometheus text page; comments, blank
/// lines and lines that do not parse are skipped (the dashboard charts
/// what it can read; validating the format is the tests' job).
#[must_use]
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    (!name.is_empty()).then(|| Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows `}`.
fn parse_labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim().to_owned();
        let mut chars = text[eq + 1..].trim_start().char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let quoted = text[eq + 1..].trim_start();
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => (value.push('\n'), escaped = false).1,
                (true, c) => (value.push(c), escaped = false).1,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        labels.insert(key, value);
        text = &quoted[end? + 1..];
    }
}

/// What the dashboard reads from one node's page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFigures {
    /// All gRPC requests served since the process started.
    pub requests_total: f64,
    /// Highest index this node knows committed.
    pub committed_index: u64,
    /// Whether this node leads.
    pub is_leader: bool,
    /// Its Raft term.
    pub term: u64,
    /// On the leader: entries each other node is behind, by node id.
    pub lag: BTreeMap<u64, u64>,
}

impl NodeFigures {
    /// Picks the dashboard's figures out of a parsed page.
    #[must_use]
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut figures = Self::default();
        for sample in samples {
            match sample.name.as_str() {
                "agora_rpc_requests_total" => figures.requests_total += sample.value,
                "agora_raft_committed_index" => figures.committed_index = whole(sample.value),
                "agora_raft_is_leader" => figures.is_leader = sample.value >= 1.0,
                "agora_raft_term" => figures.term = whole(sample.value),
                "agora_raft_replication_lag" => {
                    if let Some(target) = sample
                        .labels
                        .get("target")
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        figures.lag.insert(target, whole(sample.value));
                    }
                }
                _ => {}
            }
        }
        figures
    }
}

/// A gauge holding a count, as a count (negative or NaN reads as 0).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole(value: f64) -> u64 {
    // Saturating float-to-int conversion: the gauges hold whole numbers.
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# TYPE agora_rpc_requests_total counter
agora_rpc_requests_total{method="/agora.admin.v1.AdminService/Status",code="OK"} 12
agora_rpc_requests_total{method="/agora.market.v1.AccountService/Login",code="Unauthenticated"} 3

# TYPE agora_raft_committed_index gauge
agora_raft_committed_index 41
agora_raft_is_leader 1
agora_raft_term 3
agora_raft_replication_lag{target="2"} 0
agora_raft_replication_lag{target="3"} 17
agora_rpc_duration_seconds_bucket{method="x",le="+Inf"} 5
odd_label{a="say \"hi\", ok",b="x\\y"} 1.5e3
not a sample line
"#;

    #[test]
    fn reads_the_dashboard_series() {
        let samples = parse(PAGE);
        let figures = NodeFigures::from_samples(&samples);
        assert!((figures.requests_total - 15.0).abs() < f64::EPSILON);
        assert_eq!(figures.committed_index, 41);
        assert!(figures.is_leader);
        assert_eq!(figures.term, 3);
        assert_eq!(figures.lag, BTreeMap::from([(2, 0), (3, 17)]));
    }

    #[test]
    fn unescapes_labels_and_reads_special_values() {
        let samples = parse(PAGE);
        let odd = samples
            .iter()
            .find(|s| s.name == "odd_label")
            .expect("parsed");
        assert_eq!(odd.labels["a"], "say \"hi\", ok");
        assert_eq!(odd.labels["b"], "x\\y");
        assert!((odd.value - 1500.0).abs() < f64::EPSILON);
        let bucket = samples
            .iter()
            .find(|s| s.name == "agora_rpc_duration_seconds_bucket")
            .expect("parsed");
        assert_eq!(bucket.labels["le"], "+Inf");
        assert!(samples.iter().all(|s| s.name != "not"));
    }
}

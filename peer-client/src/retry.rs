//! When and how the client retries, and how a failed RPC reads to a person.
//!
//! A write may be retried only because it carries a request id: the cluster
//! applies a given id once, so "did the first attempt land?" never matters.
//! The limits below bound how long a caller waits through an election.

use std::time::Duration;

use agora_proto::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};
use rand::Rng;
use tonic::{Code, Status};

/// Most attempts one call makes before giving up.
pub(crate) const MAX_ATTEMPTS: u32 = 30;
/// Longest a call keeps retrying, all attempts together. An election with
/// the dev timeouts (1-2 s) plus a busy machine fits well within it.
pub(crate) const RETRY_BUDGET: Duration = Duration::from_secs(20);
/// Longest one write attempt may take before the client tries again (the
/// node may be hung rather than dead, which no connection error reveals).
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one read may take; a node waits (bounded) for `min_index`.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause between attempts that do not follow a redirect.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest pause between attempts.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// How hard a [`ClusterClient`](crate::ClusterClient) tries before it
/// returns an error. The default suits interactive use and tests on a busy
/// machine: up to 30 attempts within 20 s, 5 s per attempt, 10 s per read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts per call.
    pub max_attempts: u32,
    /// Longest a call keeps retrying, all attempts together.
    pub budget: Duration,
    /// Longest one attempt of a leader call (a write) may take.
    pub attempt_timeout: Duration,
    /// Longest one read from one node may take.
    pub read_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: MAX_ATTEMPTS,
            budget: RETRY_BUDGET,
            attempt_timeout: ATTEMPT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
        }
    }
}

/// Whether an RPC that failed with `status` may be sent again (to the same
/// or another node) without changing its meaning.
///
/// True for "not the leader" redirects, unavailable nodes, deadlines, and
/// connection failures that never produced a server answer. Every other
/// code is the server's considered answer and is returned to the caller.
#[must_use]
pub fn is_retryable(status: &Status) -> bool {
    if status.metadata().contains_key(LEADER_ID_HEADER) {
        return true;
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        // A status decoded from a server's answer has no source; one made
        // locally from a broken connection (reset, closed mid-call) does.
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

/// The leader a "not the leader" status names: its id (never 0) and, when
/// the node sent it, its public address.
#[must_use]
pub fn leader_hint_of(status: &Status) -> Option<(u64, Option<String>)> {
    let metadata = status.metadata();
    let id = metadata
        .get(LEADER_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|id| *id != 0)?;
    let addr = metadata
        .get(LEADER_ADDR_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|addr| !addr.is_empty())
        .map(str::to_owned);
    Some((id, addr))
}

/// The pause before attempt `attempt + 1`: doubling from
/// [`BACKOFF_START`] up to [`BACKOFF_MAX`], with jitter so that many
/// clients do not retry in lockstep.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << attempt.min(10))
        .min(BACKOFF_MAX);
    base.mul_f64(rand::thread_rng().gen_range(0.75..=1.25))
}

/// One plain sentence for a failed RPC, for command-line output.
#[must_use]
pub fn describe_status(status: &Status) -> String {
    let detail = status.message().trim();
    let what = match status.code() {
        Code::Unavailable => "the cluster is unavailable",
        Code::DeadlineExceeded => "the cluster did not answer in time",
        Code::InvalidArgument => "the request was refused as invalid",
        Code::NotFound => "not found",
        Code::AlreadyExists => "it already exists",
        // Admin calls take an admin session or the operator certificate;
        // the server's message says which is missing.
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "not authenticated",
        Code::FailedPrecondition => "the cluster is not in a state to do this",
        // A size limit, an overload, or too many failed logins; the
        // server's message says which (and when to retry).
        Code::ResourceExhausted => "a limit was reached",
        Code::Unimplemented => "this node does not support the call (is it a different version?)",
        Code::Cancelled => "the call was cancelled",
        _ => "the call failed",
    };
    if detail.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {detail}")
    }
}

/// `status` (from `node`) with a note on how many attempts were made,
/// keeping its code.
pub(crate) fn gave_up(node: u64, status: &Status, attempts: u32, elapsed: Duration) -> Status {
    Status::new(
        status.code(),
        format!(
            "{} (node {node}; gave up after {attempts} attempts in {:.1}s)",
            status.message(),
            elapsed.as_secs_f64()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(id: &str, addr: Option<&str>) -> Status {
        let mut status = Status::unavailable("not the leader");
        if let Ok(value) = id.parse() {
            status.metadata_mut().insert(LEADER_ID_HEADER, value);
        }
        if let Some(addr) = addr.and_then(|a| a.parse().ok()) {
            status.metadata_mut().insert(LEADER_ADDR_HEADER, addr);
        }
        status
    }

    #[test]
    fn classifies_statuses() {
        assert!(is_retryable(&Status::unavailable("down")));
        assert!(is_retryable(&Status::deadline_exceeded("slow")));
        assert!(!is_retryable(&Status::invalid_argument("bad key")));
        assert!(!is_retryable(&Status::unknown("server said so")));
        assert!(!is_retryable(&Status::permission_denied("no cert")));
        let mut aborted = Status::failed_precondition("not leader");
        aborted
            .metadata_mut()
            .insert(LEADER_ID_HEADER, tonic::metadata::MetadataValue::from(2u64));
        assert!(is_retryable(&aborted));
        let local = Status::from_error(Box::new(std::io::Error::other("reset")));
        assert_eq!(local.code(), Code::Unknown);
        assert!(is_retryable(&local));
    }

    #[test]
    fn reads_the_leader_headers() {
        assert_eq!(
            leader_hint_of(&redirect("3", Some("127.0.0.1:7103"))),
            Some((3, Some("127.0.0.1:7103".to_owned())))
        );
        assert_eq!(leader_hint_of(&redirect("2", None)), Some((2, None)));
        assert_eq!(leader_hint_of(&redirect("0", None)), None);
        assert_eq!(leader_hint_of(&redirect("x", None)), None);
        assert_eq!(leader_hint_of(&Status::unavailable("down")), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= BACKOFF_START.mul_f64(1.25));
        assert!(backoff(3) >= BACKOFF_START.mul_f64(8.0 * 0.75));
        assert!(backoff(40) <= BACKOFF_MAX.mul_f64(1.25));
    }

    #[test]
    fn describes_in_one_sentence() {
        assert_eq!(
            describe_status(&Status::unavailable("no leader")),
            "the cluster is unavailable: no leader"
        );
        assert_eq!(describe_status(&Status::not_found("")), "not found");
        assert_eq!(
            describe_status(&Status::resource_exhausted(
                "too many failed logins for this name; try again in 4 s"
            )),
            "a limit was reached: too many failed logins for this name; try again in 4 s"
        );
    }
}

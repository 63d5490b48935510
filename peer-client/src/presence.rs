//! Presence: a selling peer tells the cluster where it serves files and
//! keeps a lease alive, so search can say which sellers are online.
//!
//! The lease lives on the leader. Coming online (or moving to a new
//! endpoint) is a replicated write; a renewal is not, which keeps presence
//! cheap with many peers. A follower answers `UNAVAILABLE` with the
//! leader's id and address, which [`ClusterClient::call_leader`] follows.
//!
//! [`keep_presence`] is what a serving peer runs beside its file server:
//! announce, renew every `renew_after_ms` the cluster asks for, ride out
//! elections and crashes (retrying with a growing pause, never giving up on
//! a transient error), and go offline when told to stop.

use std::future::Future;
use std::time::Duration;

use agora_proto::market::{AnnounceReply, AnnounceRequest, GoOfflineReply, GoOfflineRequest};
use tonic::{Code, Response};

use crate::{request_id, ClientError, ClusterClient, PeerStore};

/// Shortest pause between two renewals, whatever the cluster asks for (a
/// reply of 0 must not turn into a busy loop).
pub const MIN_RENEW_AFTER: Duration = Duration::from_secs(1);

/// First pause after a failed announcement; it doubles up to
/// [`RETRY_MAX`]. The cluster client has already retried within its own
/// budget, so these pauses are between whole announcements.
pub const RETRY_START: Duration = Duration::from_millis(500);

/// Longest pause between two failed announcements: short enough that a
/// peer is back online soon after the cluster recovers.
pub const RETRY_MAX: Duration = Duration::from_secs(15);

/// Longest going offline may take at shutdown: the lease lapses by itself
/// anyway, so a stopping peer does not wait long for a cluster that is
/// down.
pub const GO_OFFLINE_TIMEOUT: Duration = Duration::from_secs(5);

/// Announces that the session's account serves files at `endpoint`
/// (`host:port`), or renews its lease there.
///
/// # Errors
/// [`ClientError::Rpc`] with `UNAUTHENTICATED` without a session,
/// `INVALID_ARGUMENT` for an endpoint that is not `host:port`, or the last
/// error once the retries are used up.
pub async fn announce(
    client: &ClusterClient,
    endpoint: &str,
) -> Result<AnnounceReply, ClientError> {
    let request = AnnounceRequest {
        endpoint: endpoint.to_owned(),
    };
    Ok(client
        .call_leader(|channel| {
            let request = request.clone();
            let mut catalogue = client.catalogue_on(channel);
            async move { catalogue.announce(request).await.map(Response::into_inner) }
        })
        .await?)
}

/// Takes the session's account offline at once (a replicated write).
///
/// # Errors
/// As [`announce`].
pub async fn go_offline(client: &ClusterClient) -> Result<GoOfflineReply, ClientError> {
    let request = GoOfflineRequest {
        request_id: Some(request_id("presence")),
    };
    Ok(client
        .call_leader(|channel| {
            let request = request.clone();
            let mut catalogue = client.catalogue_on(channel);
            async move {
                catalogue
                    .go_offline(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await?)
}

/// How long to wait before renewing, from an announcement's reply: what
/// the cluster asks, at least [`MIN_RENEW_AFTER`], and well inside the
/// lease should the cluster ask for more than the lease itself.
#[must_use]
pub fn renew_after(reply: &AnnounceReply) -> Duration {
    let mut ms = reply.renew_after_ms;
    if reply.lease_ms > 0 && ms >= reply.lease_ms {
        ms = reply.lease_ms / 2;
    }
    Duration::from_millis(ms).max(MIN_RENEW_AFTER)
}

/// Whether an announcement failed for a reason that waiting will not fix:
/// no session or an expired one, no right to sell, or an endpoint the
/// cluster refuses. Everything else (no leader, a node down, a timeout,
/// an overload) is worth retrying.
fn is_permanent(err: &ClientError) -> bool {
    matches!(
        err.code(),
        Some(Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument)
    ) || matches!(err, ClientError::InvalidToken)
}

/// The pause after `failures` failed announcements in a row.
fn retry_pause(failures: u32) -> Duration {
    RETRY_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(8))
        .min(RETRY_MAX)
}

/// Keeps the session's account online at `endpoint` until `shutdown`
/// completes, then takes it offline (bounded by [`GO_OFFLINE_TIMEOUT`]).
/// Renews every `renew_after_ms` the cluster asks for; a failed
/// announcement is retried with a growing pause (up to [`RETRY_MAX`]) for
/// as long as it takes. The indexes of presence changes go into `store`,
/// when given, like every write of the peer.
///
/// # Errors
/// Only a permanent refusal ends it early: `UNAUTHENTICATED` (log in
/// again), `PERMISSION_DENIED`, or `INVALID_ARGUMENT` for the endpoint.
/// Going offline at shutdown may also fail; the lease then lapses by
/// itself.
pub async fn keep_presence(
    client: &ClusterClient,
    endpoint: &str,
    store: Option<&PeerStore>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    tokio::pin!(shutdown);
    let mut failures: u32 = 0;
    loop {
        let pause = tokio::select! {
            () = &mut shutdown => break,
            result = announce(client, endpoint) => match result {
                Ok(reply) => {
                    if failures > 0 {
                        tracing::info!(endpoint, "back online after {failures} failed announcements");
                    }
                    failures = 0;
                    record(store, reply.index).await;
                    renew_after(&reply)
                }
                Err(err) if is_permanent(&err) => return Err(err),
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let pause = retry_pause(failures);
                    tracing::warn!(
                        endpoint,
                        failures,
                        error = %err,
                        "could not announce presence; retrying in {:.1}s",
                        pause.as_secs_f64()
                    );
                    pause
                }
            },
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    let reply = match tokio::time::timeout(GO_OFFLINE_TIMEOUT, go_offline(client)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ClientError::Rpc(tonic::Status::deadline_exceeded(format!(
                "going offline took longer than {}s; the lease will lapse by itself",
                GO_OFFLINE_TIMEOUT.as_secs()
            ))))
        }
    };
    record(store, reply.index).await;
    Ok(())
}

/// Records a presence write's index (0: a renewal, nothing to record). A
/// local database failure only costs read-your-writes for presence, so it
/// is logged, not fatal to the lease.
async fn record(store: Option<&PeerStore>, index: u64) {
    if let (Some(store), true) = (store, index > 0) {
        if let Err(err) = store.bump_max_seen_index(index).await {
            tracing::warn!(error = %err, "could not record a presence index");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lease_ms: u64, renew_after_ms: u64) -> AnnounceReply {
        AnnounceReply {
            lease_ms,
            renew_after_ms,
            index: 0,
        }
    }

    #[test]
    fn renews_when_asked_but_never_in_a_busy_loop() {
        assert_eq!(renew_after(&reply(60_000, 20_000)), Duration::from_secs(20));
        assert_eq!(renew_after(&reply(60_000, 0)), MIN_RENEW_AFTER);
        assert_eq!(renew_after(&reply(60_000, 90_000)), Duration::from_secs(30));
        assert_eq!(renew_after(&reply(0, 5_000)), Duration::from_secs(5));
    }

    #[test]
    fn retries_grow_and_are_capped() {
        assert_eq!(retry_pause(1), RETRY_START);
        assert_eq!(retry_pause(2), RETRY_START * 2);
        assert_eq!(retry_pause(100), RETRY_MAX);
    }

    #[test]
    fn only_refusals_are_permanent() {
        let rpc = |status| ClientError::Rpc(status);
        assert!(is_permanent(&rpc(tonic::Status::unauthenticated(
            "expired"
        ))));
        assert!(is_permanent(&rpc(tonic::Status::invalid_argument(
            "endpoint"
        ))));
        assert!(!is_permanent(&rpc(tonic::Status::unavailable("no leader"))));
        assert!(!is_permanent(&rpc(tonic::Status::deadline_exceeded(
            "slow"
        ))));
        assert!(!is_permanent(&rpc(tonic::Status::resource_exhausted(
            "busy"
        ))));
        assert!(!is_permanent(&rpc(tonic::Status::internal("oops"))));
    }
}

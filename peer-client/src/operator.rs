//! The operator's calls that `agora-admin`'s command line and its web
//! dashboard both make: the event log, users, settings and membership.
//!
//! One function per call, so the two front ends differ only in how they
//! print. Reads go to any node (every node answers from its applied
//! state); writes go to the leader with the usual retries, under one
//! request id per logical write. Every call needs an admin session or the
//! operator certificate.

use crate::ledger::{admin_id, admin_read, admin_write};
use crate::{ClientError, ClusterClient};
use agora_proto::admin::{
    AddLearnerRequest, DeleteUserReply, DeleteUserRequest, EventsReply, EventsRequest,
    FindUsersReply, FindUsersRequest, GetSettingsRequest, Member, MembershipReply,
    PromoteVoterRequest, RemoveNodeRequest, SetSettingRequest, Settings, ShowUserRequest,
    UserDetail,
};

/// A page of the replicated event log: events after `since_id`, oldest
/// first, at most `limit` (0: the node's default).
///
/// # Errors
/// The last error when no node answered.
pub async fn events(
    client: &ClusterClient,
    since_id: u64,
    limit: u32,
) -> Result<EventsReply, ClientError> {
    let request = EventsRequest { since_id, limit };
    admin_read(client, &request, |mut admin, request| async move {
        admin.events(request).await
    })
    .await
}

/// A page of the users whose name contains `query`, by id, after
/// `after_id`.
///
/// # Errors
/// `INVALID_ARGUMENT` for a page size out of range, or the last error when
/// no node answered.
pub async fn find_users(
    client: &ClusterClient,
    query: &str,
    after_id: u64,
    limit: u32,
) -> Result<FindUsersReply, ClientError> {
    let request = FindUsersRequest {
        query: query.trim().to_owned(),
        after_id,
        limit,
    };
    admin_read(client, &request, |mut admin, request| async move {
        admin.find_users(request).await
    })
    .await
}

/// Everything the cluster knows about one user.
///
/// # Errors
/// `NOT_FOUND` for an unknown user, or the last error when no node
/// answered.
pub async fn show_user(client: &ClusterClient, username: &str) -> Result<UserDetail, ClientError> {
    let request = ShowUserRequest {
        username: username.to_owned(),
    };
    admin_read(client, &request, |mut admin, request| async move {
        admin.show_user(request).await
    })
    .await
}

/// Deletes an inactive account. Reuse `request_id` to retry the same
/// deletion.
///
/// # Errors
/// `FAILED_PRECONDITION` naming every reason the account cannot go yet
/// (money, holds, pending proceeds, listings, an admin), `NOT_FOUND` for
/// an unknown user.
pub async fn delete_user(
    client: &ClusterClient,
    username: &str,
    request_id: &str,
) -> Result<DeleteUserReply, ClientError> {
    let request = DeleteUserRequest {
        request_id: admin_id(request_id),
        username: username.to_owned(),
    };
    admin_write(client, &request, |mut admin, request| async move {
        admin.delete_user(request).await
    })
    .await
}

/// The cluster's replicated settings.
///
/// # Errors
/// The last error when no node answered.
pub async fn settings(client: &ClusterClient) -> Result<Settings, ClientError> {
    admin_read(
        client,
        &GetSettingsRequest {},
        |mut admin, request| async move { admin.get_settings(request).await },
    )
    .await
}

/// Changes one setting by name; answers the settings after the change.
/// Reuse `request_id` to retry the same change.
///
/// # Errors
/// `INVALID_ARGUMENT` for an unknown name or a value out of range.
pub async fn set_setting(
    client: &ClusterClient,
    name: &str,
    value: &str,
    request_id: &str,
) -> Result<Settings, ClientError> {
    let request = SetSettingRequest {
        request_id: admin_id(request_id),
        name: name.trim().to_owned(),
        value: value.trim().to_owned(),
    };
    admin_write(client, &request, |mut admin, request| async move {
        admin.set_setting(request).await
    })
    .await
}

/// Adds node `id` as a learner; answers once it has received the log.
///
/// # Errors
/// `INVALID_ARGUMENT` for bad addresses, or what the leader refused.
pub async fn add_learner(
    client: &ClusterClient,
    id: u64,
    api_addr: &str,
    raft_addr: &str,
) -> Result<MembershipReply, ClientError> {
    let request = AddLearnerRequest {
        member: Some(Member {
            id,
            api_addr: api_addr.trim().to_owned(),
            raft_addr: raft_addr.trim().to_owned(),
            voter: false,
        }),
    };
    admin_write(client, &request, |mut admin, request| async move {
        admin.add_learner(request).await
    })
    .await
}

/// Makes learner `id` a voter.
///
/// # Errors
/// `FAILED_PRECONDITION` for a learner that has not caught up, or what the
/// leader refused.
pub async fn promote(client: &ClusterClient, id: u64) -> Result<MembershipReply, ClientError> {
    admin_write(
        client,
        &PromoteVoterRequest { id },
        |mut admin, request| async move { admin.promote_voter(request).await },
    )
    .await
}

/// Removes node `id`; `force` allows leaving fewer than three voters or
/// fewer reachable voters than a quorum.
///
/// # Errors
/// `FAILED_PRECONDITION` saying which guard refused, or what the leader
/// refused.
pub async fn remove(
    client: &ClusterClient,
    id: u64,
    force: bool,
) -> Result<MembershipReply, ClientError> {
    admin_write(
        client,
        &RemoveNodeRequest { id, force },
        |mut admin, request| async move { admin.remove_node(request).await },
    )
    .await
}

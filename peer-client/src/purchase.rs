//! Purchases from the client's side: the cluster calls of the buying
//! protocol. Writes go to the leader with one request id per logical
//! write, so a write that outlives a leader crash is applied once (a
//! retried `BeginPurchase` charges once; a retried `CompletePurchase`
//! returns the same key). Reads go to followers first.
//!
//! The peer-to-peer half is in [`crate::selling`] (the file server) and
//! [`crate::buying`] (fetch, settle, decrypt, verify).

use agora_proto::market::{
    BeginPurchaseReply, BeginPurchaseRequest, CancelPurchaseRequest, CompletePurchaseReply,
    CompletePurchaseRequest, DepositKeyRequest, DisputeRequest, GetPurchaseReply,
    GetPurchaseRequest, Purchase, PurchaseReply, PurchaseRole, PurchasesRequest, ReadConsistency,
    RequestId, TicketKeyRequest,
};
use ed25519_dalek::VerifyingKey;
use std::future::Future;

use tonic::{Response, Status};

use crate::{ClientError, ClusterClient, PurchaseClient};

/// Runs a purchase write on the leader (retried through elections with the
/// same request, so it is applied once).
async fn on_leader<Req, Rep, F, Fut>(
    client: &ClusterClient,
    request: Req,
    call: F,
) -> Result<Rep, ClientError>
where
    Req: Clone,
    F: Fn(PurchaseClient, Req) -> Fut,
    Fut: Future<Output = Result<Response<Rep>, Status>>,
{
    Ok(client
        .call_leader(|channel| call(client.purchase_on(channel), request.clone()))
        .await?
        .into_inner())
}

/// Opens a purchase of `listing_id`: the price is held on the caller's
/// account for `hold_seconds` (0 = the cluster's default).
///
/// # Errors
/// The cluster's refusal (`FAILED_PRECONDITION` when the listing is not on
/// sale, the seller is offline or the money is short), or the last error
/// once the retries are used up.
pub async fn begin(
    client: &ClusterClient,
    listing_id: u64,
    hold_seconds: u32,
    request_id: RequestId,
) -> Result<BeginPurchaseReply, ClientError> {
    let request = BeginPurchaseRequest {
        request_id: Some(request_id),
        listing_id,
        hold_seconds,
    };
    on_leader(client, request, |mut purchases, request| async move {
        purchases.begin_purchase(request).await
    })
    .await
}

/// The seller deposits `key` and the ciphertext root of purchase
/// `purchase_id`.
///
/// # Errors
/// The cluster's refusal (not the seller, expired, another key), or the
/// last error once the retries are used up.
pub async fn deposit_key(
    client: &ClusterClient,
    purchase_id: u64,
    key: &[u8; 32],
    ciphertext_root: &[u8; 32],
    request_id: RequestId,
) -> Result<PurchaseReply, ClientError> {
    let request = DepositKeyRequest {
        request_id: Some(request_id),
        purchase_id,
        key: key.to_vec(),
        ciphertext_root: ciphertext_root.to_vec(),
    };
    on_leader(client, request, |mut purchases, request| async move {
        purchases.deposit_key(request).await
    })
    .await
}

/// The buyer settles purchase `purchase_id` with the root of the
/// ciphertext it received, and gets the key.
///
/// # Errors
/// The cluster's refusal (root mismatch, expired, not keyed yet), or the
/// last error once the retries are used up.
pub async fn complete(
    client: &ClusterClient,
    purchase_id: u64,
    ciphertext_root: &[u8; 32],
    request_id: RequestId,
) -> Result<CompletePurchaseReply, ClientError> {
    let request = CompletePurchaseRequest {
        request_id: Some(request_id),
        purchase_id,
        ciphertext_root: ciphertext_root.to_vec(),
    };
    on_leader(client, request, |mut purchases, request| async move {
        purchases.complete_purchase(request).await
    })
    .await
}

/// The buyer gives up purchase `purchase_id`; the money is available again.
///
/// # Errors
/// The cluster's refusal (completed already, not the buyer), or the last
/// error once the retries are used up.
pub async fn cancel(
    client: &ClusterClient,
    purchase_id: u64,
    request_id: RequestId,
) -> Result<PurchaseReply, ClientError> {
    let request = CancelPurchaseRequest {
        request_id: Some(request_id),
        purchase_id,
    };
    on_leader(client, request, |mut purchases, request| async move {
        purchases.cancel_purchase(request).await
    })
    .await
}

/// One purchase and where its seller serves now, from a follower if one
/// answers.
async fn get_reply(
    client: &ClusterClient,
    purchase_id: u64,
    consistency: ReadConsistency,
) -> Result<GetPurchaseReply, ClientError> {
    let request = GetPurchaseRequest {
        purchase_id,
        consistency: Some(consistency),
    };
    Ok(client
        .call_followers_first(|channel| {
            let mut purchases = client.purchase_on(channel);
            async move {
                purchases
                    .get_purchase(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await?)
}

/// One purchase, from a follower if one answers.
///
/// # Errors
/// `NOT_FOUND`, `PERMISSION_DENIED`, or the last error when no node
/// answered.
pub async fn get(
    client: &ClusterClient,
    purchase_id: u64,
    consistency: ReadConsistency,
) -> Result<Purchase, ClientError> {
    get_reply(client, purchase_id, consistency)
        .await?
        .purchase
        .ok_or_else(|| ClientError::Protocol(format!("purchase {purchase_id} came back empty")))
}

/// Where the seller of purchase `purchase_id` serves files now (`None`
/// while it is offline).
///
/// # Errors
/// `NOT_FOUND`, `PERMISSION_DENIED`, or the last error when no node
/// answered.
pub async fn seller_endpoint(
    client: &ClusterClient,
    purchase_id: u64,
    consistency: ReadConsistency,
) -> Result<Option<String>, ClientError> {
    let reply = get_reply(client, purchase_id, consistency).await?;
    Ok(Some(reply.seller_endpoint).filter(|e| !e.is_empty()))
}

/// Most pages [`list`] follows.
const MAX_PAGES: usize = 1_000;

/// Every purchase (`role` buyer) or sale (`role` seller) of the caller,
/// newest first, at most `limit` (0 = all).
///
/// # Errors
/// The last error when no node answered.
pub async fn list(
    client: &ClusterClient,
    role: PurchaseRole,
    limit: usize,
    consistency: ReadConsistency,
) -> Result<Vec<Purchase>, ClientError> {
    let mut out = Vec::new();
    let mut before_id = 0;
    for _ in 0..MAX_PAGES {
        let request = PurchasesRequest {
            role: role.into(),
            limit: 500,
            before_id,
            consistency: Some(consistency),
        };
        let reply = client
            .call_followers_first(|channel| {
                let mut purchases = client.purchase_on(channel);
                async move { purchases.purchases(request).await.map(Response::into_inner) }
            })
            .await?;
        out.extend(reply.purchases);
        if reply.next_before_id == 0 || (limit > 0 && out.len() >= limit) {
            break;
        }
        before_id = reply.next_before_id;
    }
    if limit > 0 {
        out.truncate(limit);
    }
    Ok(out)
}

/// The key the cluster signs tickets with.
///
/// # Errors
/// The last error when no node answered, or a key that is not ed25519.
pub async fn ticket_key(client: &ClusterClient) -> Result<VerifyingKey, ClientError> {
    let reply = client
        .call_any(|channel| {
            let mut purchases = client.purchase_on(channel);
            async move {
                purchases
                    .ticket_key(TicketKeyRequest {})
                    .await
                    .map(Response::into_inner)
            }
        })
        .await?;
    let bytes: [u8; 32] = reply
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| ClientError::Protocol("the ticket key is not 32 bytes".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| ClientError::Protocol("the ticket key is not an ed25519 key".into()))
}

/// The buyer disputes purchase `purchase_id` with `evidence` (encoded by
/// [`agora_proto::dispute::encode`]): the sale is reversed if the proof
/// holds and the dispute window is open.
///
/// # Errors
/// `FAILED_PRECONDITION` for a proof that does not hold (the chunk is
/// good, or the evidence is not this purchase's) or a closed window, or
/// the last error once the retries are used up.
pub async fn dispute(
    client: &ClusterClient,
    purchase_id: u64,
    evidence: Vec<u8>,
    request_id: RequestId,
) -> Result<PurchaseReply, ClientError> {
    let request = DisputeRequest {
        request_id: Some(request_id),
        purchase_id,
        evidence,
    };
    on_leader(client, request, |mut purchases, request| async move {
        purchases.dispute(request).await
    })
    .await
}

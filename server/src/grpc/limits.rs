//! Every node-wide limit on what one request may cost, in one place.
//!
//! A request costs a node memory three ways: the request itself (tonic
//! buffers a whole message before decoding it, so the decode limit is the
//! most one request can make the node hold on the way in), the reply (a
//! list RPC builds its whole page before sending it), and the HTTP/2
//! connection it arrives on (how many streams and how many header bytes a
//! client may open at once). Each is bounded here by a named constant, per
//! service, sized from the largest request that service can legitimately
//! receive, with room to spare so a valid request is never refused:
//!
//! | service    | largest valid request                      | decode limit |
//! |------------|--------------------------------------------|--------------|
//! | Kv         | 256 B key + 64 KiB value                   | 256 KiB      |
//! | Account    | OPAQUE messages, a sealed key (< 2 KiB)    | 64 KiB       |
//! | Ledger     | amounts and ids                            | 64 KiB       |
//! | Catalogue  | one listing (< 64 KiB, see below)          | 256 KiB      |
//! | Purchase   | a dispute: one 4 MiB chunk and its proofs  | 5 MiB        |
//! | Admin      | settings, names, ids                       | 1 MiB        |
//! | Health, reflection | a service or file name             | 64 KiB       |
//! | Raft       | append batches, 3 MiB snapshot chunks      | 256 MiB      |
//!
//! The decode limits bound one request; [`LargeRequestsLayer`] bounds how
//! many of the few calls that may be megabytes big (a dispute carries a
//! whole chunk) a node decodes at once: beyond
//! [`MAX_CONCURRENT_LARGE_REQUESTS`] the next is refused at once, before its
//! body is read. Every other request is at most a few hundred KiB.
//!
//! A request above its service's decode limit is refused by tonic with
//! `RESOURCE_EXHAUSTED` ("decoded message length too large") before any
//! handler runs; the node does not buffer more than the limit of it.
//!
//! Replies are bounded by their page sizes (the `MAX_*_PAGE` constants,
//! which every list RPC uses) and by an encode limit per service, computed
//! from those pages: a reply can never be bigger than that, whatever is
//! stored. `Search` and `SellerListings` also stop a page early once it
//! holds [`MAX_SEARCH_REPLY_BYTES`] / [`MAX_LISTINGS_REPLY_BYTES`] (the
//! cursor then continues from there), so they stay readable by clients
//! with tonic's default 4 MiB decode limit.
//!
//! tonic itself answers an oversized request with `OUT_OF_RANGE` and
//! "Error, decoded message length too large"; the layer of
//! [`super::request_errors`] turns that into `RESOURCE_EXHAUSTED` (gRPC's
//! code for a message over the receiver's limit) with the sentence of
//! [`too_large_sentence`]: what the limit is and what to do.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---- Requests: decode limits, per service.

/// Largest `KvService` request: a key of at most 256 bytes and a value of
/// at most 64 KiB ([`crate::domain::kv`]), a request id, framing.
pub const MAX_KV_REQUEST_BYTES: usize = 256 * KIB;
/// Largest `AccountService` request: OPAQUE messages are a few hundred
/// bytes, the sealed identity key 256.
pub const MAX_ACCOUNT_REQUEST_BYTES: usize = 64 * KIB;
/// Largest `LedgerService` request: ids, amounts, cursors.
pub const MAX_LEDGER_REQUEST_BYTES: usize = 64 * KIB;
/// Largest `CatalogueService` request: one listing's text
/// ([`MAX_LISTING_BYTES`]) and a few ids.
pub const MAX_CATALOGUE_REQUEST_BYTES: usize = 256 * KIB;
/// Largest `PurchaseService` request: a dispute carries one chunk of at most
/// 4 MiB, its 16-byte tag and two Merkle proofs of at most 64 hashes.
pub const MAX_PURCHASE_REQUEST_BYTES: usize = 5 * MIB;
/// Largest request to the gRPC health and reflection services (a service
/// or file name).
pub const MAX_PROBE_REQUEST_BYTES: usize = 64 * KIB;
/// Largest `AdminService` request: settings, names, ids.
pub const MAX_ADMIN_REQUEST_BYTES: usize = MIB;
/// Largest message between nodes, both ways: an append batch of up to
/// [`MAX_PAYLOAD_ENTRIES`] of the largest entries, snapshot chunks of
/// [`RAFT_SNAPSHOT_CHUNK_BYTES`], forwarded writes. Only nodes holding a
/// certificate of the cluster's CA can send on this listener.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 * MIB;
/// Upper bound on one log entry: the largest command is a listing's text
/// (under 64 KiB, [`MAX_LISTING_BYTES`]) or a Put's 64 KiB value, with the
/// request id and the entry's own framing. (A dispute's evidence is judged
/// by the handler and never enters the log.)
pub const MAX_ENTRY_BYTES: usize = 96 * KIB;
/// Most entries `--max-payload-entries` may put in one append batch, so a
/// batch of the largest entries fits [`MAX_RAFT_MESSAGE_BYTES`] (the
/// default is 2,000).
pub const MAX_PAYLOAD_ENTRIES: u64 = (MAX_RAFT_MESSAGE_BYTES / MAX_ENTRY_BYTES) as u64 - 64;
/// Bytes of snapshot data per `InstallSnapshot` message (openraft's
/// default, set here so it is a decision next to the message limit it must
/// stay under).
pub const RAFT_SNAPSHOT_CHUNK_BYTES: u64 = 3 * MIB as u64;

// ---- Replies: page sizes and encode limits.

/// Largest encoded `Listing`: a description of 10,000 characters (at most
/// 40,000 bytes of UTF-8), a 200-character title, 16 tags, 16 attributes of
/// up to 200 characters, a topic, a seller name and fixed fields: under
/// 58 KiB, rounded up.
pub const MAX_LISTING_BYTES: usize = 64 * KIB;

/// Default `Search` page.
pub const DEFAULT_SEARCH_PAGE: u32 = 20;
/// Largest `Search` page (100 × [`MAX_LISTING_BYTES`] = 6.25 MiB at most).
pub const MAX_SEARCH_PAGE: u32 = 100;
/// A `Search` page ends early once it holds this many bytes (a full page
/// of the longest listings would be 6 MiB, past tonic's default 4 MiB
/// decode limit on the client side).
pub const MAX_SEARCH_REPLY_BYTES: usize = 3 * MIB;
/// Default `SellerListings` page.
pub const DEFAULT_LISTINGS_PAGE: u32 = 50;
/// Largest `SellerListings` page, in listings (short listings: a seller's
/// shelf is mostly titles); see also [`MAX_LISTINGS_REPLY_BYTES`].
pub const MAX_LISTINGS_PAGE: u32 = 500;
/// A `SellerListings` page ends early once it holds this many bytes.
pub const MAX_LISTINGS_REPLY_BYTES: usize = 3 * MIB;
/// Default `CashFlows` page.
pub const DEFAULT_CASH_FLOWS_PAGE: u32 = 50;
/// Largest `CashFlows` page (entries of under 1 KiB each).
pub const MAX_CASH_FLOWS_PAGE: u32 = 500;
/// Default `Purchases` page.
pub const DEFAULT_PURCHASES_PAGE: u32 = 50;
/// Largest `Purchases` page (purchases of under 2 KiB each).
pub const MAX_PURCHASES_PAGE: u32 = 500;
/// Default `Events` page.
pub const DEFAULT_EVENTS_PAGE: u32 = 100;
/// Largest `Events` page (events of at most 1 KiB of message each).
pub const MAX_EVENTS_PAGE: u32 = 1000;
/// Default `FindUsers` page.
pub const DEFAULT_USERS_PAGE: u32 = 50;
/// Largest `FindUsers` page.
pub const MAX_USERS_PAGE: u32 = 500;
/// Default `LogTail` length, in lines.
pub const DEFAULT_LOG_LINES: u32 = 100;
/// Longest `LogTail`, in lines; the bytes are bounded by
/// [`crate::log_tail::MAX_TAIL_BYTES`] (1 MiB) as well.
pub const MAX_LOG_LINES: u32 = 1000;

/// Most audit problems one `Audit` reply lists (the node's log has them
/// all); a broken ledger can have one per account.
pub const MAX_AUDIT_PROBLEMS: usize = 100;

/// Largest `KvService` reply: one value of at most 64 KiB.
pub const MAX_KV_REPLY_BYTES: usize = 256 * KIB;
/// Largest `AccountService` reply.
pub const MAX_ACCOUNT_REPLY_BYTES: usize = 64 * KIB;
/// Largest `LedgerService` reply: a `CashFlows` page.
pub const MAX_LEDGER_REPLY_BYTES: usize = 2 * MIB;
/// Largest `CatalogueService` reply: a full `Search` page of the largest
/// listings, with room for the scores and the cursor.
pub const MAX_CATALOGUE_REPLY_BYTES: usize = MAX_SEARCH_PAGE as usize * MAX_LISTING_BYTES + MIB;
/// Largest `PurchaseService` reply: a `Purchases` page.
pub const MAX_PURCHASE_REPLY_BYTES: usize = 4 * MIB;
/// Largest `AdminService` reply: a log tail (1 MiB and a thousand line
/// frames), an events page, a user list, an audit report.
pub const MAX_ADMIN_REPLY_BYTES: usize = 4 * MIB;

/// The calls whose requests may be megabytes big (a dispute carries a
/// chunk of up to 4 MiB): at most [`MAX_CONCURRENT_LARGE_REQUESTS`] at once.
pub const LARGE_REQUEST_METHODS: &[&str] = &["/agora.market.v1.PurchaseService/Dispute"];
/// Large requests decoded at once, node-wide: with the request buffer and
/// its decoded copy, each can hold about twice
/// [`MAX_PURCHASE_REQUEST_BYTES`], so together at most about 80 MiB.
/// Disputes are rare (a buyer proving a bad chunk); one refused is retried
/// by `agora resume`.
pub const MAX_CONCURRENT_LARGE_REQUESTS: usize = 8;

// ---- Connections: HTTP/2 settings of the node's listeners.

/// Streams (requests in flight) one HTTP/2 connection may have open. A
/// client that reaches it waits for one of its own requests to end (its
/// HTTP/2 layer queues the next); it cannot make one connection hold more
/// than this many decode limits of memory. Peers multiplex all their calls
/// on one connection per node, so it is generous.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Largest header block of one request (the session token, the request
/// id, gRPC's own headers are well under 2 KiB).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The first [`MAX_AUDIT_PROBLEMS`] of `problems`, and a line saying how
/// many more there are.
pub fn capped_problems(mut problems: Vec<String>) -> Vec<String> {
    if problems.len() > MAX_AUDIT_PROBLEMS {
        let more = problems.len() - MAX_AUDIT_PROBLEMS;
        problems.truncate(MAX_AUDIT_PROBLEMS);
        problems.push(format!(
            "... and {more} more problems; the node's log lists them all"
        ));
    }
    problems
}

/// How many of `items` fit in `budget` bytes of encoded reply (at least
/// one, so a page always makes progress).
pub fn fitting<T: prost::Message>(items: &[T], budget: usize) -> usize {
    let mut used = 0usize;
    for (n, item) in items.iter().enumerate() {
        // The field tag and length prefix around each item: a few bytes.
        used = used.saturating_add(item.encoded_len() + 8);
        if used > budget && n > 0 {
            return n;
        }
    }
    items.len()
}

// The limits fit one another (checked when the crate compiles).
const _: () = {
    assert!(MAX_LISTING_BYTES * 2 <= MAX_CATALOGUE_REQUEST_BYTES);
    assert!(crate::domain::kv::MAX_VALUE_BYTES * 2 <= MAX_KV_REPLY_BYTES);
    assert!(MAX_LISTINGS_REPLY_BYTES + MAX_LISTING_BYTES < MAX_CATALOGUE_REPLY_BYTES);
    assert!(MAX_SEARCH_REPLY_BYTES + MAX_LISTING_BYTES < MAX_CATALOGUE_REPLY_BYTES);
    assert!(MAX_PAYLOAD_ENTRIES >= 2_000);
    assert!(RAFT_SNAPSHOT_CHUNK_BYTES * 2 < MAX_RAFT_MESSAGE_BYTES as u64);
    assert!(MAX_PURCHASE_REQUEST_BYTES * 2 < MAX_RAFT_MESSAGE_BYTES);
};

/// Caps the large requests in flight; see [`LargeRequests`].
#[derive(Debug, Clone)]
pub struct LargeRequestsLayer {
    permits: Arc<tokio::sync::Semaphore>,
}

impl Default for LargeRequestsLayer {
    fn default() -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_LARGE_REQUESTS)),
        }
    }
}

impl<S> Layer<S> for LargeRequestsLayer {
    type Service = LargeRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LargeRequests {
            inner,
            permits: Arc::clone(&self.permits),
        }
    }
}

/// A call to one of [`LARGE_REQUEST_METHODS`] takes a permit for as long as
/// it runs; with none left it is refused with `RESOURCE_EXHAUSTED` before
/// its body is read (never queued: a queue of waiting multi-megabyte
/// bodies is the memory this bounds).
#[derive(Debug, Clone)]
pub struct LargeRequests<S> {
    inner: S,
    /// Shared by every connection of the listener.
    permits: Arc<tokio::sync::Semaphore>,
}

impl<S, B, RB> Service<http::Request<B>> for LargeRequests<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !LARGE_REQUEST_METHODS.contains(&request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            let status = tonic::Status::resource_exhausted(format!(
                "this node is decoding {MAX_CONCURRENT_LARGE_REQUESTS} large requests already; retry in a moment"
            ));
            let mut response = http::Response::new(RB::default());
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            if status.add_header(headers).is_err() {
                headers.insert("grpc-status", http::HeaderValue::from_static("8"));
            }
            return Box::pin(async move { Ok(response) });
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(permit);
            response
        })
    }
}

/// The sentence for a request refused for its size, from tonic's message
/// ("... found N bytes, the limit is: M bytes").
pub(crate) fn too_large_sentence(tonic_message: &str) -> String {
    let numbers: Vec<u64> = tonic_message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers.as_slice() {
        [found, limit] => format!(
            "the request is {found} bytes, over this service's limit of {limit} bytes per request; send less in one call (see the Limits section of docs/OPERATIONS.md)"
        ),
        _ => "the request is over this service's size limit; send less in one call (see the Limits section of docs/OPERATIONS.md)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_proto::listing as rules;
    use agora_proto::market::{Listing, PutRequest, RequestId};
    use prost::Message as _;

    /// The largest listing the catalogue accepts, encoded.
    fn largest_listing() -> Listing {
        // Four-byte characters: the most bytes per character.
        let wide = |n: usize| "𝄞".repeat(n);
        Listing {
            id: u64::MAX,
            seller_id: u64::MAX,
            seller: wide(64),
            title: wide(rules::MAX_TITLE_CHARS),
            description: wide(rules::MAX_DESCRIPTION_CHARS),
            topic: wide(rules::MAX_TOPIC),
            tags: (0..rules::MAX_TAGS)
                .map(|_| wide(rules::MAX_TAG_CHARS))
                .collect(),
            attributes: (0..rules::MAX_ATTRIBUTES)
                .map(|i| {
                    (
                        format!("{i:0>width$}", width = rules::MAX_ATTRIBUTE_KEY),
                        wide(rules::MAX_ATTRIBUTE_VALUE_CHARS),
                    )
                })
                .collect(),
            size: u64::MAX,
            chunk_size: u32::MAX,
            merkle_root: vec![0xff; 32],
            price: u64::MAX,
            ..Listing::default()
        }
    }

    #[test]
    fn the_largest_listing_fits_its_bound() {
        let len = largest_listing().encoded_len();
        assert!(
            len <= MAX_LISTING_BYTES,
            "a listing can encode to {len} bytes, above MAX_LISTING_BYTES"
        );
    }

    #[test]
    fn the_largest_put_fits_the_kv_limit() {
        let put = PutRequest {
            key: "k".repeat(crate::domain::kv::MAX_KEY_BYTES),
            value: vec![0xff; crate::domain::kv::MAX_VALUE_BYTES],
            request_id: Some(RequestId {
                client: "c".repeat(128),
                id: "i".repeat(128),
            }),
        };
        assert!(put.encoded_len() * 2 <= MAX_KV_REQUEST_BYTES);
    }

    #[test]
    fn a_full_search_page_fits_the_catalogue_reply_limit() {
        let page = MAX_SEARCH_PAGE as usize * (largest_listing().encoded_len() + 64);
        assert!(page < MAX_CATALOGUE_REPLY_BYTES);
    }

    #[test]
    fn the_largest_listing_edit_fits_a_log_entry() {
        use crate::raft::command::{Op, Proposal, RequestKey};
        let fields = largest_listing();
        let proposal = Proposal {
            request: Some(RequestKey {
                client: "c".repeat(128),
                id: "i".repeat(128),
            }),
            op: Op::Put {
                key: "k".repeat(crate::domain::kv::MAX_KEY_BYTES),
                value: vec![0xff; crate::domain::kv::MAX_VALUE_BYTES],
            },
        };
        let put = crate::raft::network::encode(&proposal)
            .expect("encodes")
            .len();
        assert!(put + 1024 <= MAX_ENTRY_BYTES, "a Put entry is {put} bytes");
        let text = fields.encoded_len();
        assert!(
            text + 4 * KIB <= MAX_ENTRY_BYTES,
            "a listing is {text} bytes"
        );
    }

    #[test]
    fn the_refusal_names_the_sizes() {
        let s = too_large_sentence(
            "Error, decoded message length too large: found 300000 bytes, the limit is: 262144 bytes",
        );
        assert!(
            s.contains("300000 bytes") && s.contains("262144 bytes") && s.contains("send less")
        );
        assert!(too_large_sentence("garbled").contains("over this service's size limit"));
    }

    #[test]
    fn audit_problems_are_capped() {
        let few: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        assert_eq!(capped_problems(few.clone()), few);
        let many: Vec<String> = (0..250).map(|i| i.to_string()).collect();
        let capped = capped_problems(many);
        assert_eq!(capped.len(), MAX_AUDIT_PROBLEMS + 1);
        assert!(capped[MAX_AUDIT_PROBLEMS].contains("150 more problems"));
    }

    #[test]
    fn pages_stop_at_the_byte_budget() {
        let listings = vec![largest_listing(); 100];
        let n = fitting(&listings, MAX_LISTINGS_REPLY_BYTES);
        assert!(n > 0 && n < 100);
        let used: usize = listings[..n].iter().map(|l| l.encoded_len() + 8).sum();
        assert!(used <= MAX_LISTINGS_REPLY_BYTES);
        // One item always fits, however small the budget.
        assert_eq!(fitting(&listings[..1], 10), 1);
        assert_eq!(fitting::<Listing>(&[], 10), 0);
    }
}

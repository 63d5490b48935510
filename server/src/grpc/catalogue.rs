//! `agora.market.v1.CatalogueService`: listings, topics, search and
//! presence.
//!
//! Writes (publish, edit, reprice, unpublish) go through Raft like every
//! write; the answer is read back from this node's state once it has
//! applied the write, so a follower answers with what the leader applied.
//! Search, `GetListing`, `SellerListings` and `Topics` are anonymous reads
//! served by whichever node is asked (the client library prefers
//! followers). `Announce` must reach the leader: leases live in its memory.
//!
//! Search pages are cached per node. A page computed at applied index `A`
//! answers a request whose `min_index` is at most `A` (it shows every write
//! up to `A`, so read-your-writes holds) while the catalogue has not changed
//! since `A`, or for [`CACHE_MAX_STALENESS`] after it changed: no staler
//! than a follower that lags by that much. Linearizable searches bypass it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agora_proto::auth::{canonical_username, Role};
use agora_proto::market::catalogue_service_server::CatalogueService;
use agora_proto::market::{
    AnnounceReply, AnnounceRequest, EditListingRequest, GetListingReply, GetListingRequest,
    GoOfflineReply, GoOfflineRequest, Listing, ListingFields, ListingReply, PublishRequest,
    RepriceRequest, SearchReply, SearchRequest, SearchResult, SearchSort, SellerListingsReply,
    SellerListingsRequest, Topic, TopicsReply, TopicsRequest, UnpublishRequest,
};
use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::{freshness, request_key};
use crate::auth::Session;
use crate::domain::catalogue::{self, Cursor, FileFacts, ListingText, Sort};
use crate::error::WriteError;
use crate::node::{Applied, Node};
use crate::presence::Leases;
use crate::raft::command::{Actor, ListingEdit, Op, Outcome, Proposal, RequestKey};
use crate::store;
use crate::store::catalogue::{ListingRow, SearchQuery};

// The page sizes live with the other limits.
use super::limits::{
    DEFAULT_LISTINGS_PAGE, DEFAULT_SEARCH_PAGE, MAX_LISTINGS_PAGE, MAX_LISTINGS_REPLY_BYTES,
    MAX_SEARCH_PAGE, MAX_SEARCH_REPLY_BYTES,
};

/// How long a cached search page may be served after the catalogue
/// changed.
const CACHE_MAX_STALENESS: Duration = Duration::from_secs(1);
/// Bytes of cached pages at most (encoded size); the cache starts over
/// when full, so a flood of distinct searches cannot grow a node's memory.
const CACHE_BYTES: usize = 64 << 20;

/// The service, over a running node and (on the leader) its lease table.
pub struct CatalogueApi {
    node: Arc<Node>,
    leases: Arc<Leases>,
    /// Recent search pages. A plain mutex: lookups and inserts only, never
    /// held across an await.
    cache: Mutex<PageCache>,
}

/// The pages and their total encoded size.
#[derive(Default)]
struct PageCache {
    pages: HashMap<CacheKey, Arc<CachedPage>>,
    bytes: usize,
}

/// What makes two search requests the same page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    query: [u8; 8],
    cursor: String,
    limit: u32,
}

/// A page and the state it reflects.
struct CachedPage {
    /// Applied index before the page was read (it shows at least this).
    index: u64,
    /// When it was read.
    at: Instant,
    /// The answer.
    reply: SearchReply,
}

impl CatalogueApi {
    /// Serves `node`; presence leases live in `leases`.
    #[must_use]
    pub fn new(node: Arc<Node>, leases: Arc<Leases>) -> Self {
        Self {
            node,
            leases,
            cache: Mutex::new(PageCache::default()),
        }
    }

    fn cached(&self, key: &CacheKey, min_index: u64) -> Option<SearchReply> {
        let page = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pages
            .get(key)
            .cloned()?;
        let current = self.node.state.catalogue_changed_at() <= page.index;
        (page.index >= min_index && (current || page.at.elapsed() < CACHE_MAX_STALENESS))
            .then(|| page.reply.clone())
    }

    fn remember(&self, key: CacheKey, page: CachedPage) {
        let cursor_len = key.cursor.len();
        let size = prost::Message::encoded_len(&page.reply) + cursor_len;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.bytes + size > CACHE_BYTES {
            cache.pages.clear();
            cache.bytes = 0;
        }
        cache.bytes += size;
        if let Some(old) = cache.pages.insert(key, Arc::new(page)) {
            cache.bytes = cache
                .bytes
                .saturating_sub(prost::Message::encoded_len(&old.reply) + cursor_len);
        }
    }

    fn internal(e: &sqlx::Error) -> Status {
        Status::internal(format!("reading this node's state failed: {e}"))
    }

    /// Proposes `op` for the session's user and reads the listing back.
    async fn write_listing(
        &self,
        session: &Session,
        id: Option<agora_proto::market::RequestId>,
        op: Op,
    ) -> Result<Response<ListingReply>, Status> {
        let applied = self.write(session, id, op).await?;
        let Outcome::Listing { listing_id } = applied.outcome else {
            return Err(Status::internal(format!(
                "unexpected outcome {:?} for a listing write",
                applied.outcome
            )));
        };
        // The leader applied it; make sure this node has too.
        self.node.wait_applied(applied.index).await?;
        let listing = store::catalogue::listing(self.node.state.readers(), listing_id)
            .await
            .map_err(|e| Self::internal(&e))?
            .ok_or_else(|| Status::not_found(format!("there is no listing {listing_id}")))?;
        Ok(Response::new(ListingReply {
            listing: Some(to_proto(listing)),
            index: applied.index,
        }))
    }

    async fn write(
        &self,
        session: &Session,
        id: Option<agora_proto::market::RequestId>,
        op: Op,
    ) -> Result<Applied, Status> {
        let mut key: RequestKey = request_key(id)?;
        key.client = format!("user:{}", session.user_id());
        Ok(self
            .node
            .write(Proposal {
                request: Some(key),
                op,
            })
            .await?)
    }

    /// A user id by name, seen by this node (after its read barrier).
    async fn user_named(&self, name: &str) -> Result<u64, Status> {
        let canonical =
            canonical_username(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        store::catalogue::user_id_by_name(self.node.state.readers(), &canonical)
            .await
            .map_err(|e| Self::internal(&e))?
            .ok_or_else(|| Status::not_found(format!("there is no user named {canonical:?}")))
    }

    /// "Not the leader", with the leader's address when known.
    fn not_leader(&self) -> Status {
        match self.node.leader() {
            Some((leader_id, addr)) if leader_id != self.node.id => WriteError::NotLeader {
                id: self.node.id,
                leader_id,
                leader_addr: addr.api_addr,
            }
            .into(),
            _ => WriteError::NoLeader.into(),
        }
    }
}

fn actor(session: &Session) -> Actor {
    Actor {
        user_id: session.user_id(),
        admin: session.claims.role == Role::Admin,
    }
}

fn listing_text(fields: ListingFields) -> Result<ListingText, Status> {
    ListingText {
        title: fields.title,
        description: fields.description,
        topic: fields.topic,
        tags: fields.tags,
        attributes: fields.attributes.into_iter().collect(),
    }
    .normalized()
    .map_err(Status::invalid_argument)
}

/// The wire form of a stored listing.
fn to_proto(l: ListingRow) -> Listing {
    Listing {
        id: l.id,
        seller_id: l.seller_id,
        seller: l.seller,
        title: l.text.title,
        description: l.text.description,
        topic: l.text.topic,
        tags: l.text.tags,
        attributes: l.text.attributes.into_iter().collect(),
        size: l.facts.size,
        chunk_size: l.facts.chunk_size,
        merkle_root: l.facts.merkle_root.to_vec(),
        price: l.price,
        created_ms: l.created_ms,
        updated_ms: l.updated_ms,
        active: l.active,
        seller_online: l.seller_online,
        seller_sales: l.seller_sales,
        seller_strikes: l.seller_strikes,
        updated_index: l.updated_index,
    }
}

fn page(limit: u32, default: u32, max: u32) -> Result<u32, Status> {
    match limit {
        0 => Ok(default),
        n if n > max => Err(Status::invalid_argument(format!(
            "a page has at most {max} entries (asked for {n})"
        ))),
        n => Ok(n),
    }
}

/// A listing id the request must name: 0 is a missing field, not a
/// listing that does not exist.
fn listing_id(id: u64) -> Result<u64, Status> {
    if id == 0 {
        return Err(Status::invalid_argument(
            "listing_id is missing; `agora search` finds listings, `agora listings` lists yours",
        ));
    }
    Ok(id)
}

fn sort_of(raw: i32) -> Result<Sort, Status> {
    match SearchSort::try_from(raw) {
        Ok(SearchSort::Relevance) => Ok(Sort::Relevance),
        Ok(SearchSort::Price) => Ok(Sort::Price),
        Ok(SearchSort::PriceDesc) => Ok(Sort::PriceDesc),
        Ok(SearchSort::Newest) => Ok(Sort::Newest),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown sort {raw}; use relevance, price, price-desc or newest"
        ))),
    }
}

#[tonic::async_trait]
impl CatalogueService for CatalogueApi {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<ListingReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let text = listing_text(req.fields.ok_or_else(|| {
            Status::invalid_argument("fields is missing: a listing needs at least a title")
        })?)?;
        let facts = FileFacts {
            size: req.size,
            chunk_size: req.chunk_size,
            merkle_root: catalogue::merkle_root(&req.merkle_root)
                .map_err(Status::invalid_argument)?,
        };
        facts.validate().map_err(Status::invalid_argument)?;
        let price = catalogue::price(req.price).map_err(Status::invalid_argument)?;
        let op = Op::Publish {
            seller_id: session.user_id(),
            text,
            facts,
            price,
        };
        self.write_listing(&session, req.request_id, op).await
    }

    async fn edit_listing(
        &self,
        request: Request<EditListingRequest>,
    ) -> Result<Response<ListingReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let invalid = Status::invalid_argument;
        let edit = ListingEdit {
            title: req
                .title
                .as_deref()
                .map(catalogue::title)
                .transpose()
                .map_err(invalid)?,
            description: req
                .description
                .as_deref()
                .map(catalogue::description)
                .transpose()
                .map_err(invalid)?,
            topic: req
                .topic
                .as_deref()
                .map(catalogue::topic_name)
                .transpose()
                .map_err(invalid)?,
            tags: req
                .tags
                .map(|t| catalogue::tags(&t.tags))
                .transpose()
                .map_err(invalid)?,
            attributes: req
                .attributes
                .map(|a| catalogue::attributes(&a.attributes.into_iter().collect()))
                .transpose()
                .map_err(invalid)?,
        };
        let op = Op::EditListing {
            listing_id: listing_id(req.listing_id)?,
            actor: actor(&session),
            edit,
        };
        self.write_listing(&session, req.request_id, op).await
    }

    async fn reprice(
        &self,
        request: Request<RepriceRequest>,
    ) -> Result<Response<ListingReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let op = Op::Reprice {
            listing_id: listing_id(req.listing_id)?,
            actor: actor(&session),
            price: catalogue::price(req.price).map_err(Status::invalid_argument)?,
        };
        self.write_listing(&session, req.request_id, op).await
    }

    async fn unpublish(
        &self,
        request: Request<UnpublishRequest>,
    ) -> Result<Response<ListingReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let op = Op::Unpublish {
            listing_id: listing_id(req.listing_id)?,
            actor: actor(&session),
        };
        self.write_listing(&session, req.request_id, op).await
    }

    async fn get_listing(
        &self,
        request: Request<GetListingRequest>,
    ) -> Result<Response<GetListingReply>, Status> {
        let req = request.into_inner();
        let id = listing_id(req.listing_id)?;
        let applied_index = self.node.read_barrier(freshness(req.consistency)).await?;
        let listing = store::catalogue::listing(self.node.state.readers(), id)
            .await
            .map_err(|e| Self::internal(&e))?
            .ok_or_else(|| Status::not_found(format!("there is no listing {id}")))?;
        Ok(Response::new(GetListingReply {
            listing: Some(to_proto(listing)),
            applied_index,
        }))
    }

    async fn seller_listings(
        &self,
        request: Request<SellerListingsRequest>,
    ) -> Result<Response<SellerListingsReply>, Status> {
        let session = self.node.auth.session(request.metadata()).await?;
        let req = request.into_inner();
        let limit = page(req.limit, DEFAULT_LISTINGS_PAGE, MAX_LISTINGS_PAGE)?;
        let before_id = if req.cursor.is_empty() {
            None
        } else {
            Some(req.cursor.parse::<u64>().map_err(|_| {
                Status::invalid_argument("the cursor is not one this service gave out")
            })?)
        };
        let applied_index = self.node.read_barrier(freshness(req.consistency)).await?;
        let seller_id = if req.seller.is_empty() {
            session.as_ref().map(Session::user_id).ok_or_else(|| {
                Status::unauthenticated("log in to list your own listings, or name a seller")
            })?
        } else {
            self.user_named(&req.seller).await?
        };
        if req.include_inactive {
            let allowed = session
                .as_ref()
                .is_some_and(|s| s.user_id() == seller_id || s.claims.role == Role::Admin);
            if !allowed {
                return Err(Status::permission_denied(
                    "only the seller or an admin can see unpublished listings",
                ));
            }
        }
        let rows = store::catalogue::seller_listings(
            self.node.state.readers(),
            seller_id,
            req.include_inactive,
            before_id,
            limit,
        )
        .await
        .map_err(|e| Self::internal(&e))?;
        let full = rows.len() == limit as usize;
        let mut listings: Vec<_> = rows.into_iter().map(to_proto).collect();
        // Long listings end the page early; the cursor goes on from there.
        let fit = super::limits::fitting(&listings, MAX_LISTINGS_REPLY_BYTES);
        let next_cursor = if full || fit < listings.len() {
            listings.truncate(fit);
            listings
                .last()
                .map(|l| l.id.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(SellerListingsReply {
            listings,
            next_cursor,
            applied_index,
        }))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchReply>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let limit = page(req.limit, DEFAULT_SEARCH_PAGE, MAX_SEARCH_PAGE)?;
        let sort = sort_of(req.sort)?;
        let fts = catalogue::fts_query(&req.text).map_err(Status::invalid_argument)?;
        if let (Some(min), Some(max)) = (req.min_price, req.max_price) {
            if min > max {
                return Err(Status::invalid_argument(format!(
                    "the lowest price ({}) is above the highest ({})",
                    agora_proto::amount::format_amount(min),
                    agora_proto::amount::format_amount(max)
                )));
            }
        }
        let topic = if req.topic.is_empty() {
            None
        } else {
            Some(catalogue::topic_name(&req.topic).map_err(Status::invalid_argument)?)
        };
        let fingerprint = catalogue::query_fingerprint(&[
            fts.as_deref().unwrap_or(""),
            topic.as_deref().unwrap_or(""),
            &req.min_price.map(|p| p.to_string()).unwrap_or_default(),
            &req.max_price.map(|p| p.to_string()).unwrap_or_default(),
            &req.seller.to_lowercase(),
            if req.online_only { "online" } else { "" },
            &format!("{sort:?}"),
        ]);
        let cursor = if req.cursor.is_empty() {
            None
        } else {
            Some(Cursor::decode(&req.cursor, fingerprint).map_err(Status::invalid_argument)?)
        };
        let mut fresh = freshness(req.consistency);
        if let Some(c) = &cursor {
            fresh.min_index = fresh.min_index.max(c.min_index);
        }
        let applied_index = self.node.read_barrier(fresh).await?;
        let key = CacheKey {
            query: fingerprint,
            cursor: req.cursor.clone(),
            limit,
        };
        if !fresh.linearizable {
            if let Some(reply) = self.cached(&key, fresh.min_index) {
                metrics::counter!("agora_search_cache_hits_total").increment(1);
                metrics::histogram!("agora_search_seconds").record(started.elapsed().as_secs_f64());
                return Ok(Response::new(reply));
            }
        }
        metrics::counter!("agora_search_cache_misses_total").increment(1);
        let readers = self.node.state.readers();
        if let Some(topic) = &topic {
            if !store::catalogue::topic_exists(readers, topic)
                .await
                .map_err(|e| Self::internal(&e))?
            {
                return Err(Status::not_found(format!(
                    "there is no topic {topic:?}; `agora topics` lists them"
                )));
            }
        }
        let seller_id = if req.seller.is_empty() {
            None
        } else {
            Some(self.user_named(&req.seller).await?)
        };
        let max_id = match &cursor {
            Some(c) => c.max_id,
            None => store::catalogue::max_listing_id(readers)
                .await
                .map_err(|e| Self::internal(&e))?,
        };
        let has_text = fts.is_some();
        let by_relevance = has_text && sort == Sort::Relevance;
        let mut seen = match &cursor {
            Some(c) if by_relevance => {
                catalogue::unpack_ids(&c.seen).map_err(Status::invalid_argument)?
            }
            _ => std::collections::BTreeSet::new(),
        };
        if seen.len() >= catalogue::MAX_RELEVANCE_DEPTH {
            return Err(Status::invalid_argument(format!(
                "results by relevance end after {}; narrow the search, or sort by newest or price to go further",
                catalogue::MAX_RELEVANCE_DEPTH
            )));
        }
        let query = SearchQuery {
            fts,
            topic,
            min_price: req.min_price,
            max_price: req.max_price,
            seller_id,
            online_only: req.online_only,
            sort,
            max_id,
            after: cursor.as_ref().map(|c| (c.last_key, c.last_id)),
            exclude: seen.iter().copied().collect(),
            limit,
        };
        let hits = store::catalogue::search(readers, &query)
            .await
            .map_err(|e| Self::internal(&e))?;
        let full = hits.len() == limit as usize;
        let mut keys: Vec<_> = hits
            .iter()
            .map(|h| (h.key(sort, has_text), h.listing.id))
            .collect();
        let mut results: Vec<_> = hits
            .into_iter()
            .map(|h| SearchResult {
                score: h.score,
                listing: Some(to_proto(h.listing)),
            })
            .collect();
        // Long listings end the page early; the cursor goes on from there.
        let fit = super::limits::fitting(&results, MAX_SEARCH_REPLY_BYTES);
        let more = full || fit < results.len();
        results.truncate(fit);
        keys.truncate(fit);
        let next_cursor = match keys.last() {
            Some(&(last_key, last_id)) if more => {
                if by_relevance {
                    seen.extend(keys.iter().map(|(_, id)| *id));
                }
                Cursor {
                    query: fingerprint,
                    max_id,
                    min_index: cursor.as_ref().map_or(applied_index, |c| c.min_index),
                    last_key,
                    last_id,
                    seen: if by_relevance {
                        catalogue::pack_ids(&seen)
                    } else {
                        Vec::new()
                    },
                }
                .encode()
            }
            _ => String::new(),
        };
        let reply = SearchReply {
            results,
            next_cursor,
            applied_index,
        };
        self.remember(
            key,
            CachedPage {
                index: applied_index,
                at: Instant::now(),
                reply: reply.clone(),
            },
        );
        metrics::histogram!("agora_search_seconds").record(started.elapsed().as_secs_f64());
        Ok(Response::new(reply))
    }

    async fn topics(
        &self,
        request: Request<TopicsRequest>,
    ) -> Result<Response<TopicsReply>, Status> {
        let req = request.into_inner();
        self.node.read_barrier(freshness(req.consistency)).await?;
        let topics = store::catalogue::topics(self.node.state.readers())
            .await
            .map_err(|e| Self::internal(&e))?;
        Ok(Response::new(TopicsReply {
            topics: topics
                .into_iter()
                .map(|t| Topic {
                    name: t.name,
                    description: t.description,
                    listings: t.listings,
                })
                .collect(),
        }))
    }

    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let endpoint = catalogue::endpoint(&request.into_inner().endpoint)
            .map_err(Status::invalid_argument)?;
        if self.node.raft.metrics().borrow().state != ServerState::Leader {
            return Err(self.not_leader());
        }
        let user_id = session.user_id();
        let lease_ms = u64::try_from(self.leases.lease().as_millis()).unwrap_or(u64::MAX);
        let reply = |index| {
            Response::new(AnnounceReply {
                lease_ms,
                renew_after_ms: lease_ms / 2,
                index,
            })
        };
        let current = store::catalogue::presence(self.node.state.readers(), user_id)
            .await
            .map_err(|e| Self::internal(&e))?;
        if let Some(row) = current.filter(|r| r.online && r.endpoint == endpoint) {
            // A renewal: memory only, if the lease is still held (a lapsed
            // one may have its lapse in flight; then announce again).
            if self.leases.renew_held(user_id, row.changed_index) {
                return Ok(reply(0));
            }
        }
        // Coming online, moving, or back after a lapse: replicated.
        // Internal (no request id): setting the same endpoint twice is
        // harmless.
        let applied = self
            .node
            .write_local(Proposal {
                request: None,
                op: Op::SetPresence {
                    user_id,
                    endpoint: Some(endpoint),
                },
            })
            .await?;
        self.leases.renew(user_id, applied.index);
        Ok(reply(applied.index))
    }

    async fn go_offline(
        &self,
        request: Request<GoOfflineRequest>,
    ) -> Result<Response<GoOfflineReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let applied = self
            .write(
                &session,
                req.request_id,
                Op::SetPresence {
                    user_id: session.user_id(),
                    endpoint: None,
                },
            )
            .await?;
        self.leases.forget(session.user_id());
        Ok(Response::new(GoOfflineReply {
            index: applied.index,
        }))
    }
}

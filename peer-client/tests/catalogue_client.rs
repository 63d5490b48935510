//! The catalogue client against fake nodes: reads go to followers first
//! and fall back to the leader, a publish hashes the file, records its
//! index and remembers its file, and presence renews its lease through
//! failures and goes offline at shutdown.
//!
//! The fake nodes serve only `CatalogueService` over TLS with certificates
//! made here, so these tests need no real cluster.

mod common;

use common::{dead_addr, pki, tls, Pki};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_peer::catalogue::{self, NewListing};
use agora_peer::{presence, request_id, ClusterClient, PeerStore};
use agora_proto::market::catalogue_service_server::{CatalogueService, CatalogueServiceServer};
use agora_proto::market::{
    AnnounceReply, AnnounceRequest, EditListingRequest, GetListingReply, GetListingRequest,
    GoOfflineReply, GoOfflineRequest, Listing, ListingFields, ListingReply, PublishRequest,
    RepriceRequest, SearchReply, SearchRequest, SearchResult, SellerListingsReply,
    SellerListingsRequest, TopicsReply, TopicsRequest, UnpublishRequest,
};
use agora_proto::merkle;
use agora_proto::LEADER_ID_HEADER;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// What every fake node shares.
#[derive(Default)]
struct World {
    /// Who leads.
    leader: AtomicU64,
    /// How many announcements the leader should still refuse (as if it
    /// were between elections).
    refuse_announcements: AtomicU64,
    /// Announcements the leader accepted.
    announcements: AtomicU64,
    /// GoOffline requests that reached the leader: their request ids.
    offline: Mutex<Vec<String>>,
    /// Which node answered each search, and the min_index it was asked.
    searches: Mutex<Vec<(u64, u64)>>,
    /// Publications that reached the leader.
    published: Mutex<Vec<PublishRequest>>,
}

struct FakeNode {
    id: u64,
    world: Arc<World>,
}

impl FakeNode {
    /// `UNAVAILABLE` with the leader's id, unless this node leads.
    fn require_leader(&self) -> Result<(), Status> {
        let leader = self.world.leader.load(Ordering::SeqCst);
        if leader == self.id {
            return Ok(());
        }
        let mut status = Status::unavailable("not the leader");
        status.metadata_mut().insert(
            LEADER_ID_HEADER,
            leader
                .to_string()
                .parse()
                .map_err(|_| Status::internal("header"))?,
        );
        Err(status)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, Status> {
    mutex.lock().map_err(|_| Status::internal("lock"))
}

#[tonic::async_trait]
impl CatalogueService for FakeNode {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<ListingReply>, Status> {
        self.require_leader()?;
        let request = request.into_inner();
        let fields = request.fields.clone().unwrap_or_default();
        let listing = Listing {
            id: 42,
            seller_id: 5,
            seller: "ursula".into(),
            title: fields.title,
            size: request.size,
            chunk_size: request.chunk_size,
            merkle_root: request.merkle_root.clone(),
            price: request.price,
            active: true,
            ..Listing::default()
        };
        lock(&self.world.published)?.push(request);
        Ok(Response::new(ListingReply {
            listing: Some(listing),
            index: 10,
        }))
    }

    async fn edit_listing(
        &self,
        _: Request<EditListingRequest>,
    ) -> Result<Response<ListingReply>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn reprice(&self, _: Request<RepriceRequest>) -> Result<Response<ListingReply>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn unpublish(
        &self,
        _: Request<UnpublishRequest>,
    ) -> Result<Response<ListingReply>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn get_listing(
        &self,
        _: Request<GetListingRequest>,
    ) -> Result<Response<GetListingReply>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn seller_listings(
        &self,
        _: Request<SellerListingsRequest>,
    ) -> Result<Response<SellerListingsReply>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchReply>, Status> {
        let min_index = request
            .into_inner()
            .consistency
            .map_or(0, |consistency| consistency.min_index);
        lock(&self.world.searches)?.push((self.id, min_index));
        Ok(Response::new(SearchReply {
            results: vec![SearchResult {
                listing: Some(Listing {
                    id: self.id,
                    ..Listing::default()
                }),
                score: 0.0,
            }],
            next_cursor: String::new(),
            applied_index: min_index,
        }))
    }

    async fn topics(&self, _: Request<TopicsRequest>) -> Result<Response<TopicsReply>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceReply>, Status> {
        self.require_leader()?;
        if request.into_inner().endpoint.is_empty() {
            return Err(Status::invalid_argument("an endpoint is host:port"));
        }
        let refuse = &self.world.refuse_announcements;
        if refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("no leader yet"));
        }
        let n = self.world.announcements.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(AnnounceReply {
            lease_ms: 3_000,
            // Asks for far too often a renewal; the client keeps to 1 s.
            renew_after_ms: 1,
            index: if n == 0 { 11 } else { 0 },
        }))
    }

    async fn go_offline(
        &self,
        request: Request<GoOfflineRequest>,
    ) -> Result<Response<GoOfflineReply>, Status> {
        self.require_leader()?;
        let id = request
            .into_inner()
            .request_id
            .ok_or_else(|| Status::invalid_argument("request_id is required"))?;
        lock(&self.world.offline)?.push(id.id);
        Ok(Response::new(GoOfflineReply { index: 12 }))
    }
}

/// Starts a fake node on a free loopback port and returns its address.
async fn spawn_node(id: u64, world: Arc<World>, pki: &Pki) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        &pki.server_cert_pem,
        &pki.server_key_pem,
    ));
    let router = Server::builder()
        .tls_config(tls)?
        .add_service(CatalogueServiceServer::new(FakeNode { id, world }));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    Ok(addr)
}

/// An address where nothing listens (connections are refused).
/// Polls `condition` every 20 ms until it holds or `deadline` passes.
async fn wait_for(what: &str, deadline: Duration, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reads_go_to_followers_first_and_fall_back_to_the_leader() -> anyhow::Result<()> {
    let pki = pki()?;
    let world = Arc::new(World::default());
    world.leader.store(1, Ordering::SeqCst);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push((id, spawn_node(id, world.clone(), &pki).await?.to_string()));
    }
    let client = ClusterClient::from_parts(&tls(&pki), nodes)?;
    client.set_leader_hint(1);
    for _ in 0..20 {
        let order = client.followers_first_order();
        assert_eq!(order.len(), 3);
        assert_eq!(order.last(), Some(&1), "the leader is asked last");
    }
    for _ in 0..12 {
        catalogue::search(&client, &SearchRequest::default()).await?;
    }
    let answered: Vec<u64> = world
        .searches
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .iter()
        .map(|(node, _)| *node)
        .collect();
    assert!(!answered.contains(&1), "followers answered: {answered:?}");
    assert!(
        answered.contains(&2) && answered.contains(&3),
        "both followers share the reads: {answered:?}"
    );

    // With both followers down, the leader answers.
    let one = client
        .node_addr(1)
        .ok_or_else(|| anyhow::anyhow!("node 1"))?;
    let lonely = ClusterClient::from_parts(
        &tls(&pki),
        [
            (1, one),
            (2, dead_addr().await?.to_string()),
            (3, dead_addr().await?.to_string()),
        ],
    )?;
    lonely.set_leader_hint(1);
    let reply = catalogue::search(&lonely, &SearchRequest::default()).await?;
    assert_eq!(reply.results[0].listing.as_ref().map(|l| l.id), Some(1));
    Ok(())
}

#[tokio::test]
async fn publish_remembers_the_file_and_search_reads_it_back() -> anyhow::Result<()> {
    let pki = pki()?;
    let world = Arc::new(World::default());
    world.leader.store(2, Ordering::SeqCst);
    let one = spawn_node(1, world.clone(), &pki).await?;
    let two = spawn_node(2, world.clone(), &pki).await?;
    let client =
        ClusterClient::from_parts(&tls(&pki), [(1, one.to_string()), (2, two.to_string())])?;

    let tmp = tempfile::tempdir()?;
    let store = PeerStore::open(&tmp.path().join("peer")).await?;
    let file = tmp.path().join("earthsea.txt");
    let bytes: Vec<u8> = (0..10_000u32).flat_map(u32::to_le_bytes).collect();
    std::fs::write(&file, &bytes)?;
    let new = NewListing {
        path: file.clone(),
        chunk_size: merkle::MIN_CHUNK_SIZE,
        fields: ListingFields {
            title: "A Wizard of Earthsea".into(),
            ..ListingFields::default()
        },
        price: 150,
    };
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    let published = catalogue::publish(
        &client,
        &store,
        &new,
        request_id("ursula"),
        move |done, _| {
            seen.store(done, Ordering::SeqCst);
        },
    )
    .await?;
    assert_eq!(progress.load(Ordering::SeqCst), bytes.len() as u64);
    assert_eq!(published.listing.id, 42);
    assert_eq!(published.index, 10);
    assert_eq!(published.digest.chunk_count(), 10);
    let expected = catalogue::hash_file(&file, merkle::MIN_CHUNK_SIZE)?;
    assert_eq!(published.digest, expected);
    let sent = world
        .published
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].merkle_root, expected.merkle_root.to_vec());
    assert_eq!(sent[0].size, bytes.len() as u64);
    assert_eq!(sent[0].price, 150);

    let local = store
        .listing(42)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the listing is remembered"))?;
    assert_eq!(local.path, std::fs::canonicalize(&file)?);
    assert_eq!(local.merkle_root, expected.merkle_root);
    assert_eq!(local.seller_id, 5);
    assert!(local.active);
    assert!(local.modified_ms.is_some());
    assert_eq!(store.max_seen_index().await?, 10);

    // A later read (another process would do the same) asks for that index.
    let consistency = catalogue::read_your_writes(Some(&store)).await?;
    assert_eq!(consistency.min_index, 10);
    let request = SearchRequest {
        consistency: Some(consistency),
        ..SearchRequest::default()
    };
    catalogue::search(&client, &request).await?;
    let last = world
        .searches
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .last()
        .copied();
    assert_eq!(last.map(|(_, min_index)| min_index), Some(10));

    // An empty file never reaches the cluster.
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, b"")?;
    let err = catalogue::publish(
        &client,
        &store,
        &NewListing { path: empty, ..new },
        request_id("ursula"),
        |_, _| {},
    )
    .await
    .expect_err("an empty file");
    assert!(err.to_string().contains("is empty"), "{err}");
    assert_eq!(
        world
            .published
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .len(),
        1
    );
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn presence_renews_through_failures_and_goes_offline() -> anyhow::Result<()> {
    let pki = pki()?;
    let world = Arc::new(World::default());
    world.leader.store(1, Ordering::SeqCst);
    // The first attempts find no leader; the client retries on its own.
    world.refuse_announcements.store(2, Ordering::SeqCst);
    let one = spawn_node(1, world.clone(), &pki).await?;
    let two = spawn_node(2, world.clone(), &pki).await?;
    let client =
        ClusterClient::from_parts(&tls(&pki), [(1, one.to_string()), (2, two.to_string())])?;
    // Start at the follower: its redirect must lead to the leader.
    client.set_leader_hint(2);

    let tmp = tempfile::tempdir()?;
    let store = PeerStore::open(tmp.path()).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let client = client.clone();
        let store = store.clone();
        tokio::spawn(async move {
            presence::keep_presence(&client, "127.0.0.1:7000", Some(&store), async {
                let _ = stopped.await;
            })
            .await
        })
    };
    wait_for("two announcements", Duration::from_secs(10), || {
        world.announcements.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(client.leader_hint(), Some(1));
    let _ = stop.send(());
    task.await??;
    let offline = world
        .offline
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    assert_eq!(offline.len(), 1, "one GoOffline at shutdown");
    // The coming-online write and the going-offline write were recorded.
    assert_eq!(store.max_seen_index().await?, 12);

    // A refusal that waiting cannot fix ends it at once.
    let err = presence::keep_presence(&client, "", None, std::future::pending())
        .await
        .expect_err("an empty endpoint is refused");
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    store.close().await;
    Ok(())
}

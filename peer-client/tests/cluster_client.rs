//! The cluster client against fake nodes: TLS, leader redirects, failover
//! to the next node, and the same request id on every attempt.
//!
//! The fake nodes serve only `KvService` over TLS with certificates made
//! here, so these tests need no real cluster.

mod common;

use common::{dead_addr, pki, tls, Pki};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_peer::{request_id, ClusterClient, RetryPolicy};
use agora_proto::market::kv_service_server::{KvService, KvServiceServer};
use agora_proto::market::{GetReply, GetRequest, PutReply, PutRequest, ReadConsistency};
use agora_proto::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};
use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

/// What every fake node shares: who leads, and every write that reached a
/// leader as `(node, client, id)`.
#[derive(Default)]
struct World {
    leader: AtomicU64,
    leader_addr: Mutex<String>,
    writes: Mutex<Vec<(u64, String, String)>>,
}

struct FakeNode {
    id: u64,
    world: Arc<World>,
}

#[tonic::async_trait]
impl KvService for FakeNode {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        let request = request.into_inner();
        if request.key == "bad" {
            return Err(Status::invalid_argument("bad key"));
        }
        let leader = self.world.leader.load(Ordering::SeqCst);
        if leader != self.id {
            let mut status = Status::unavailable("not the leader");
            status.metadata_mut().insert(
                LEADER_ID_HEADER,
                leader
                    .to_string()
                    .parse()
                    .map_err(|_| Status::internal("header"))?,
            );
            let addr = self
                .world
                .leader_addr
                .lock()
                .map_err(|_| Status::internal("lock"))?
                .clone();
            if !addr.is_empty() {
                status.metadata_mut().insert(
                    LEADER_ADDR_HEADER,
                    addr.parse().map_err(|_| Status::internal("header"))?,
                );
            }
            return Err(status);
        }
        let id = request
            .request_id
            .ok_or_else(|| Status::invalid_argument("request_id is required"))?;
        let mut writes = self
            .world
            .writes
            .lock()
            .map_err(|_| Status::internal("lock"))?;
        writes.push((self.id, id.client, id.id));
        let index = u64::try_from(writes.len()).unwrap_or(u64::MAX);
        Ok(Response::new(PutReply { index, revision: 1 }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        Ok(Response::new(GetReply {
            found: true,
            value: format!("{} from {}", request.into_inner().key, self.id).into_bytes(),
            revision: 1,
            applied_index: 7,
        }))
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
        .add_service(KvServiceServer::new(FakeNode { id, world }));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    Ok(addr)
}

/// An address where nothing listens (connections are refused).
#[tokio::test]
async fn follows_the_leader_redirect_with_the_same_request_id() -> anyhow::Result<()> {
    let pki = pki()?;
    let world = Arc::new(World::default());
    world.leader.store(2, Ordering::SeqCst);
    let one = spawn_node(1, world.clone(), &pki).await?;
    let two = spawn_node(2, world.clone(), &pki).await?;
    let client =
        ClusterClient::from_parts(&tls(&pki), [(1, one.to_string()), (2, two.to_string())])?;
    assert_eq!(client.node_ids(), vec![1, 2]);
    assert_eq!(client.leader_hint(), None);

    let id = request_id("alice");
    let reply = client.put("k", b"v".to_vec(), id.clone()).await?;
    assert_eq!(reply.index, 1);
    assert_eq!(client.leader_hint(), Some(2));
    let writes = world
        .writes
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    assert_eq!(writes, vec![(2, "alice".to_owned(), id.id.clone())]);

    // The leader moves: the client follows again, still exactly once.
    world.leader.store(1, Ordering::SeqCst);
    let second = request_id("alice");
    client.put("k", b"w".to_vec(), second.clone()).await?;
    assert_eq!(client.leader_hint(), Some(1));
    let last = world
        .writes
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .last()
        .cloned()
        .context("a write")?;
    assert_eq!(last, (1, "alice".to_owned(), second.id));
    Ok(())
}

#[tokio::test]
async fn skips_a_dead_node() -> anyhow::Result<()> {
    let pki = pki()?;
    let world = Arc::new(World::default());
    world.leader.store(2, Ordering::SeqCst);
    let dead = dead_addr().await?;
    let two = spawn_node(2, world.clone(), &pki).await?;
    let client =
        ClusterClient::from_parts(&tls(&pki), [(1, dead.to_string()), (2, two.to_string())])?;
    client.put("k", b"v".to_vec(), request_id("bob")).await?;
    assert_eq!(client.leader_hint(), Some(2));

    // Reads fall back too, unless a node is named.
    let reply = client.get("k", ReadConsistency::default(), None).await?;
    assert_eq!(reply.value, b"k from 2");
    let err = client
        .get("k", ReadConsistency::default(), Some(1))
        .await
        .err()
        .context("node 1 is dead")?;
    assert_eq!(err.code(), Code::Unavailable);
    let err = client
        .get("k", ReadConsistency::default(), Some(9))
        .await
        .err()
        .context("node 9 is unknown")?;
    assert_eq!(err.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn learns_a_leader_it_was_not_told_about() -> anyhow::Result<()> {
    let pki = pki()?;
    let world = Arc::new(World::default());
    let one = spawn_node(1, world.clone(), &pki).await?;
    let three = spawn_node(3, world.clone(), &pki).await?;
    world.leader.store(3, Ordering::SeqCst);
    *world
        .leader_addr
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))? = three.to_string();
    let client = ClusterClient::from_parts(&tls(&pki), [(1, one.to_string())])?;
    client.put("k", b"v".to_vec(), request_id("carol")).await?;
    assert_eq!(client.leader_hint(), Some(3));
    assert_eq!(client.node_ids(), vec![1, 3]);
    assert_eq!(client.node_addr(3), Some(three.to_string()));
    Ok(())
}

#[tokio::test]
async fn returns_a_refusal_at_once() -> anyhow::Result<()> {
    let pki = pki()?;
    let world = Arc::new(World::default());
    world.leader.store(1, Ordering::SeqCst);
    let one = spawn_node(1, world.clone(), &pki).await?;
    let client = ClusterClient::from_parts(&tls(&pki), [(1, one.to_string())])?;
    let started = std::time::Instant::now();
    let err = client
        .put("bad", b"v".to_vec(), request_id("dave"))
        .await
        .err()
        .context("the key is refused")?;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(started.elapsed() < Duration::from_secs(2));
    Ok(())
}

#[tokio::test]
async fn gives_up_when_no_node_answers() -> anyhow::Result<()> {
    let pki = pki()?;
    let client = ClusterClient::from_parts(
        &tls(&pki),
        [
            (1, dead_addr().await?.to_string()),
            (2, dead_addr().await?.to_string()),
        ],
    )?
    .with_retry_policy(RetryPolicy {
        max_attempts: 5,
        budget: Duration::from_secs(5),
        ..RetryPolicy::default()
    });
    assert_eq!(client.retry_policy().max_attempts, 5);
    let err = client
        .put("k", b"v".to_vec(), request_id("erin"))
        .await
        .err()
        .context("nobody is up")?;
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("gave up after 5 attempts"),
        "{}",
        err.message()
    );
    Ok(())
}

#[tokio::test]
async fn rejects_bad_cluster_descriptions() -> anyhow::Result<()> {
    let pki = pki()?;
    let none: [(u64, String); 0] = [];
    assert!(matches!(
        ClusterClient::from_parts(&tls(&pki), none),
        Err(agora_peer::ClientError::NoNodes)
    ));
    assert!(matches!(
        ClusterClient::from_parts(
            &tls(&pki),
            [(1, "127.0.0.1:1".to_owned()), (1, "127.0.0.1:2".to_owned())]
        ),
        Err(agora_peer::ClientError::DuplicateNode(1))
    ));
    let dir = tempfile::tempdir()?;
    let err = ClusterClient::load(&dir.path().join("cluster.toml"))
        .err()
        .context("no such file")?;
    assert!(
        err.to_string()
            .starts_with("could not read the cluster file"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn reports_what_a_node_said_rather_than_a_dead_node() -> anyhow::Result<()> {
    let pki = pki()?;
    // Nobody leads: node 1 answers "not the leader" naming no one.
    let world = Arc::new(World::default());
    let one = spawn_node(1, world.clone(), &pki).await?;
    let client = ClusterClient::from_parts(
        &tls(&pki),
        [(1, one.to_string()), (2, dead_addr().await?.to_string())],
    )?
    .with_retry_policy(RetryPolicy {
        max_attempts: 4,
        budget: Duration::from_secs(5),
        ..RetryPolicy::default()
    });
    let err = client
        .put("k", b"v".to_vec(), request_id("frank"))
        .await
        .err()
        .context("nobody leads")?;
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message()
            .starts_with("not the leader (node 1; gave up after 4 attempts"),
        "{}",
        err.message()
    );
    Ok(())
}

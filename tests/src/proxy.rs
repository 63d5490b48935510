//! A fault-injecting TCP proxy in front of every node's Raft listener, so a
//! test can cut and slow the links between nodes.
//!
//! Each node of a chaos cluster opens its outgoing Raft connections from a
//! loopback address of its own ([`source_ip`]: node 1 from 127.0.0.2,
//! node 2 from 127.0.0.3, ...; `agora-server node --raft-source-ip`), and
//! the membership names a proxy's address as each node's Raft address. The
//! proxy of node `j` therefore sees every connection to `j` and knows from
//! its source address which node `i` opened it: the directed link `i -> j`.
//! Everything nodes say to each other goes over those connections:
//! replication, votes, snapshots, forwarded writes and read-index calls.
//!
//! A link is either up (optionally with added latency, each way) or cut. A
//! cut drops the link's established connections at once (both directions
//! of their bytes: a TCP connection cannot lose only one) and closes new
//! ones as soon as they are accepted, so the caller sees a broken
//! connection rather than a hang. Cutting only `i -> j` leaves `j -> i`
//! up: an asymmetric fault.
//!
//! Why not network namespaces: they need root or `CAP_NET_ADMIN`, which CI
//! machines and developer laptops do not grant a test; loopback aliases and
//! a user-space proxy need nothing. See `docs/NOTES.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

/// Bytes read from a socket at a time.
const READ_BUFFER: usize = 64 * 1024;
/// Reads in flight per direction of a delayed connection before the proxy
/// stops reading (so a slow link pushes back instead of buffering without
/// end).
const IN_FLIGHT_READS: usize = 256;
/// Longest the proxy waits to reach a node's real listener.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The loopback address node `id`'s outgoing Raft connections come from:
/// 127.0.0.(id + 1). Linux routes all of 127.0.0.0/8 to loopback, so any of
/// them can be bound without configuration.
///
/// # Panics
/// For node ids above 253 (no such test cluster exists).
#[must_use]
pub fn source_ip(id: u64) -> IpAddr {
    let last = u8::try_from(id + 1).expect("node ids of a chaos cluster are below 254");
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The node a source address stands for (see [`source_ip`]).
fn node_of(ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] >= 2 => {
            Some(u64::from(v4.octets()[3]) - 1)
        }
        _ => None,
    }
}

/// A directed link: connections opened by `from` to `to`.
pub type Link = (u64, u64);

/// What the proxies do to each link, and the connections they carry.
#[derive(Default)]
struct LinkTable {
    /// Links that are cut.
    cut: BTreeSet<Link>,
    /// Added one-way latency per link (each direction of its bytes).
    delay: BTreeMap<Link, Duration>,
    /// Live connections by link, to drop them when the link is cut.
    connections: HashMap<u64, (Link, AbortHandle)>,
    /// Id of the next connection.
    next_connection: u64,
    /// Connections accepted and refused (cut), for the report.
    accepted: u64,
    refused: u64,
}

/// The network between the nodes of a chaos cluster: one proxy per node
/// and the faults on every link. Cloning shares it.
#[derive(Clone)]
pub struct RaftNetwork {
    table: Arc<Mutex<LinkTable>>,
    /// Proxy address by node: what the membership names as its Raft
    /// address.
    proxies: Arc<BTreeMap<u64, SocketAddr>>,
    /// The accept loops, aborted when the last clone is dropped.
    _accepting: Arc<AcceptLoops>,
}

/// Accept loops that end with their owner.
struct AcceptLoops(Vec<JoinHandle<()>>);

impl Drop for AcceptLoops {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl RaftNetwork {
    /// Starts one proxy per node of `upstreams` (node id -> its real Raft
    /// address), each on an ephemeral loopback port.
    ///
    /// # Errors
    /// When a port cannot be bound.
    pub async fn start(upstreams: &BTreeMap<u64, String>) -> anyhow::Result<Self> {
        let table = Arc::new(Mutex::new(LinkTable::default()));
        let mut proxies = BTreeMap::new();
        let mut tasks = Vec::new();
        for (&to, upstream) in upstreams {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("could not bind a Raft proxy")?;
            proxies.insert(to, listener.local_addr()?);
            tasks.push(tokio::spawn(accept_loop(
                listener,
                to,
                upstream.clone(),
                Arc::clone(&table),
            )));
        }
        Ok(Self {
            table,
            proxies: Arc::new(proxies),
            _accepting: Arc::new(AcceptLoops(tasks)),
        })
    }

    /// The address other nodes reach node `id` at (its proxy).
    #[must_use]
    pub fn proxy_addr(&self, id: u64) -> Option<SocketAddr> {
        self.proxies.get(&id).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkTable> {
        // Every change is a single insert or remove: a poisoned table is
        // still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the directed links `links`, dropping their connections.
    pub fn cut(&self, links: &[Link]) {
        let mut table = self.lock();
        for link in links {
            table.cut.insert(*link);
        }
        let doomed: Vec<u64> = table
            .connections
            .iter()
            .filter(|(_, (link, _))| table.cut.contains(link))
            .map(|(id, _)| *id)
            .collect();
        for id in doomed {
            if let Some((_, handle)) = table.connections.remove(&id) {
                handle.abort();
            }
        }
    }

    /// Splits the nodes into `groups`: every link between two groups is cut
    /// (both ways); links inside a group stay as they are.
    pub fn partition(&self, groups: &[Vec<u64>]) {
        let mut links = Vec::new();
        for (a, left) in groups.iter().enumerate() {
            for (b, right) in groups.iter().enumerate() {
                if a != b {
                    for &i in left {
                        for &j in right {
                            links.push((i, j));
                        }
                    }
                }
            }
        }
        self.cut(&links);
    }

    /// Adds `delay` to each direction of the bytes on link `link` (new and
    /// established connections alike).
    pub fn slow(&self, link: Link, delay: Duration) {
        self.lock().delay.insert(link, delay);
    }

    /// Every link up, no added latency.
    pub fn heal(&self) {
        let mut table = self.lock();
        table.cut.clear();
        table.delay.clear();
    }

    /// The links cut now.
    #[must_use]
    pub fn cut_links(&self) -> Vec<Link> {
        self.lock().cut.iter().copied().collect()
    }

    /// Connections accepted and connections refused (on a cut link) so
    /// far: proof that the traffic really went through the proxies.
    #[must_use]
    pub fn connection_counts(&self) -> (u64, u64) {
        let table = self.lock();
        (table.accepted, table.refused)
    }
}

/// Accepts connections to node `to` and forwards them to `upstream`
/// unless their link is cut.
async fn accept_loop(
    listener: TcpListener,
    to: u64,
    upstream: String,
    table: Arc<Mutex<LinkTable>>,
) {
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            // Out of file descriptors and the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // A caller that is not a node (no node's source address) is never
        // cut: it stands for link 0 -> to.
        let link = (node_of(peer.ip()).unwrap_or(0), to);
        let lock = || table.lock().unwrap_or_else(PoisonError::into_inner);
        if lock().cut.contains(&link) {
            lock().refused += 1;
            drop(socket);
            continue;
        }
        let id = {
            let mut t = lock();
            t.accepted += 1;
            t.next_connection += 1;
            t.next_connection
        };
        let task = tokio::spawn(forward(socket, upstream.clone(), link, Arc::clone(&table)));
        let mut t = lock();
        // Cut between the check above and now: drop it like the others.
        if t.cut.contains(&link) {
            task.abort();
        } else {
            t.connections.insert(id, (link, task.abort_handle()));
        }
        drop(t);
        // The table's entry is removed when the connection ends or is cut;
        // a finished task's entry is only a stale abort handle, removed
        // here lazily.
        let mut t = lock();
        t.connections.retain(|_, (_, handle)| !handle.is_finished());
    }
}

/// Carries one connection both ways until either side closes it (or the
/// task is aborted because its link was cut).
async fn forward(client: TcpStream, upstream: String, link: Link, table: Arc<Mutex<LinkTable>>) {
    let connected =
        tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(&upstream)).await;
    let Ok(Ok(server)) = connected else {
        return; // the node is down: the caller sees the connection close
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let delay = || {
        let table = Arc::clone(&table);
        move || {
            table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .delay
                .get(&link)
                .copied()
                .unwrap_or_default()
        }
    };
    tokio::select! {
        () = pump(client_read, server_write, delay()) => {}
        () = pump(server_read, client_write, delay()) => {}
    }
}

/// Copies bytes from `from` to `to`, each chunk delivered `delay()` after it
/// was read (so latency adds up without limiting throughput).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: impl Fn() -> Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_READS);
    let reader = async move {
        let mut buffer = vec![0_u8; READ_BUFFER];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + delay();
                    if tx.send((due, buffer[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_name_their_node() {
        for id in 1..=9 {
            assert_eq!(node_of(source_ip(id)), Some(id));
        }
        assert_eq!(node_of(IpAddr::V4(Ipv4Addr::LOCALHOST)), None);
    }

    /// A plain echo server behind the proxy: bytes flow while the link is
    /// up, stop when it is cut (the connection breaks, new ones close),
    /// flow again once healed, and a delay shows in the round trip.
    #[tokio::test]
    async fn cuts_heals_and_slows_a_link() -> anyhow::Result<()> {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let echo_addr = echo.local_addr()?.to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let network = RaftNetwork::start(&BTreeMap::from([(2, echo_addr)])).await?;
        let proxy = network.proxy_addr(2).context("no proxy")?;
        let connect_as = |id: u64| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source_ip(id), 0))?;
            anyhow::Ok(socket.connect(proxy).await?)
        };
        let round_trip = |mut stream: TcpStream| async move {
            stream.write_all(b"ping").await?;
            let mut answer = [0_u8; 4];
            let started = Instant::now();
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer)).await??;
            anyhow::ensure!(&answer == b"ping", "echo came back wrong");
            anyhow::Ok((stream, started.elapsed()))
        };

        let (mut stream, _) = round_trip(connect_as(1).await?).await?;
        network.cut(&[(1, 2)]);
        // The established connection is dropped...
        let mut buffer = [0_u8; 1];
        let _ = stream.write_all(b"x").await;
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await?;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a cut link still carried bytes"
        );
        // ... a new one is closed at once, while node 3's link is up.
        assert!(round_trip(connect_as(1).await?).await.is_err());
        round_trip(connect_as(3).await?).await?;

        network.heal();
        network.slow((1, 2), Duration::from_millis(150));
        let (_, took) = round_trip(connect_as(1).await?).await?;
        assert!(
            took >= Duration::from_millis(290),
            "latency not added: {took:?}"
        );
        let (accepted, refused) = network.connection_counts();
        assert!(accepted >= 3 && refused >= 1, "{accepted} {refused}");
        Ok(())
    }
}

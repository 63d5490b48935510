//! The catalogue end to end on a three-node cluster: a listing published
//! through the leader is found at once on a follower asked with the
//! write's index; reprice, edit and unpublish belong to the seller alone;
//! title matches outrank description matches; topic, price and seller
//! filters and the price and newest sorts do what they say; a thousand
//! listings page out exactly once each (by relevance, newest and price)
//! while more are published between the pages; bad listings and bad searches
//! are refused with the right code and create nothing; the `agora`
//! command line publishes and finds its own listing from two processes;
//! presence leases come online, lapse, and go offline at shutdown; and
//! search keeps answering on the followers while the leader is SIGKILLed.
//!
//! One test function: the phases share one cluster, and clusters must not
//! run side by side on a small machine.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agora_peer::catalogue::{self, ListingEdit, NewListing};
use agora_peer::{account, new_request_id, presence, request_id, ClusterClient, PeerStore};
use agora_proto::market::{
    EditListingRequest, GetListingRequest, Listing, ListingFields, ListingReply, PublishRequest,
    ReadConsistency, RepriceRequest, SearchReply, SearchRequest, SearchSort, UnpublishRequest,
};
use agora_proto::merkle;
use agora_tests::{binary, wait_for, Probe, TestCluster, TestOptions};
use tonic::{Code, Response, Status};

const PASSWORD: &str = "correct horse battery staple";
/// Presence leases of this cluster: short, so a lapse can be watched.
const LEASE: Duration = Duration::from_secs(3);
/// Longest a replicated change (a lapse included) may take to show on a
/// follower once it is due.
const CONVERGE: Duration = Duration::from_secs(20);
/// Longest one call may take before the test calls the node hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Listings published for the pagination phase, and by how many tasks.
const BULK_LISTINGS: usize = 1_000;
const BULK_TASKS: usize = 32;
/// Search page size of the pagination phase (the largest allowed).
const PAGE: u32 = 100;
/// Listings published between two pages of the pagination phase.
const EXTRAS_PER_PAGE: usize = 2;
/// Searches the leader-crash phase wants on each side of the crash.
const SEARCHES_AROUND_CRASH: usize = 20;

/// A client of exactly the nodes `ids`; with the operator certificate or not.
fn client_for(cluster: &TestCluster, ids: &[u64], operator: bool) -> anyhow::Result<ClusterClient> {
    let mut tls = cluster.client_tls().clone();
    if !operator {
        tls.identity = None;
    }
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push((*id, cluster.node(*id)?.api_addr.clone()));
    }
    Ok(ClusterClient::from_parts(&tls, nodes)?)
}

/// One anonymous client per node, each talking to exactly that node: reads
/// that must be answered by a given follower.
struct Nodes(BTreeMap<u64, ClusterClient>);

impl Nodes {
    fn new(cluster: &TestCluster) -> anyhow::Result<Self> {
        let mut clients = BTreeMap::new();
        for id in cluster.node_ids() {
            clients.insert(id, client_for(cluster, &[id], false)?);
        }
        Ok(Self(clients))
    }

    /// One search on exactly node `on`.
    async fn search(
        &self,
        on: u64,
        request: SearchRequest,
    ) -> anyhow::Result<Result<SearchReply, Status>> {
        let client = self
            .0
            .get(&on)
            .ok_or_else(|| anyhow::anyhow!("no client for node {on}"))?;
        let mut catalogue = client.catalogue(on)?;
        let reply = tokio::time::timeout(CALL_TIMEOUT, catalogue.search(request))
            .await
            .map_err(|_| anyhow::anyhow!("node {on} did not answer a search"))?;
        Ok(reply.map(Response::into_inner))
    }

    /// A search on exactly node `on` that must succeed.
    async fn found(&self, on: u64, request: SearchRequest) -> anyhow::Result<SearchReply> {
        let what = format!("{request:?}");
        self.search(on, request)
            .await?
            .map_err(|status| anyhow::anyhow!("node {on} refused the search {what}: {status:?}"))
    }

    /// One listing from exactly node `on`.
    async fn listing(
        &self,
        on: u64,
        listing_id: u64,
        consistency: ReadConsistency,
    ) -> anyhow::Result<Result<Listing, Status>> {
        let client = self
            .0
            .get(&on)
            .ok_or_else(|| anyhow::anyhow!("no client for node {on}"))?;
        let mut catalogue = client.catalogue(on)?;
        let request = GetListingRequest {
            listing_id,
            consistency: Some(consistency),
        };
        let reply = tokio::time::timeout(CALL_TIMEOUT, catalogue.get_listing(request))
            .await
            .map_err(|_| anyhow::anyhow!("node {on} did not answer GetListing"))?;
        Ok(reply.and_then(|r| {
            r.into_inner()
                .listing
                .ok_or_else(|| Status::internal("GetListing came back without its listing"))
        }))
    }
}

/// A registered, logged-in user and a client (of every node) presenting
/// the session.
struct User {
    id: u64,
    name: String,
    client: ClusterClient,
}

async fn user(everyone: &ClusterClient, name: &str) -> anyhow::Result<User> {
    let account = account::register(everyone, name, PASSWORD.as_bytes(), false).await?;
    let session = account::login_after(everyone, name, PASSWORD.as_bytes(), account.index).await?;
    Ok(User {
        id: account.user_id,
        name: account.username,
        client: everyone.clone().with_token(&session.token)?,
    })
}

/// Freshness: at least `min_index`, no read-index round trip.
fn at(min_index: u64) -> ReadConsistency {
    ReadConsistency {
        min_index,
        linearizable: false,
    }
}

/// Freshness: everything committed before the read started.
fn linearizable() -> ReadConsistency {
    ReadConsistency {
        min_index: 0,
        linearizable: true,
    }
}

/// A search for `text`, relevance order, at `min_index` or later.
fn query(text: &str, min_index: u64) -> SearchRequest {
    SearchRequest {
        text: text.to_owned(),
        consistency: Some(at(min_index)),
        ..SearchRequest::default()
    }
}

fn listings(reply: &SearchReply) -> Vec<&Listing> {
    reply
        .results
        .iter()
        .filter_map(|r| r.listing.as_ref())
        .collect()
}

fn ids(reply: &SearchReply) -> Vec<u64> {
    listings(reply).iter().map(|l| l.id).collect()
}

fn prices(reply: &SearchReply) -> Vec<u64> {
    listings(reply).iter().map(|l| l.price).collect()
}

/// What a raw publication says; the file facts are made up but valid.
fn publish_request(
    user: &User,
    title: &str,
    description: &str,
    topic: &str,
    price: u64,
) -> PublishRequest {
    PublishRequest {
        request_id: Some(request_id(user.name.clone())),
        fields: Some(ListingFields {
            title: title.to_owned(),
            description: description.to_owned(),
            topic: topic.to_owned(),
            ..ListingFields::default()
        }),
        size: 10_000,
        chunk_size: merkle::MIN_CHUNK_SIZE,
        merkle_root: merkle::leaf_hash(title.as_bytes()).to_vec(),
        price,
    }
}

/// Sends a publication to the leader as `user` (retried with its request
/// id through elections).
async fn send_publish(user: &User, request: PublishRequest) -> Result<ListingReply, Status> {
    let client = &user.client;
    client
        .call_leader(|channel| {
            let request = request.clone();
            let mut catalogue = client.catalogue_on(channel);
            async move { catalogue.publish(request).await.map(Response::into_inner) }
        })
        .await
}

/// Publishes and returns the listing and the index it was applied at.
async fn publish(
    user: &User,
    title: &str,
    description: &str,
    topic: &str,
    price: u64,
) -> anyhow::Result<(Listing, u64)> {
    let reply = send_publish(
        user,
        publish_request(user, title, description, topic, price),
    )
    .await
    .map_err(|status| anyhow::anyhow!("publishing {title:?} as {}: {status:?}", user.name))?;
    let listing = reply
        .listing
        .ok_or_else(|| anyhow::anyhow!("publishing {title:?} came back without its listing"))?;
    Ok((listing, reply.index))
}

/// Fails unless `result` is a refusal with `code`; returns its message.
fn expect_code<T: Debug>(
    result: Result<T, Status>,
    code: Code,
    what: &str,
) -> anyhow::Result<String> {
    match result {
        Err(status) if status.code() == code => Ok(status.message().to_owned()),
        other => anyhow::bail!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// Runs `agora --cluster F --data-dir D ARGS...` with `AGORA_PASSWORD` set;
/// returns (success, stdout, stderr).
async fn agora(
    cluster_file: &Path,
    home: &Path,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let mut command = tokio::process::Command::new(binary("agora")?);
    command
        .arg("--cluster")
        .arg(cluster_file)
        .arg("--data-dir")
        .arg(home)
        .args(args)
        .stdin(std::process::Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AGORA_") {
            command.env_remove(key);
        }
    }
    command.env("AGORA_PASSWORD", PASSWORD);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .map_err(|_| anyhow::anyhow!("`agora {}` did not finish within 60 s", args.join(" ")))??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn json(stdout: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(stdout)
        .map_err(|err| anyhow::anyhow!("not one JSON document ({err}): {stdout}"))
}

/// Whether every listing of `seller` that node `on` returns (at least
/// one) shows the seller as `online`; why not otherwise.
async fn seller_shown(
    nodes: &Nodes,
    on: u64,
    seller: &str,
    online: bool,
    min_index: u64,
) -> anyhow::Result<Probe<()>> {
    let request = SearchRequest {
        seller: seller.to_owned(),
        limit: PAGE,
        consistency: Some(at(min_index)),
        ..SearchRequest::default()
    };
    let reply = nodes.found(on, request).await?;
    let flags: Vec<bool> = listings(&reply).iter().map(|l| l.seller_online).collect();
    anyhow::ensure!(!flags.is_empty(), "node {on} shows no listing of {seller}");
    Ok(if flags.iter().all(|flag| *flag == online) {
        Probe::Ready(())
    } else {
        Probe::NotYet(format!("node {on} shows {seller} online: {flags:?}"))
    })
}

/// Waits until every node of `on` shows `seller` as `online`.
async fn wait_seller_shown(
    nodes: &Nodes,
    on: &[u64],
    seller: &str,
    online: bool,
    within: Duration,
) -> anyhow::Result<()> {
    let state = if online { "online" } else { "offline" };
    wait_for(
        &format!("nodes {on:?} to show {seller} {state}"),
        within,
        || async {
            for id in on {
                if let Probe::NotYet(why) = seller_shown(nodes, *id, seller, online, 0).await? {
                    return Ok(Probe::NotYet(why));
                }
            }
            Ok(Probe::Ready(()))
        },
    )
    .await
}

/// What one pass of [`page_through`] saw and did.
struct Pass {
    /// Every result, in order, as (id, price).
    returned: Vec<(u64, u64)>,
    /// Matching listings published between the pages.
    latecomers: Vec<u64>,
    /// The index of the last of those (or the pass's `min_index`).
    last_index: u64,
}

/// Pages through a search for `word` in `sort` order, `PAGE` results at a
/// time, from the followers (any of them, page by page), publishing
/// `EXTRAS_PER_PAGE` more matching listings as `writer` between two pages.
async fn page_through(
    readers: &ClusterClient,
    writer: &User,
    word: &str,
    sort: SearchSort,
    min_index: u64,
) -> anyhow::Result<Pass> {
    let mut request = SearchRequest {
        text: word.to_owned(),
        limit: PAGE,
        consistency: Some(at(min_index)),
        ..SearchRequest::default()
    };
    request.set_sort(sort);
    let mut returned = Vec::new();
    let mut latecomers = Vec::new();
    let mut last_index = min_index;
    for page in 0.. {
        anyhow::ensure!(page <= 20, "{sort:?}: the pages do not end");
        let reply = catalogue::search(readers, &request).await?;
        let scores: Vec<f64> = reply.results.iter().map(|r| r.score).collect();
        if sort == SearchSort::Relevance {
            anyhow::ensure!(
                scores.windows(2).all(|w| w[0] <= w[1]),
                "{sort:?} page {page} is not best first: {scores:?}"
            );
        }
        returned.extend(listings(&reply).iter().map(|l| (l.id, l.price)));
        if reply.next_cursor.is_empty() {
            break;
        }
        for n in 0..EXTRAS_PER_PAGE {
            let title = format!("{word} latecomer {sort:?} {page} {n}");
            let (listing, index) =
                publish(writer, &title, "published between pages", "", 5).await?;
            latecomers.push(listing.id);
            last_index = last_index.max(index);
        }
        request.cursor = reply.next_cursor;
    }
    Ok(Pass {
        returned,
        latecomers,
        last_index,
    })
}

/// Checks that `returned` holds every id of `expected` exactly once and
/// nothing else.
fn exactly_once(
    sort: SearchSort,
    returned: &[(u64, u64)],
    expected: &BTreeSet<u64>,
) -> anyhow::Result<()> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (id, _) in returned {
        *counts.entry(*id).or_default() += 1;
    }
    let repeated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<&u64> = expected
        .iter()
        .filter(|id| !counts.contains_key(id))
        .collect();
    let unexpected: Vec<&u64> = counts.keys().filter(|id| !expected.contains(id)).collect();
    anyhow::ensure!(
        repeated.is_empty() && missing.is_empty() && unexpected.is_empty(),
        "{sort:?}: {} ids returned for {} expected; repeated {repeated:?}, missing {missing:?}, unexpected {unexpected:?}",
        returned.len(),
        expected.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_end_to_end() -> anyhow::Result<()> {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs_f64();
    let mut cluster = TestCluster::start(
        3,
        TestOptions {
            extra_args: vec!["--presence-lease-ms".into(), LEASE.as_millis().to_string()],
            ..TestOptions::default()
        },
    )
    .await?;
    let all = cluster.node_ids();
    let leader = cluster.wait_for_leader(None).await?;
    let followers: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let everyone = client_for(&cluster, &all, false)?;
    everyone.set_leader_hint(leader);
    let on_followers = client_for(&cluster, &followers, false)?;
    let nodes = Nodes::new(&cluster)?;
    let admin = cluster.client();
    admin.set_leader_hint(leader);

    let alice = user(&everyone, "alice").await?;
    let bob = user(&everyone, "bob").await?;
    let bulk = user(&everyone, "bulk").await?;
    account::register(&everyone, "carol", PASSWORD.as_bytes(), false).await?;
    let alice_store = PeerStore::open(&cluster.dir().join("peer-alice")).await?;
    eprintln!("[{:>5.1}s] users ready; leader {leader}", elapsed());

    // --- Publish through the library; a follower finds it at the index.
    let file = cluster.dir().join("earthsea.txt");
    std::fs::write(&file, "Ged sails to the edge of the world. ".repeat(500))?;
    let new = NewListing {
        path: file.clone(),
        chunk_size: merkle::MIN_CHUNK_SIZE,
        fields: ListingFields {
            title: "A Wizard of Earthsea".into(),
            description: "The first book of the archipelago".into(),
            ..ListingFields::default()
        },
        price: 250,
    };
    let published = catalogue::publish(
        &alice.client,
        &alice_store,
        &new,
        request_id("alice"),
        |_, _| {},
    )
    .await?;
    let wizard = published.listing.id;
    assert_eq!(published.listing.seller_id, alice.id);
    assert_eq!(published.listing.topic, "general");
    assert_eq!(
        published.digest,
        catalogue::hash_file(&file, merkle::MIN_CHUNK_SIZE)?
    );
    let found = nodes
        .found(followers[0], query("wizard", published.index))
        .await?;
    assert_eq!(ids(&found), vec![wizard], "node {}", followers[0]);
    assert!(found.applied_index >= published.index);
    let shown = nodes
        .listing(followers[1], wizard, at(published.index))
        .await??;
    assert_eq!(
        (
            shown.title.as_str(),
            shown.price,
            shown.active,
            shown.seller.as_str()
        ),
        ("A Wizard of Earthsea", 250, true, "alice"),
        "node {}",
        followers[1]
    );
    assert_eq!(shown.merkle_root, published.digest.merkle_root.to_vec());

    // --- Reprice: seen at the write's index. Nobody else may change it.
    let repriced = catalogue::reprice(
        &alice.client,
        &alice_store,
        wizard,
        275,
        request_id("alice"),
    )
    .await?;
    let found = nodes
        .found(followers[1], query("wizard", repriced.index))
        .await?;
    assert_eq!(
        prices(&found),
        vec![275],
        "the new price on node {}",
        followers[1]
    );
    // An edit reaches the full-text index: the new tag is searchable.
    let edit = ListingEdit {
        tags: Some(vec!["Fantasy".into(), "classic".into()]),
        ..ListingEdit::default()
    };
    let edited = catalogue::edit(
        &alice.client,
        &alice_store,
        wizard,
        &edit,
        request_id("alice"),
    )
    .await?;
    let found = nodes
        .found(followers[0], query("fantasy", edited.index))
        .await?;
    assert_eq!(
        ids(&found),
        vec![wizard],
        "the new tag on node {}",
        followers[0]
    );
    assert_eq!(listings(&found)[0].tags, vec!["fantasy", "classic"]);
    let mut theirs = bob.client.catalogue(leader)?;
    expect_code(
        theirs
            .reprice(RepriceRequest {
                request_id: Some(request_id("bob")),
                listing_id: wizard,
                price: 1,
            })
            .await,
        Code::PermissionDenied,
        "bob repricing alice's listing",
    )?;
    expect_code(
        theirs
            .edit_listing(EditListingRequest {
                request_id: Some(request_id("bob")),
                listing_id: wizard,
                title: Some("Stolen".into()),
                ..EditListingRequest::default()
            })
            .await,
        Code::PermissionDenied,
        "bob editing alice's listing",
    )?;
    expect_code(
        theirs
            .unpublish(UnpublishRequest {
                request_id: Some(request_id("bob")),
                listing_id: wizard,
            })
            .await,
        Code::PermissionDenied,
        "bob unpublishing alice's listing",
    )?;
    // The same through a follower, which forwards the write.
    let mut theirs_via_follower = bob.client.catalogue(followers[0])?;
    expect_code(
        theirs_via_follower
            .reprice(RepriceRequest {
                request_id: Some(request_id("bob")),
                listing_id: wizard,
                price: 2,
            })
            .await,
        Code::PermissionDenied,
        "bob repricing alice's listing through a follower",
    )?;
    for id in &followers {
        let unchanged = nodes.listing(*id, wizard, linearizable()).await??;
        assert_eq!(
            (unchanged.title.as_str(), unchanged.price, unchanged.active),
            ("A Wizard of Earthsea", 275, true),
            "node {id} after bob's attempts"
        );
    }
    let missing = 9_999_999;
    let mut mine = alice.client.catalogue(leader)?;
    expect_code(
        mine.reprice(RepriceRequest {
            request_id: Some(request_id("alice")),
            listing_id: missing,
            price: 1,
        })
        .await,
        Code::NotFound,
        "repricing a listing that does not exist",
    )?;
    expect_code(
        mine.edit_listing(EditListingRequest {
            request_id: Some(request_id("alice")),
            listing_id: missing,
            title: Some("Nothing".into()),
            ..EditListingRequest::default()
        })
        .await,
        Code::NotFound,
        "editing a listing that does not exist",
    )?;
    expect_code(
        mine.unpublish(UnpublishRequest {
            request_id: Some(request_id("alice")),
            listing_id: missing,
        })
        .await,
        Code::NotFound,
        "unpublishing a listing that does not exist",
    )?;
    expect_code(
        nodes.listing(followers[0], missing, at(0)).await?,
        Code::NotFound,
        "reading a listing that does not exist",
    )?;

    // --- Unpublish: gone from search, still known as inactive.
    let gone =
        catalogue::unpublish(&alice.client, &alice_store, wizard, request_id("alice")).await?;
    let found = nodes
        .found(followers[0], query("wizard", gone.index))
        .await?;
    assert!(
        ids(&found).is_empty(),
        "an unpublished listing in search: {found:?}"
    );
    let shown = nodes
        .listing(followers[1], wizard, at(gone.index))
        .await??;
    assert!(!shown.active, "{shown:?}");
    assert_eq!(shown.price, 275);
    expect_code(
        mine.reprice(RepriceRequest {
            request_id: Some(request_id("alice")),
            listing_id: wizard,
            price: 300,
        })
        .await,
        Code::FailedPrecondition,
        "repricing an unpublished listing",
    )?;
    eprintln!(
        "[{:>5.1}s] publish, reprice, permissions, unpublish",
        elapsed()
    );

    // --- Ranking: a title match outranks a description match, whatever
    // the order of publication.
    let (in_description, _) = publish(
        &alice,
        "Notes from the observatory",
        "a night spent watching one quasar",
        "",
        100,
    )
    .await?;
    let (in_title, index) = publish(
        &alice,
        "The quasar handbook",
        "notes from the observatory",
        "",
        100,
    )
    .await?;
    for id in &followers {
        let found = nodes.found(*id, query("quasar", index)).await?;
        assert_eq!(
            ids(&found),
            vec![in_title.id, in_description.id],
            "node {id}: title match first; scores {:?}",
            found.results.iter().map(|r| r.score).collect::<Vec<_>>()
        );
    }

    // --- Filters and sorts.
    let topic = catalogue::add_topic(
        &admin,
        "astronomy",
        "Stars and what is between them",
        &new_request_id(),
    )
    .await?;
    let mut nebula = BTreeMap::new();
    for (who, price, topic_name) in [
        (&alice, 300, "astronomy"),
        (&alice, 100, ""),
        (&bob, 500, "astronomy"),
        (&bob, 200, ""),
    ] {
        let title = format!("Nebula atlas at {price}");
        let (listing, index) = publish(who, &title, "", topic_name, price).await?;
        assert!(index > topic.index);
        nebula.insert(price, (listing, index));
    }
    let last = nebula.values().map(|(_, index)| *index).max().unwrap_or(0);
    let topics = catalogue::topics(&on_followers, at(last)).await?;
    let counts: BTreeMap<&str, u64> = topics
        .iter()
        .map(|t| (t.name.as_str(), t.listings))
        .collect();
    assert_eq!(counts.get("astronomy"), Some(&2), "{topics:?}");
    match catalogue::add_topic(&alice.client, "mine", "", &new_request_id()).await {
        Err(err) if err.code() == Some(Code::PermissionDenied) => {}
        other => anyhow::bail!("a user adding a topic: expected PermissionDenied, got {other:?}"),
    }
    let id_at = |price: u64| nebula.get(&price).map_or(0, |(listing, _)| listing.id);
    let search = |configure: &dyn Fn(&mut SearchRequest)| {
        let mut request = query("nebula", last);
        configure(&mut request);
        request
    };
    let found = nodes
        .found(followers[0], search(&|r| r.topic = "astronomy".into()))
        .await?;
    assert_eq!(
        ids(&found).into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([id_at(300), id_at(500)]),
        "topic astronomy"
    );
    assert!(listings(&found).iter().all(|l| l.topic == "astronomy"));
    let found = nodes
        .found(
            followers[1],
            search(&|r| {
                r.text = String::new();
                r.topic = "astronomy".into();
            }),
        )
        .await?;
    assert_eq!(
        ids(&found),
        vec![id_at(500), id_at(300)],
        "browsing astronomy, newest first"
    );
    let found = nodes
        .found(
            followers[1],
            search(&|r| {
                r.min_price = Some(150);
                r.max_price = Some(400);
                r.set_sort(SearchSort::Price);
            }),
        )
        .await?;
    assert_eq!(prices(&found), vec![200, 300], "prices 1.50 to 4.00");
    let found = nodes
        .found(followers[0], search(&|r| r.seller = "BOB".into()))
        .await?;
    assert_eq!(
        ids(&found).into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([id_at(200), id_at(500)]),
        "seller bob"
    );
    assert!(listings(&found).iter().all(|l| l.seller_id == bob.id));
    let found = nodes
        .found(
            followers[0],
            search(&|r| {
                r.seller = "alice".into();
                r.topic = "astronomy".into();
            }),
        )
        .await?;
    assert_eq!(ids(&found), vec![id_at(300)], "alice's astronomy");
    let found = nodes
        .found(followers[0], search(&|r| r.set_sort(SearchSort::Price)))
        .await?;
    assert_eq!(prices(&found), vec![100, 200, 300, 500], "sort price");
    let found = nodes
        .found(followers[1], search(&|r| r.set_sort(SearchSort::PriceDesc)))
        .await?;
    assert_eq!(prices(&found), vec![500, 300, 200, 100], "sort price-desc");
    let found = nodes
        .found(followers[0], search(&|r| r.set_sort(SearchSort::Newest)))
        .await?;
    assert_eq!(
        ids(&found),
        vec![id_at(200), id_at(500), id_at(100), id_at(300)],
        "sort newest (publication order reversed)"
    );
    expect_code(
        nodes
            .search(followers[0], search(&|r| r.topic = "no-such-topic".into()))
            .await?,
        Code::NotFound,
        "searching an unknown topic",
    )?;
    expect_code(
        nodes
            .search(
                followers[0],
                search(&|r| {
                    r.min_price = Some(500);
                    r.max_price = Some(100);
                }),
            )
            .await?,
        Code::InvalidArgument,
        "a price range upside down",
    )?;
    eprintln!("[{:>5.1}s] ranking, filters and sorts", elapsed());

    // --- Bad input: the right code, and nothing created.
    let before = catalogue::all_seller_listings(&alice.client, "", true, linearizable()).await?;
    let fine = |title: &str| publish_request(&alice, title, "", "", 100);
    let bad_publications = [
        ("an empty title", fine(""), Code::InvalidArgument),
        ("a blank title", fine("   "), Code::InvalidArgument),
        (
            "a 100 KB title",
            fine(&"x".repeat(100_000)),
            Code::InvalidArgument,
        ),
        // Over the catalogue's request limit (256 KiB): refused before
        // decoding.
        (
            "a 1 MB title",
            fine(&"x".repeat(1 << 20)),
            Code::ResourceExhausted,
        ),
        (
            "an unknown topic",
            publish_request(&alice, "Lost", "", "no-such-topic", 100),
            Code::NotFound,
        ),
        (
            "a 31-byte Merkle root",
            PublishRequest {
                merkle_root: vec![7; 31],
                ..fine("Short root")
            },
            Code::InvalidArgument,
        ),
        (
            "a 33-byte Merkle root",
            PublishRequest {
                merkle_root: vec![7; 33],
                ..fine("Long root")
            },
            Code::InvalidArgument,
        ),
        (
            "a chunk size that is not a power of two",
            PublishRequest {
                chunk_size: 5_000,
                ..fine("Odd chunks")
            },
            Code::InvalidArgument,
        ),
        (
            "an empty file",
            PublishRequest {
                size: 0,
                ..fine("Nothing inside")
            },
            Code::InvalidArgument,
        ),
        (
            "no fields",
            PublishRequest {
                fields: None,
                ..fine("No fields")
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, request, code) in bad_publications {
        let message = expect_code(send_publish(&alice, request).await, code, what)?;
        assert!(!message.is_empty(), "{what}: the refusal says nothing");
    }
    let after = catalogue::all_seller_listings(&alice.client, "", true, linearizable()).await?;
    assert_eq!(
        after.iter().map(|l| l.id).collect::<Vec<_>>(),
        before.iter().map(|l| l.id).collect::<Vec<_>>(),
        "refused publications created listings"
    );
    expect_code(
        nodes
            .search(
                followers[0],
                SearchRequest {
                    limit: 101,
                    ..query("nebula", 0)
                },
            )
            .await?,
        Code::InvalidArgument,
        "a search page of 101",
    )?;
    expect_code(
        nodes
            .search(followers[0], query(&"long ".repeat(60), 0))
            .await?,
        Code::InvalidArgument,
        "search text over 256 bytes",
    )?;
    for text in [
        r#""unbalanced AND (title: NEAR* -"#,
        r#"nebula OR "atlas" NOT x* ^title:{description}"#,
        "\"",
        "*",
        "NEAR(nebula atlas, 2)",
    ] {
        let reply = nodes.found(followers[1], query(text, 0)).await?;
        eprintln!("  search {text:?}: {} results", reply.results.len());
    }
    let found = nodes
        .found(followers[1], query(r#"(nebula* "atlas"#, 0))
        .await?;
    assert_eq!(
        found.results.len(),
        4,
        "quotes and operators are words, not syntax"
    );
    let first_page = nodes
        .found(
            followers[0],
            SearchRequest {
                limit: 1,
                ..query("nebula", 0)
            },
        )
        .await?;
    anyhow::ensure!(
        !first_page.next_cursor.is_empty(),
        "one of four results has a next page"
    );
    let message = expect_code(
        nodes
            .search(
                followers[0],
                SearchRequest {
                    limit: 1,
                    cursor: first_page.next_cursor.clone(),
                    ..query("quasar", 0)
                },
            )
            .await?,
        Code::InvalidArgument,
        "a cursor from another search",
    )?;
    assert!(message.contains("different search"), "{message}");
    expect_code(
        nodes
            .search(
                followers[0],
                SearchRequest {
                    cursor: first_page.next_cursor.clone(),
                    ..search(&|r| r.set_sort(SearchSort::Price))
                },
            )
            .await?,
        Code::InvalidArgument,
        "a cursor of another sort",
    )?;
    expect_code(
        nodes
            .search(
                followers[0],
                SearchRequest {
                    cursor: "not-a-cursor".into(),
                    ..query("nebula", 0)
                },
            )
            .await?,
        Code::InvalidArgument,
        "a made-up cursor",
    )?;
    eprintln!("[{:>5.1}s] bad input refused", elapsed());

    // --- Pagination: a thousand listings, each returned once, while more
    // are published between the pages.
    let word = "zyzzyva";
    let bulk = Arc::new(bulk);
    let bulk_started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..BULK_TASKS {
        let bulk = Arc::clone(&bulk);
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in (task..BULK_LISTINGS).step_by(BULK_TASKS) {
                // Descriptions of different lengths and word counts, so the
                // bm25 scores differ (and some tie).
                let mut description = format!("lot {i} ");
                description.push_str(&"words ".repeat(i % 7));
                description.push_str(&format!("{word} ").repeat(i % 3));
                let title = format!("{word} lot {i}");
                // Prices repeat, so the price order pages through ties.
                let price = u64::try_from(i % 50)?;
                done.push(publish(&bulk, &title, &description, "", price).await?);
            }
            anyhow::Ok(done)
        }));
    }
    let mut bulk_ids = BTreeSet::new();
    let mut bulk_index = 0;
    for task in tasks {
        for (listing, index) in task.await?? {
            bulk_ids.insert(listing.id);
            bulk_index = bulk_index.max(index);
        }
    }
    assert_eq!(
        bulk_ids.len(),
        BULK_LISTINGS,
        "every publication made its own listing"
    );
    eprintln!(
        "[{:>5.1}s] {BULK_LISTINGS} listings published by {BULK_TASKS} tasks in {:.1}s",
        elapsed(),
        bulk_started.elapsed().as_secs_f64()
    );
    // Each pass sees the latecomers of the passes before it (published
    // before its first page), and none of its own.
    let mut expected = bulk_ids.clone();
    let mut min_index = bulk_index;
    for sort in [SearchSort::Relevance, SearchSort::Newest, SearchSort::Price] {
        let pass = page_through(&on_followers, &bulk, word, sort, min_index).await?;
        exactly_once(sort, &pass.returned, &expected)?;
        let in_order = match sort {
            SearchSort::Newest => pass.returned.windows(2).all(|w| w[0].0 > w[1].0),
            SearchSort::Price => pass
                .returned
                .windows(2)
                .all(|w| (w[0].1, w[0].0) < (w[1].1, w[1].0)),
            _ => true,
        };
        assert!(in_order, "{sort:?}: out of order across pages");
        assert_eq!(
            pass.latecomers.len(),
            EXTRAS_PER_PAGE * (expected.len() / PAGE as usize),
            "{sort:?}: latecomers, one batch after each full page"
        );
        expected.extend(&pass.latecomers);
        min_index = pass.last_index;
    }
    let fresh = nodes
        .found(
            followers[0],
            SearchRequest {
                limit: PAGE,
                ..query(&format!("{word} latecomer"), min_index)
            },
        )
        .await?;
    assert_eq!(
        ids(&fresh).into_iter().collect::<BTreeSet<_>>(),
        expected.difference(&bulk_ids).copied().collect(),
        "a new search finds every latecomer"
    );
    eprintln!(
        "[{:>5.1}s] pagination by relevance, newest and price",
        elapsed()
    );

    // --- The command line, in separate processes.
    let cluster_file = cluster.write_cluster_file()?;
    let home = cluster.dir().join("peer-carol");
    let (ok, _, err) = agora(&cluster_file, &home, &["login", "carol"]).await?;
    assert!(ok, "agora login: {err}");
    let notes = cluster.dir().join("quokka-notes.txt");
    std::fs::write(&notes, "Quokkas smile. ".repeat(1000))?;
    let notes_arg = notes.to_string_lossy().into_owned();
    let (ok, out, err) = agora(
        &cluster_file,
        &home,
        &[
            "--json",
            "publish",
            &notes_arg,
            "--title",
            "Quokka field notes",
            "--price",
            "1.50",
            "--chunk-size",
            "4096",
        ],
    )
    .await?;
    assert!(ok, "agora publish: {out}{err}");
    let cli_listing = json(&out)?["listing"]["id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no listing id in {out}"))?;
    let (ok, out, err) = agora(&cluster_file, &home, &["search", "quokka", "--json"]).await?;
    assert!(ok, "agora search: {out}{err}");
    let results = json(&out)?;
    assert_eq!(
        results["results"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );
    let first = &results["results"][0];
    assert_eq!(first["id"].as_u64(), Some(cli_listing), "{out}");
    assert_eq!(first["price"], "1.50", "{out}");
    assert_eq!(first["seller"], "carol", "{out}");
    assert_eq!(first["online"], false, "{out}");
    for bad in ["-1", "abc"] {
        let (ok, out, err) = agora(
            &cluster_file,
            &home,
            &[
                "publish",
                &notes_arg,
                "--title",
                "Quokka again",
                "--price",
                bad,
            ],
        )
        .await?;
        assert!(!ok, "agora publish --price {bad} succeeded: {out}");
        let lines: Vec<&str> = err.lines().filter(|line| !line.trim().is_empty()).collect();
        // The one sentence, and at most clap's pointer to --help.
        assert!(
            lines
                .first()
                .is_some_and(|line| line.contains(bad) && line.contains("not an amount")),
            "agora publish --price {bad}: {err}"
        );
        assert!(
            lines.len() == 1 || (lines.len() == 2 && lines[1].contains("--help")),
            "agora publish --price {bad} says more than one sentence: {err}"
        );
    }
    let (ok, out, err) = agora(&cluster_file, &home, &["--json", "listings"]).await?;
    assert!(ok, "agora listings: {err}");
    let count = json(&out)?["listings"].as_array().map_or(0, Vec::len);
    assert_eq!(count, 1, "refused publications created listings: {out}");
    eprintln!("[{:>5.1}s] command line", elapsed());

    // --- Presence: online at the announcement's index, offline when the
    // lease lapses.
    let endpoint = "127.0.0.1:7001";
    // Through a client that knows only a follower: the follower points to
    // the leader, and the client follows.
    let via_follower =
        client_for(&cluster, &followers[..1], false)?.with_bearer(alice.client.bearer().cloned());
    let announced = presence::announce(&via_follower, endpoint).await?;
    assert!(
        announced.index > 0,
        "coming online is a replicated write: {announced:?}"
    );
    assert_eq!(announced.lease_ms, u64::try_from(LEASE.as_millis())?);
    for id in &followers {
        match seller_shown(&nodes, *id, "alice", true, announced.index).await? {
            Probe::Ready(()) => {}
            Probe::NotYet(why) => anyhow::bail!("at the announcement's index: {why}"),
        }
        let online_only = nodes
            .found(
                *id,
                SearchRequest {
                    online_only: true,
                    ..query("nebula", announced.index)
                },
            )
            .await?;
        assert_eq!(
            ids(&online_only).into_iter().collect::<BTreeSet<_>>(),
            BTreeSet::from([id_at(100), id_at(300)]),
            "node {id}: only alice is online"
        );
    }
    let renewed = presence::announce(&alice.client, endpoint).await?;
    let renewed_at = Instant::now();
    assert_eq!(renewed.index, 0, "a renewal is not a write: {renewed:?}");
    wait_seller_shown(&nodes, &followers, "alice", false, LEASE + CONVERGE).await?;
    let lapsed_after = renewed_at.elapsed();
    assert!(
        lapsed_after >= LEASE.saturating_sub(Duration::from_millis(500)),
        "alice went offline {lapsed_after:?} after renewing a {LEASE:?} lease"
    );
    eprintln!(
        "[{:>5.1}s] presence lapsed {:.1}s after the last renewal",
        elapsed(),
        lapsed_after.as_secs_f64()
    );

    // keep_presence: online while it runs (renewing past several lease
    // lengths), offline right after it is told to stop.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn({
        let client = alice.client.clone();
        let store = alice_store.clone();
        async move {
            presence::keep_presence(&client, "127.0.0.1:7002", Some(&store), async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    wait_seller_shown(&nodes, &followers, "alice", true, CONVERGE).await?;
    let online_since = Instant::now();
    let watched = LEASE * 2;
    while online_since.elapsed() < watched {
        for id in &followers {
            if let Probe::NotYet(why) = seller_shown(&nodes, *id, "alice", true, 0).await? {
                anyhow::bail!(
                    "{:.1}s into keep_presence: {why}",
                    online_since.elapsed().as_secs_f64()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen_before_stop = alice_store.max_seen_index().await?;
    let _ = stop_tx.send(());
    tokio::time::timeout(CALL_TIMEOUT, keeper).await???;
    let offline_index = alice_store.max_seen_index().await?;
    assert!(
        offline_index > seen_before_stop,
        "going offline recorded no index ({offline_index})"
    );
    for id in &followers {
        match seller_shown(&nodes, *id, "alice", false, offline_index).await? {
            Probe::Ready(()) => {}
            Probe::NotYet(why) => anyhow::bail!("right after keep_presence stopped: {why}"),
        }
    }
    eprintln!(
        "[{:>5.1}s] keep_presence online for {watched:?}, then offline",
        elapsed()
    );

    // --- SIGKILL the leader while the followers answer searches.
    let leader = cluster.wait_for_leader(None).await?;
    let followers: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let searcher = tokio::spawn({
        let nodes = Nodes(
            followers
                .iter()
                .filter_map(|id| nodes.0.get(id).map(|client| (*id, client.clone())))
                .collect(),
        );
        let followers = followers.clone();
        let (stop, answered, failures) = (
            Arc::clone(&stop),
            Arc::clone(&answered),
            Arc::clone(&failures),
        );
        async move {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let on = followers[n % followers.len()];
                n += 1;
                match nodes.search(on, query("quasar", 0)).await {
                    Ok(Ok(reply)) if reply.results.len() == 2 => {}
                    Ok(Ok(reply)) => failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(format!("node {on}: {} results", reply.results.len())),
                    Ok(Err(status)) => failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(format!("node {on}: {status:?}")),
                    Err(err) => failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(format!("node {on}: {err:#}")),
                }
                answered.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let searches_reached = |goal: usize| {
        let answered = Arc::clone(&answered);
        async move {
            wait_for(&format!("{goal} searches"), CONVERGE, || {
                let n = answered.load(Ordering::SeqCst);
                async move {
                    Ok(if n >= goal {
                        Probe::Ready(())
                    } else {
                        Probe::NotYet(format!("{n} searches"))
                    })
                }
            })
            .await
        }
    };
    searches_reached(SEARCHES_AROUND_CRASH).await?;
    cluster.kill(leader)?;
    let killed_at = Instant::now();
    let at_kill = answered.load(Ordering::SeqCst);
    // The client still believes in the dead leader (alice's client shares
    // the hint): it retries until the new one takes the write.
    everyone.set_leader_hint(leader);
    let (published, elected) = tokio::join!(
        async {
            let result = publish(&alice, "Nebula survey after the crash", "", "", 42).await;
            (result, killed_at.elapsed())
        },
        async {
            let result = cluster.wait_for_leader(Some(leader)).await;
            (result, killed_at.elapsed())
        },
    );
    let ((after_crash, after_index), publish_took) = (published.0?, published.1);
    let (new_leader, election_took) = (elected.0?, elected.1);
    searches_reached(answered.load(Ordering::SeqCst) + SEARCHES_AROUND_CRASH).await?;
    stop.store(true, Ordering::SeqCst);
    searcher.await?;
    let total = answered.load(Ordering::SeqCst);
    let failed = failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    eprintln!(
        "[{:>5.1}s] killed leader {leader}; new leader {new_leader}; {total} searches ({at_kill} before the kill), {} failed; a leader was elected {:.1}s and a publish went through {:.1}s after the kill",
        elapsed(),
        failed.len(),
        election_took.as_secs_f64(),
        publish_took.as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "searches failed while the leader died: {failed:#?}"
    );
    for id in &followers {
        let found = nodes
            .found(*id, query("survey after the crash", after_index))
            .await?;
        assert_eq!(
            ids(&found),
            vec![after_crash.id],
            "node {id}: published once"
        );
    }

    // The old leader comes back, catches up, and agrees.
    cluster.restart(leader).await?;
    cluster.wait_applied(leader, after_index).await?;
    let back = nodes
        .listing(leader, after_crash.id, at(after_index))
        .await??;
    assert_eq!(back.title, "Nebula survey after the crash");
    let digests = cluster.wait_same_applied(&all).await?;
    let distinct: BTreeSet<&str> = digests.values().map(|d| d.digest.as_str()).collect();
    assert_eq!(distinct.len(), 1, "the nodes disagree: {digests:?}");
    eprintln!(
        "[{:>5.1}s] the old leader is back and agrees; done",
        elapsed()
    );
    Ok(())
}

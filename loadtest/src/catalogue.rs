//! The catalogue benchmark: publish a synthetic catalogue (titles,
//! descriptions, tags and attributes drawn from a Zipf-distributed
//! vocabulary of [`VOCABULARY`] words, as real text is: a few hundred
//! real words first, then made-up ones), then run searches against the
//! followers, closed loop, and report searches/s and latency percentiles.
//! Query words follow the same Zipf law without the [`QUERY_SKIP`] most
//! frequent words (nobody searches for "the"); a query has one word, or
//! two (30%).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::latency::{new_histogram, Percentiles};
use agora_peer::{account, ClusterClient};
use agora_proto::market::catalogue_service_client::CatalogueServiceClient;
use agora_proto::market::{
    ListingFields, PublishRequest, ReadConsistency, RequestId, SearchRequest, SearchSort,
};
use anyhow::Context;
use clap::Args;
use rand::distributions::Distribution;
use rand::Rng;
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// HTTP/2 connections per follower.
const CONNECTIONS_PER_NODE: usize = 4;

/// Flags of `agora-loadtest catalogue`.
#[derive(Debug, Args)]
pub struct CatalogueArgs {
    /// The cluster file.
    #[arg(long, env = "AGORA_CLUSTER", default_value = "agora-dev/cluster.toml")]
    cluster: PathBuf,
    /// Listings to publish first (0: search what is there).
    #[arg(long, default_value_t = 100_000)]
    listings: u64,
    /// Seller accounts the listings are spread over.
    #[arg(long, default_value_t = 20)]
    sellers: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 256)]
    publishers: usize,
    /// Concurrent searchers.
    #[arg(long, default_value_t = 64)]
    searchers: usize,
    /// How long to search, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Results per search page.
    #[arg(long, default_value_t = 20)]
    page: u32,
    /// Draw queries from a fixed pool of this many (0: no pool, every
    /// query drawn afresh), to measure a hot query set.
    #[arg(long, default_value_t = 0)]
    query_pool: usize,
    /// Search the leader too (default: followers only).
    #[arg(long)]
    include_leader: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    published: u64,
    publish_errors: u64,
    publish_seconds: f64,
    publishes_per_sec: f64,
    search_nodes: Vec<u64>,
    searchers: usize,
    search_seconds: f64,
    searches: u64,
    search_errors: u64,
    searches_per_sec: f64,
    mean_results: f64,
    latency_ms: Percentiles,
}

/// Words of the synthetic catalogue, most frequent first (a Zipf law over
/// this order gives text and queries the skew of real ones).
const WORDS: &[&str] = &[
    "the",
    "guide",
    "complete",
    "history",
    "music",
    "world",
    "art",
    "book",
    "collection",
    "edition",
    "volume",
    "new",
    "story",
    "life",
    "science",
    "introduction",
    "modern",
    "photo",
    "travel",
    "classic",
    "design",
    "early",
    "songs",
    "poems",
    "night",
    "city",
    "river",
    "garden",
    "mountain",
    "ocean",
    "war",
    "peace",
    "love",
    "kitchen",
    "recipes",
    "bread",
    "coffee",
    "tea",
    "wine",
    "journey",
    "north",
    "south",
    "east",
    "west",
    "winter",
    "summer",
    "spring",
    "autumn",
    "light",
    "dark",
    "stone",
    "glass",
    "paper",
    "wood",
    "iron",
    "gold",
    "silver",
    "blue",
    "green",
    "red",
    "black",
    "white",
    "forest",
    "island",
    "desert",
    "storm",
    "rain",
    "snow",
    "fire",
    "water",
    "earth",
    "sky",
    "star",
    "moon",
    "sun",
    "planet",
    "machine",
    "engine",
    "code",
    "data",
    "network",
    "system",
    "theory",
    "practice",
    "field",
    "notes",
    "letters",
    "diary",
    "atlas",
    "map",
    "chart",
    "album",
    "concert",
    "live",
    "recording",
    "piano",
    "guitar",
    "violin",
    "jazz",
    "blues",
    "folk",
    "opera",
    "symphony",
    "film",
    "documentary",
    "lecture",
    "course",
    "lessons",
    "exercises",
    "workbook",
    "manual",
    "handbook",
    "reference",
    "dictionary",
    "grammar",
    "language",
    "french",
    "german",
    "spanish",
    "italian",
    "latin",
    "greek",
    "ancient",
    "medieval",
    "renaissance",
    "baroque",
    "victorian",
    "empire",
    "kingdom",
    "republic",
    "revolution",
    "trade",
    "market",
    "money",
    "bank",
    "law",
    "court",
    "crime",
    "mystery",
    "detective",
    "ghost",
    "dragon",
    "wizard",
    "sword",
    "castle",
    "tower",
    "bridge",
    "road",
    "railway",
    "ship",
    "harbor",
    "lighthouse",
    "village",
    "farm",
    "harvest",
    "animals",
    "birds",
    "fish",
    "horses",
    "dogs",
    "cats",
    "insects",
    "flowers",
    "trees",
    "herbs",
    "medicine",
    "health",
    "body",
    "mind",
    "sleep",
    "dreams",
    "memory",
    "time",
    "clock",
    "calendar",
    "numbers",
    "geometry",
    "algebra",
    "physics",
    "chemistry",
    "biology",
    "astronomy",
    "geology",
    "weather",
    "climate",
    "energy",
    "electric",
    "radio",
    "television",
    "camera",
    "printing",
    "typography",
    "architecture",
    "house",
    "furniture",
    "textiles",
    "fashion",
    "pottery",
    "sculpture",
    "painting",
    "drawing",
    "watercolor",
    "portrait",
    "landscape",
    "abstract",
    "minimal",
    "games",
    "chess",
    "puzzles",
    "sports",
    "football",
    "cycling",
    "sailing",
    "climbing",
    "running",
    "walking",
    "yoga",
    "dance",
    "theatre",
    "comedy",
    "tragedy",
    "novel",
    "short",
    "tales",
    "legends",
    "myths",
    "fables",
    "children",
    "family",
    "friends",
    "school",
    "university",
    "teacher",
    "student",
    "philosophy",
    "ethics",
    "logic",
    "religion",
    "politics",
    "economics",
    "society",
    "culture",
    "festival",
    "holiday",
];

/// Author names for the `author` attribute.
const AUTHORS: &[&str] = &[
    "le guin",
    "tolkien",
    "austen",
    "dickens",
    "tolstoy",
    "woolf",
    "borges",
    "calvino",
    "morrison",
    "achebe",
    "murakami",
    "atwood",
    "orwell",
    "huxley",
    "bradbury",
    "asimov",
    "herbert",
    "pratchett",
    "gaiman",
    "jemisin",
];

/// Tags.
const TAGS: &[&str] = &[
    "ebook",
    "audio",
    "video",
    "scan",
    "lossless",
    "remastered",
    "annotated",
    "illustrated",
    "translated",
    "first-edition",
    "public-domain",
    "hd",
    "4k",
    "pdf",
    "epub",
    "flac",
];

/// Words in the synthetic language.
const VOCABULARY: usize = 20_000;
/// The most frequent words, left out of queries.
const QUERY_SKIP: usize = 50;

/// The word of frequency rank `rank`: a real one for the first few
/// hundred, then made-up syllable words.
fn word(rank: usize) -> String {
    if let Some(w) = WORDS.get(rank) {
        return (*w).to_owned();
    }
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ra", "te", "su", "no", "vi", "de", "pa", "ri", "zo", "ma", "ge", "tu",
        "len", "dor", "ish", "an", "bel",
    ];
    let mut n = rank;
    let mut out = String::new();
    loop {
        out.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
        if n == 0 {
            break;
        }
    }
    out
}

/// Zipf(1.0) sampler over `n` ranks.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                #[allow(clippy::cast_precision_loss)]
                let w = 1.0 / rank as f64;
                total += w;
                total
            })
            .collect::<Vec<_>>();
        Self {
            cumulative: cumulative.into_iter().map(|c| c / total).collect(),
        }
    }
}

impl Distribution<usize> for Zipf {
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let x: f64 = rng.gen();
        self.cumulative
            .partition_point(|c| *c < x)
            .min(self.cumulative.len() - 1)
    }
}

fn words(rng: &mut impl Rng, zipf: &Zipf, vocabulary: &[String], n: usize) -> String {
    (0..n)
        .map(|_| vocabulary[zipf.sample(rng)].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn listing(rng: &mut impl Rng, zipf: &Zipf, vocabulary: &[String]) -> (ListingFields, u64) {
    let title_words = rng.gen_range(2..=6);
    let description_words = rng.gen_range(10..=40);
    let fields = ListingFields {
        title: words(rng, zipf, vocabulary, title_words),
        description: words(rng, zipf, vocabulary, description_words),
        topic: String::new(),
        tags: (0..rng.gen_range(0..=3))
            .map(|_| TAGS[rng.gen_range(0..TAGS.len())].to_owned())
            .collect(),
        attributes: [
            (
                "author".to_owned(),
                AUTHORS[rng.gen_range(0..AUTHORS.len())].to_owned(),
            ),
            ("year".to_owned(), rng.gen_range(1800..2027).to_string()),
        ]
        .into(),
    };
    (fields, rng.gen_range(0..5_000))
}

/// Runs the benchmark and prints the report.
///
/// # Errors
/// When the cluster cannot be reached or the sellers cannot log in.
pub async fn run(args: CatalogueArgs) -> anyhow::Result<()> {
    let client = ClusterClient::load(&args.cluster)?;
    let vocabulary: Arc<Vec<String>> = Arc::new((0..VOCABULARY).map(word).collect());
    let zipf = Arc::new(Zipf::new(VOCABULARY));
    let query_words: Arc<Vec<String>> = Arc::new(vocabulary[QUERY_SKIP..].to_vec());
    let query_zipf = Arc::new(Zipf::new(query_words.len()));
    let pool: Arc<Vec<String>> = Arc::new({
        let mut rng = rand::thread_rng();
        (0..args.query_pool)
            .map(|_| {
                let n = if rng.gen_bool(0.7) { 1 } else { 2 };
                words(&mut rng, &query_zipf, &query_words, n)
            })
            .collect()
    });
    let pool_zipf = Arc::new(Zipf::new(args.query_pool.max(1)));
    let (published, publish_errors, publish_seconds) = if args.listings > 0 {
        publish(&args, &client, &zipf, &vocabulary).await?
    } else {
        (0, 0, 0.0)
    };
    let leader = crate::cluster::leader_id(&client).await?;
    let nodes: Vec<u64> = client
        .node_ids()
        .into_iter()
        .filter(|id| args.include_leader || *id != leader)
        .collect();
    anyhow::ensure!(!nodes.is_empty(), "no follower to search on");
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..CONNECTIONS_PER_NODE {
        let own = ClusterClient::load(&args.cluster)?;
        for id in &nodes {
            channels.push(own.channel(*id)?);
        }
    }
    // Every searcher waits for what was published (read-your-writes).
    let min_index = client
        .admin(leader)?
        .status(agora_proto::admin::StatusRequest {})
        .await
        .map(|s| s.into_inner().applied_index)
        .unwrap_or(0);

    let histogram = Arc::new(Mutex::new(new_histogram()));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let results = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for s in 0..args.searchers {
        let mut catalogue = CatalogueServiceClient::new(channels[s % channels.len()].clone());
        let (pool, pool_zipf) = (pool.clone(), pool_zipf.clone());
        let (histogram, ok, errors, results, zipf, query_words) = (
            histogram.clone(),
            ok.clone(),
            errors.clone(),
            results.clone(),
            query_zipf.clone(),
            query_words.clone(),
        );
        let page = args.page;
        tasks.push(tokio::spawn(async move {
            let mut local = new_histogram();
            let mut first_error = true;
            while Instant::now() < end {
                let text = {
                    let mut rng = rand::thread_rng();
                    if pool.is_empty() {
                        let n = if rng.gen_bool(0.7) { 1 } else { 2 };
                        words(&mut rng, &zipf, &query_words, n)
                    } else {
                        pool[pool_zipf.sample(&mut rng)].clone()
                    }
                };
                let request = SearchRequest {
                    text,
                    limit: page,
                    sort: SearchSort::Relevance.into(),
                    consistency: Some(ReadConsistency {
                        min_index,
                        linearizable: false,
                    }),
                    ..SearchRequest::default()
                };
                let at = Instant::now();
                match catalogue.search(request).await {
                    Ok(reply) => {
                        let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = local.record(us.max(1));
                        ok.fetch_add(1, Ordering::Relaxed);
                        results
                            .fetch_add(reply.into_inner().results.len() as u64, Ordering::Relaxed);
                    }
                    Err(status) => {
                        if first_error {
                            first_error = false;
                            eprintln!("search error: {}", agora_peer::describe_status(&status));
                        }
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = histogram.lock().await.add(&local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = histogram.lock().await;
    let searches = ok.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let report = Report {
        published,
        publish_errors,
        publish_seconds,
        publishes_per_sec: if publish_seconds > 0.0 {
            published as f64 / publish_seconds
        } else {
            0.0
        },
        search_nodes: nodes,
        searchers: args.searchers,
        search_seconds: elapsed,
        searches,
        search_errors: errors.load(Ordering::Relaxed),
        searches_per_sec: searches as f64 / elapsed,
        mean_results: results.load(Ordering::Relaxed) as f64 / searches.max(1) as f64,
        latency_ms: Percentiles::of(&h),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if report.published > 0 {
            println!(
                "publish: {} listings in {:.1} s ({:.0}/s), {} errors",
                report.published,
                report.publish_seconds,
                report.publishes_per_sec,
                report.publish_errors
            );
        }
        println!(
            "search on nodes {:?}: {} searchers, {:.1} s, {} ok, {} errors, {:.0} searches/s, {:.1} results each; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            report.search_nodes,
            report.searchers,
            report.search_seconds,
            report.searches,
            report.search_errors,
            report.searches_per_sec,
            report.mean_results,
            report.latency_ms.p50,
            report.latency_ms.p90,
            report.latency_ms.p99,
            report.latency_ms.p999,
            report.latency_ms.max
        );
    }
    Ok(())
}

/// Registers and logs in the sellers, then publishes `args.listings`
/// listings from `args.publishers` concurrent publishers (the leader
/// batches them into log entries).
async fn publish(
    args: &CatalogueArgs,
    client: &ClusterClient,
    zipf: &Arc<Zipf>,
    vocabulary: &Arc<Vec<String>>,
) -> anyhow::Result<(u64, u64, f64)> {
    let run_id = format!("cat{}", rand::thread_rng().gen_range(0..1_000_000u32));
    let password = b"catalogue load test";
    let mut tokens = Vec::new();
    for i in 0..args.sellers.max(1) {
        let name = format!("{run_id}_{i}");
        let account = account::register(client, &name, password, false)
            .await
            .context("registering the sellers failed")?;
        let session = account::login_after(client, &name, password, account.index)
            .await
            .context("logging the sellers in failed")?;
        tokens.push(session.token);
    }
    let leader = crate::cluster::leader_id(client).await?;
    let mut sellers = Vec::new();
    for token in &tokens {
        let own = ClusterClient::load(&args.cluster)?.with_token(token)?;
        let channel = own.channel(leader)?;
        sellers.push((own, channel));
    }
    let sellers = Arc::new(sellers);
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let total = args.listings;
    let mut tasks = Vec::new();
    for p in 0..args.publishers {
        let (sellers, next, ok, errors, zipf, run_id, vocabulary) = (
            sellers.clone(),
            next.clone(),
            ok.clone(),
            errors.clone(),
            zipf.clone(),
            run_id.clone(),
            vocabulary.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (seller, channel) = &sellers[p % sellers.len()];
            let mut catalogue = CatalogueServiceClient::new(channel.clone());
            let mut first_error = true;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let (fields, price) = listing(&mut rand::thread_rng(), &zipf, &vocabulary);
                let mut root = [0u8; 32];
                root[..8].copy_from_slice(&n.to_le_bytes());
                let request = PublishRequest {
                    request_id: Some(RequestId {
                        client: run_id.clone(),
                        id: n.to_string(),
                    }),
                    fields: Some(fields),
                    size: 1 + n % 10_000_000,
                    chunk_size: 1 << 20,
                    merkle_root: root.to_vec(),
                    price,
                };
                match catalogue.publish(seller.authorize(request)).await {
                    Ok(_) => {
                        let done = ok.fetch_add(1, Ordering::Relaxed) + 1;
                        if done % 10_000 == 0 {
                            eprintln!("published {done} / {total}");
                        }
                    }
                    Err(status) => {
                        if first_error {
                            first_error = false;
                            eprintln!("publish error: {}", agora_peer::describe_status(&status));
                        }
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok((
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

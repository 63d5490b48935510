//! `agora publish | listings | show | edit | reprice | unpublish | search |
//! topics`: the catalogue commands.
//!
//! Each command is a clap `Args` struct with `async fn run(self, &Peer)`.
//! Writes act as the logged-in account and record the index they were
//! applied at; reads (search, a listing, topics) work logged out too, and
//! ask for at least the highest index this peer has seen, so a search
//! right after a publish, from another process and on any node, finds it.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use agora_peer::catalogue::{
    self, attribute_map, hex, parse_attribute, CatalogueError, ListingEdit, NewListing,
    MAX_SEARCH_PAGE,
};
use agora_peer::request_id;
use agora_proto::amount::{format_amount, parse_amount, AmountError};
use agora_proto::market::{Listing, ListingFields, SearchRequest, SearchResult, SearchSort, Topic};
use agora_proto::merkle::{self, ChunkSizeError};
use anyhow::Context as _;
use serde_json::{json, Value};

use crate::cli::account::Peer;
use agora_peer::table::Table;

/// Longest title shown in a table (the whole title is in `show` and JSON).
const TITLE_WIDTH: usize = 48;

/// Files at least this large report their hashing progress in plain lines
/// when stderr is not a terminal (smaller ones hash in a moment).
const PLAIN_PROGRESS_MIN_BYTES: u64 = 64 << 20;

/// A price: `12.50`, `12` or `0` (free). Negative or malformed prices are
/// refused while the command line is parsed, before anything is sent.
pub fn price_arg(text: &str) -> Result<u64, AmountError> {
    parse_amount(text)
}

/// One `name=value` attribute.
fn attribute_arg(text: &str) -> Result<(String, String), CatalogueError> {
    parse_attribute(text)
}

/// A chunk size in bytes: a power of two from 4096 to 4194304.
fn chunk_size_arg(text: &str) -> Result<u32, String> {
    let value: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    merkle::check_chunk_size(value).map_err(|err: ChunkSizeError| err.to_string())
}

/// Put a file up for sale.
#[derive(Debug, clap::Args)]
pub struct Publish {
    /// The file (its path stays on this machine; the cluster learns only
    /// its size and Merkle root).
    file: PathBuf,
    /// Title, 1 to 200 characters.
    #[arg(long)]
    title: String,
    /// Price, like 1.50 (0 for free).
    #[arg(long, value_parser = price_arg, allow_hyphen_values = true)]
    price: u64,
    /// Topic (see `agora topics`); default "general".
    #[arg(long)]
    topic: Option<String>,
    /// A tag; repeat for several (at most 16).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// An attribute, like author=Le Guin; repeat for several (at most 16).
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = attribute_arg)]
    attributes: Vec<(String, String)>,
    /// Description, at most 10,000 characters.
    #[arg(long)]
    description: Option<String>,
    /// Chunk size in bytes, a power of two from 4096 to 4194304.
    #[arg(long, value_parser = chunk_size_arg, default_value_t = merkle::DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
}

impl Publish {
    /// Hashes the file, publishes it and remembers which file it is.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let me = peer.signed_in().await?;
        let new = NewListing {
            path: self.file.clone(),
            chunk_size: self.chunk_size,
            fields: ListingFields {
                title: self.title,
                description: self.description.unwrap_or_default(),
                topic: self.topic.unwrap_or_default(),
                tags: self.tags,
                attributes: attribute_map(self.attributes)?.into_iter().collect(),
            },
            price: self.price,
        };
        // One id for this publication, reused by every retry inside.
        let id = request_id(me.session.username.clone());
        let progress = HashProgress::new(&self.file);
        let published =
            catalogue::publish(&me.client, &me.store, &new, id, progress.callback()).await;
        // End the progress line before anything else is printed, an error
        // included.
        progress.finish();
        let published =
            published.with_context(|| format!("could not publish {}", self.file.display()))?;
        let listing = &published.listing;
        if peer.json() {
            print_json(&json!({
                "listing": listing_json(listing),
                "index": published.index,
                "file": published.path,
                "chunks": published.digest.chunk_count(),
            }));
        } else {
            let chunks = published.digest.chunk_count();
            println!(
                "published listing {}: {:?} for {} ({}, {chunks} chunk{} of {}, root {})",
                listing.id,
                listing.title,
                format_amount(listing.price),
                human_size(listing.size),
                if chunks == 1 { "" } else { "s" },
                human_size(u64::from(listing.chunk_size)),
                short_root(&listing.merkle_root),
            );
        }
        Ok(())
    }
}

/// Show your listings (or another seller's).
#[derive(Debug, clap::Args)]
pub struct Listings {
    /// Include listings taken off sale.
    #[arg(long)]
    all: bool,
    /// Another seller's listings instead of yours.
    #[arg(long)]
    seller: Option<String>,
}

impl Listings {
    /// Lists every page, newest first, with the local file of each of
    /// yours.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let (client, store, seller) = match &self.seller {
            Some(name) => (
                peer.client().clone(),
                peer.existing_store().await?,
                name.clone(),
            ),
            None => {
                let me = peer.signed_in().await?;
                (me.client, Some(me.store), String::new())
            }
        };
        let consistency = catalogue::read_your_writes(store.as_ref()).await?;
        let listings = catalogue::all_seller_listings(&client, &seller, self.all, consistency)
            .await
            .with_context(|| match &self.seller {
                Some(name) => format!("could not read the listings of {name}"),
                None => "could not read your listings".to_owned(),
            })?;
        let mut files = BTreeMap::new();
        if let Some(store) = &store {
            for listing in &listings {
                if let Some(local) = store.listing(listing.id).await? {
                    files.insert(listing.id, local.path);
                }
            }
        }
        if peer.json() {
            let listings: Vec<Value> = listings
                .iter()
                .map(|listing| {
                    let mut value = listing_json(listing);
                    value["file"] = json!(files.get(&listing.id));
                    value
                })
                .collect();
            print_json(&json!({ "listings": listings }));
            return Ok(());
        }
        if listings.is_empty() {
            println!(
                "{}",
                match (&self.seller, self.all) {
                    (Some(name), _) => format!("{name} has no listings on sale"),
                    (None, false) => "you have no listings on sale; publish one with `agora publish FILE --title T --price P`".to_owned(),
                    (None, true) => "you have no listings".to_owned(),
                }
            );
            return Ok(());
        }
        let mut headers = vec!["ID", "TITLE", "PRICE", "SIZE", "TOPIC", "ONLINE"];
        if self.all {
            headers.push("ON SALE");
        }
        headers.push("FILE");
        let mut table = Table::new(&headers)
            .align_right(0)
            .align_right(2)
            .align_right(3);
        for listing in &listings {
            let mut row = vec![
                listing.id.to_string(),
                shorten(&listing.title, TITLE_WIDTH),
                format_amount(listing.price),
                human_size(listing.size),
                listing.topic.clone(),
                yes_no(listing.seller_online),
            ];
            if self.all {
                row.push(yes_no(listing.active));
            }
            row.push(
                files
                    .get(&listing.id)
                    .map(|path| path.display().to_string())
                    .unwrap_or_default(),
            );
            table.row(row);
        }
        print!("{}", table.render());
        Ok(())
    }
}

/// Show one listing in full.
#[derive(Debug, clap::Args)]
pub struct Show {
    /// The listing's id.
    id: u64,
}

impl Show {
    /// Reads it from a follower (at least as fresh as this peer's writes).
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let store = peer.existing_store().await?;
        let consistency = catalogue::read_your_writes(store.as_ref()).await?;
        let listing = catalogue::get_listing(peer.client(), self.id, consistency)
            .await
            .with_context(|| format!("could not read listing {}", self.id))?;
        let file = match &store {
            Some(store) => store.listing(self.id).await?.map(|local| local.path),
            None => None,
        };
        if peer.json() {
            let mut value = listing_json(&listing);
            value["file"] = json!(file);
            print_json(&json!({ "listing": value }));
            return Ok(());
        }
        let mut lines: Vec<(&str, String)> = vec![
            ("id", listing.id.to_string()),
            ("title", listing.title.clone()),
            ("price", format_amount(listing.price)),
            ("seller", listing.seller.clone()),
            (
                "reputation",
                format!(
                    "{} sale(s), {} lost dispute(s)",
                    listing.seller_sales, listing.seller_strikes
                ),
            ),
            ("online", yes_no(listing.seller_online)),
            ("on sale", yes_no(listing.active)),
            ("topic", listing.topic.clone()),
            ("tags", listing.tags.join(", ")),
        ];
        for (name, value) in sorted_attributes(&listing) {
            lines.push(("attribute", format!("{name}={value}")));
        }
        lines.extend([
            (
                "size",
                format!("{} ({} bytes)", human_size(listing.size), listing.size),
            ),
            (
                "chunks",
                format!(
                    "{} of {}",
                    merkle::chunk_count(listing.size, listing.chunk_size),
                    human_size(u64::from(listing.chunk_size))
                ),
            ),
            ("merkle root", hex(&listing.merkle_root)),
        ]);
        if let Some(path) = &file {
            lines.push(("file", path.display().to_string()));
        }
        for (label, value) in lines {
            println!("{label:<11}  {value}");
        }
        if !listing.description.is_empty() {
            println!();
            println!("{}", listing.description);
        }
        Ok(())
    }
}

/// Change a listing's title, description, topic, tags or attributes.
#[derive(Debug, clap::Args)]
pub struct Edit {
    /// The listing's id.
    id: u64,
    /// New title.
    #[arg(long)]
    title: Option<String>,
    /// New description.
    #[arg(long)]
    description: Option<String>,
    /// New topic.
    #[arg(long)]
    topic: Option<String>,
    /// New tags, replacing the old ones; repeat for several.
    #[arg(long = "tag", value_name = "TAG", conflicts_with = "clear_tags")]
    tags: Vec<String>,
    /// Remove every tag.
    #[arg(long)]
    clear_tags: bool,
    /// New attributes (name=value), replacing the old ones; repeat for
    /// several.
    #[arg(
        long = "attr",
        value_name = "NAME=VALUE",
        value_parser = attribute_arg,
        conflicts_with = "clear_attrs"
    )]
    attributes: Vec<(String, String)>,
    /// Remove every attribute.
    #[arg(long)]
    clear_attrs: bool,
}

impl Edit {
    /// Sends only what changes.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let id = self.id;
        let edit = ListingEdit {
            title: self.title,
            description: self.description,
            topic: self.topic,
            tags: (!self.tags.is_empty() || self.clear_tags).then_some(self.tags),
            attributes: if self.attributes.is_empty() && !self.clear_attrs {
                None
            } else {
                Some(attribute_map(self.attributes)?)
            },
        };
        // Refuse an empty edit before asking for the session.
        catalogue::check_edit(&edit)?;
        let me = peer.signed_in().await?;
        let request = request_id(me.session.username.clone());
        let reply = catalogue::edit(&me.client, &me.store, id, &edit, request)
            .await
            .with_context(|| format!("could not edit listing {id}"))?;
        print_write(peer, &reply.listing, reply.index, |listing| {
            format!("edited listing {}: {:?}", listing.id, listing.title)
        });
        Ok(())
    }
}

/// Change a listing's price.
#[derive(Debug, clap::Args)]
pub struct Reprice {
    /// The listing's id.
    id: u64,
    /// New price, like 1.50 (0 for free).
    #[arg(value_parser = price_arg, allow_hyphen_values = true)]
    price: u64,
}

impl Reprice {
    /// Sets the price on the leader.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let me = peer.signed_in().await?;
        let request = request_id(me.session.username.clone());
        let reply = catalogue::reprice(&me.client, &me.store, self.id, self.price, request)
            .await
            .with_context(|| {
                format!(
                    "could not set the price of listing {} to {}",
                    self.id,
                    format_amount(self.price)
                )
            })?;
        print_write(peer, &reply.listing, reply.index, |listing| {
            format!(
                "listing {} now costs {}",
                listing.id,
                format_amount(listing.price)
            )
        });
        Ok(())
    }
}

/// Take a listing off sale.
#[derive(Debug, clap::Args)]
pub struct Unpublish {
    /// The listing's id.
    id: u64,
}

impl Unpublish {
    /// Takes it off sale on the leader.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let me = peer.signed_in().await?;
        let request = request_id(me.session.username.clone());
        let reply = catalogue::unpublish(&me.client, &me.store, self.id, request)
            .await
            .with_context(|| format!("could not unpublish listing {}", self.id))?;
        print_write(peer, &reply.listing, reply.index, |listing| {
            format!("listing {} ({:?}) is off sale", listing.id, listing.title)
        });
        Ok(())
    }
}

/// How search results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Best match first (newest first without text).
    Relevance,
    /// Cheapest first.
    Price,
    /// Most expensive first.
    PriceDesc,
    /// Newest first.
    New,
}

impl From<Sort> for SearchSort {
    fn from(sort: Sort) -> Self {
        match sort {
            Sort::Relevance => Self::Relevance,
            Sort::Price => Self::Price,
            Sort::PriceDesc => Self::PriceDesc,
            Sort::New => Self::Newest,
        }
    }
}

/// Find listings on sale.
#[derive(Debug, clap::Args)]
pub struct Search {
    /// Words that must all appear (in the title, description, tags or
    /// attributes); none: browse everything.
    text: Vec<String>,
    /// Only this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only prices at or above, like 1.00.
    #[arg(long, value_parser = price_arg, allow_hyphen_values = true)]
    min_price: Option<u64>,
    /// Only prices at or below, like 5.00.
    #[arg(long, value_parser = price_arg, allow_hyphen_values = true)]
    max_price: Option<u64>,
    /// Only this seller.
    #[arg(long)]
    seller: Option<String>,
    /// Only sellers online now.
    #[arg(long)]
    online: bool,
    /// Order of the results.
    #[arg(long, value_enum, default_value_t = Sort::Relevance)]
    sort: Sort,
    /// Results per page (1 to 100; default 20).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SEARCH_PAGE)))]
    limit: Option<u32>,
    /// Continue where a previous page ended (it prints the cursor).
    #[arg(long)]
    cursor: Option<String>,
}

impl Search {
    /// The request this search sends (without its freshness).
    fn request(&self) -> anyhow::Result<SearchRequest> {
        if let (Some(min), Some(max)) = (self.min_price, self.max_price) {
            if min > max {
                anyhow::bail!(
                    "the lowest price {} is above the highest {}; swap them",
                    format_amount(min),
                    format_amount(max)
                );
            }
        }
        let mut request = SearchRequest {
            text: self.text.join(" "),
            topic: self.topic.clone().unwrap_or_default(),
            min_price: self.min_price,
            max_price: self.max_price,
            seller: self.seller.clone().unwrap_or_default(),
            online_only: self.online,
            limit: self.limit.unwrap_or(0),
            cursor: self.cursor.clone().unwrap_or_default(),
            ..SearchRequest::default()
        };
        request.set_sort(self.sort.into());
        Ok(request)
    }

    /// Asks a follower for one page.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let mut request = self.request()?;
        let store = peer.existing_store().await?;
        request.consistency = Some(catalogue::read_your_writes(store.as_ref()).await?);
        let reply = catalogue::search(peer.client(), &request)
            .await
            .context("could not search the catalogue")?;
        let next_cursor = (!reply.next_cursor.is_empty()).then_some(&reply.next_cursor);
        if peer.json() {
            let results: Vec<Value> = reply.results.iter().filter_map(result_json).collect();
            print_json(&json!({
                "results": results,
                "next_cursor": next_cursor,
                "applied_index": reply.applied_index,
            }));
            return Ok(());
        }
        if reply.results.is_empty() {
            println!(
                "{}",
                if self.cursor.is_some() {
                    "no more results"
                } else {
                    "nothing found"
                }
            );
            return Ok(());
        }
        let mut table = Table::new(&["ID", "TITLE", "PRICE", "SIZE", "SELLER", "ONLINE", "TOPIC"])
            .align_right(0)
            .align_right(2)
            .align_right(3);
        for listing in reply.results.iter().filter_map(|r| r.listing.as_ref()) {
            table.row(vec![
                listing.id.to_string(),
                shorten(&listing.title, TITLE_WIDTH),
                format_amount(listing.price),
                human_size(listing.size),
                listing.seller.clone(),
                yes_no(listing.seller_online),
                listing.topic.clone(),
            ]);
        }
        print!("{}", table.render());
        if let Some(cursor) = next_cursor {
            println!("more: {} --cursor {cursor}", self.command_line());
        }
        Ok(())
    }

    /// This search as a command line (without its cursor), to print how
    /// to ask for the next page.
    fn command_line(&self) -> String {
        let mut line = String::from("agora search");
        for word in &self.text {
            line.push(' ');
            line.push_str(&shell_word(word));
        }
        let mut option = |name: &str, value: &str| {
            line.push_str(&format!(" --{name} {}", shell_word(value)));
        };
        if let Some(topic) = &self.topic {
            option("topic", topic);
        }
        if let Some(min) = self.min_price {
            option("min-price", &format_amount(min));
        }
        if let Some(max) = self.max_price {
            option("max-price", &format_amount(max));
        }
        if let Some(seller) = &self.seller {
            option("seller", seller);
        }
        if self.sort != Sort::Relevance {
            let sort = match self.sort {
                Sort::Relevance => "relevance",
                Sort::Price => "price",
                Sort::PriceDesc => "price-desc",
                Sort::New => "new",
            };
            option("sort", sort);
        }
        if let Some(limit) = self.limit {
            option("limit", &limit.to_string());
        }
        if self.online {
            line.push_str(" --online");
        }
        line
    }
}

/// Show the topics a listing may be filed under.
#[derive(Debug, clap::Args)]
pub struct Topics {}

impl Topics {
    /// Reads them from a follower.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let store = peer.existing_store().await?;
        let consistency = catalogue::read_your_writes(store.as_ref()).await?;
        let topics = catalogue::topics(peer.client(), consistency)
            .await
            .context("could not read the topics")?;
        if peer.json() {
            print_json(&json!({ "topics": topics.iter().map(topic_json).collect::<Vec<_>>() }));
            return Ok(());
        }
        print!("{}", topics_table(&topics));
        Ok(())
    }
}

/// Topics as a table, by name.
pub fn topics_table(topics: &[Topic]) -> String {
    let mut table = Table::new(&["TOPIC", "LISTINGS", "DESCRIPTION"]).align_right(1);
    for topic in topics {
        table.row(vec![
            topic.name.clone(),
            topic.listings.to_string(),
            topic.description.clone(),
        ]);
    }
    table.render()
}

/// A topic as JSON.
pub fn topic_json(topic: &Topic) -> Value {
    json!({
        "name": topic.name,
        "description": topic.description,
        "listings": topic.listings,
    })
}

/// Prints a listing write's outcome.
fn print_write(
    peer: &Peer,
    listing: &Option<Listing>,
    index: u64,
    text: impl FnOnce(&Listing) -> String,
) {
    // The library checked that a write's reply carries its listing.
    let Some(listing) = listing else { return };
    if peer.json() {
        print_json(&json!({"listing": listing_json(listing), "index": index}));
    } else {
        println!("{}", text(listing));
    }
}

/// One JSON document on stdout.
fn print_json(value: &Value) {
    println!("{value}");
}

/// A listing as JSON: prices as decimals (and in cents), the root as hex.
pub fn listing_json(listing: &Listing) -> Value {
    let attributes: serde_json::Map<String, Value> = sorted_attributes(listing)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), json!(value)))
        .collect();
    json!({
        "id": listing.id,
        "title": listing.title,
        "price": format_amount(listing.price),
        "price_cents": listing.price,
        "seller": listing.seller,
        "seller_id": listing.seller_id,
        "online": listing.seller_online,
        "seller_sales": listing.seller_sales,
        "seller_strikes": listing.seller_strikes,
        "size": listing.size,
        "chunk_size": listing.chunk_size,
        "topic": listing.topic,
        "tags": listing.tags,
        "attributes": attributes,
        "description": listing.description,
        "merkle_root": hex(&listing.merkle_root),
        "active": listing.active,
        "created_ms": listing.created_ms,
        "updated_ms": listing.updated_ms,
    })
}

/// A search hit as JSON: the listing and its score.
fn result_json(result: &SearchResult) -> Option<Value> {
    let mut value = listing_json(result.listing.as_ref()?);
    value["score"] = json!(result.score);
    Some(value)
}

/// A listing's attributes by name (the wire has them unordered).
fn sorted_attributes(listing: &Listing) -> BTreeMap<&str, &str> {
    listing
        .attributes
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

/// `text` cut to `width` characters, with an ellipsis when cut.
fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// The first bytes of a root, enough to recognise it.
fn short_root(root: &[u8]) -> String {
    hex(&root[..root.len().min(8)])
}

/// A word as the shell reads it back: quoted when it has anything but
/// plain characters.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.,:/@+=".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `4.0 MiB`, `1.2 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 1024u128;
    let mut name = UNITS[0];
    for next in &UNITS[1..] {
        if u128::from(bytes) < unit * 1024 {
            break;
        }
        unit *= 1024;
        name = next;
    }
    // Tenths, rounded to nearest, in integers (no float formatting).
    let tenths = (u128::from(bytes) * 10 + unit / 2) / unit;
    format!("{}.{} {name}", tenths / 10, tenths % 10)
}

/// Hashing progress on stderr: a line rewritten in place on a terminal,
/// a plain line every quarter for a large file otherwise.
struct HashProgress {
    name: String,
    terminal: bool,
    /// Whether an in-place line was drawn (and so needs ending). Shared
    /// with the callback, which runs on the blocking pool.
    drawn: Arc<AtomicBool>,
}

impl HashProgress {
    fn new(path: &std::path::Path) -> Self {
        Self {
            name: path.display().to_string(),
            terminal: std::io::stderr().is_terminal(),
            drawn: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The callback hashing calls with (bytes hashed, file size).
    fn callback(&self) -> impl FnMut(u64, u64) + Send + 'static {
        let name = self.name.clone();
        let terminal = self.terminal;
        let drawn = self.drawn.clone();
        let mut last_step = None;
        move |done: u64, total: u64| {
            let percent = done.saturating_mul(100) / total.max(1);
            let mut stderr = std::io::stderr().lock();
            if terminal {
                if last_step != Some(percent) {
                    last_step = Some(percent);
                    drawn.store(true, Ordering::Relaxed);
                    let _ = write!(
                        stderr,
                        "\rhashing {name}: {percent:>3}% of {}",
                        human_size(total)
                    );
                    let _ = stderr.flush();
                }
            } else if total >= PLAIN_PROGRESS_MIN_BYTES {
                let quarter = percent / 25;
                if quarter > 0 && last_step != Some(quarter) {
                    last_step = Some(quarter);
                    let _ = writeln!(stderr, "hashing {name}: {}%", quarter * 25);
                }
            }
        }
    }

    /// Ends the in-place line, if one was drawn.
    fn finish(&self) {
        if self.drawn.load(Ordering::Relaxed) {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prices() {
        assert_eq!(price_arg("1.50"), Ok(150));
        assert_eq!(price_arg("0"), Ok(0));
        assert_eq!(price_arg("12"), Ok(1200));
        for bad in ["-1", "-0.50", "1.234", "abc", "", "1e3"] {
            assert!(price_arg(bad).is_err(), "{bad:?}");
        }
        assert!(price_arg("-1")
            .expect_err("negative")
            .to_string()
            .contains("is not an amount"));
    }

    #[test]
    fn parses_chunk_sizes() {
        assert_eq!(chunk_size_arg("4096"), Ok(4096));
        assert_eq!(chunk_size_arg("1048576"), Ok(1 << 20));
        assert!(chunk_size_arg("5000").is_err());
        assert!(chunk_size_arg("1M").is_err());
        assert!(chunk_size_arg("8388608").is_err());
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(4 << 20), "4.0 MiB");
        assert_eq!(human_size((1 << 30) + (1 << 29)), "1.5 GiB");
        assert_eq!(human_size(1 << 40), "1.0 TiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn shortens_titles() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("exactly10!", 10), "exactly10!");
        assert_eq!(shorten("a longer title", 10), "a longer …");
        assert_eq!(shorten("ééééééééééé", 5).chars().count(), 5);
    }

    #[test]
    fn listing_json_has_the_documented_shape() {
        let mut listing = Listing {
            id: 7,
            seller: "ursula".into(),
            title: "A Wizard of Earthsea".into(),
            topic: "books".into(),
            tags: vec!["fantasy".into()],
            size: 1234,
            chunk_size: 4096,
            merkle_root: vec![0xab; 32],
            price: 150,
            active: true,
            seller_online: true,
            ..Listing::default()
        };
        listing.attributes.insert("author".into(), "Le Guin".into());
        let value = listing_json(&listing);
        assert_eq!(value["id"], 7);
        assert_eq!(value["price"], "1.50");
        assert_eq!(value["price_cents"], 150);
        assert_eq!(value["seller"], "ursula");
        assert_eq!(value["online"], true);
        assert_eq!(value["size"], 1234);
        assert_eq!(value["tags"], json!(["fantasy"]));
        assert_eq!(value["attributes"], json!({"author": "Le Guin"}));
        assert_eq!(value["merkle_root"], "ab".repeat(32));
        let hit = result_json(&SearchResult {
            listing: Some(listing),
            score: -1.5,
        })
        .expect("a listing");
        assert_eq!(hit["score"], -1.5);
    }

    #[test]
    fn search_prints_how_to_continue() {
        let search = Search {
            text: vec!["earth".into(), "sea's".into()],
            topic: Some("books".into()),
            min_price: Some(100),
            max_price: None,
            seller: None,
            online: true,
            sort: Sort::PriceDesc,
            limit: Some(5),
            cursor: Some("abc".into()),
        };
        assert_eq!(
            search.command_line(),
            r"agora search earth 'sea'\''s' --topic books --min-price 1.00 --sort price-desc --limit 5 --online"
        );
        let request = search.request().expect("valid");
        assert_eq!(request.text, "earth sea's");
        assert_eq!(request.sort(), SearchSort::PriceDesc);
        assert_eq!(request.cursor, "abc");
        let upside_down = Search {
            max_price: Some(50),
            ..search
        };
        assert!(upside_down.request().is_err());
    }
}

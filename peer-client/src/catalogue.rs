//! The catalogue from the client's side: hashing a file into the Merkle
//! root a listing commits to, publishing, editing, repricing and
//! unpublishing listings, the seller's own listings, single listings,
//! topics and search; and, for operators, adding and removing topics.
//!
//! Writes go to the leader through [`ClusterClient::call_leader`] with one
//! request id per logical write, so a write that outlives a leader crash is
//! applied once. The index each write was applied at goes into the peer's
//! local database ([`PeerStore::bump_max_seen_index`]); reads pass it back
//! as `min_index` ([`read_your_writes`]), so `agora search` run right after
//! `agora publish`, in another process and on any node, finds the listing.
//!
//! Reads go to followers first ([`ClusterClient::call_followers_first`]):
//! the design has followers serve search, which keeps it off the leader
//! that takes every write.
//!
//! The cluster never learns where a file lives: [`publish`] sends its size,
//! chunk size and Merkle root, and remembers the path locally
//! ([`LocalListing`]) for the peer that will serve it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use agora_proto::admin::{AddTopicRequest, AdminRequestId, LedgerWriteReply, RemoveTopicRequest};
use agora_proto::amount::{format_amount, AmountError, MAX_AMOUNT};
use agora_proto::listing;
use agora_proto::market::{
    AttributeMap, EditListingRequest, GetListingRequest, Listing, ListingFields, ListingReply,
    PublishRequest, ReadConsistency, RepriceRequest, RequestId, SearchReply, SearchRequest,
    SellerListingsReply, SellerListingsRequest, TagList, Topic, TopicsRequest, UnpublishRequest,
};
use agora_proto::merkle::{self, ChunkSizeError, Hash, MerkleBuilder};
use tonic::{Code, Response, Status};

use crate::account::now_ms;
use crate::{ClientError, ClusterClient, LocalListing, PeerStore, StoreError};

pub use agora_proto::listing::{
    MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE_CHARS, MAX_DESCRIPTION_CHARS,
    MAX_FILE_SIZE, MAX_TAGS, MAX_TAG_CHARS, MAX_TITLE_CHARS,
};
/// The most search results the cluster returns in one page.
pub const MAX_SEARCH_PAGE: u32 = 100;
/// The most listings the cluster returns in one page of a seller's.
pub const MAX_LISTINGS_PAGE: u32 = 500;

/// Most pages [`all_seller_listings`] follows before deciding that the
/// cluster's cursors do not end (500 listings a page: half a million).
const MAX_PAGES: usize = 1_000;

/// A problem publishing or changing a listing.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The file could not be opened, inspected or read.
    #[error("could not read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The path is a directory or something else that is not a file.
    #[error("{} is not a regular file; publish a file", .0.display())]
    NotAFile(PathBuf),
    /// A file of zero bytes.
    #[error("{} is empty; there is nothing to sell", .0.display())]
    EmptyFile(PathBuf),
    /// A file above [`MAX_FILE_SIZE`].
    #[error("{} is larger than 1 TiB, the most a listing may describe", .0.display())]
    FileTooLarge(PathBuf),
    /// The file's size or modification time changed while it was read, so
    /// the root may describe no version of it.
    #[error(
        "{} changed while it was being hashed; publish it again once nothing is writing to it",
        .0.display()
    )]
    FileChanged(PathBuf),
    /// A chunk size that is not a power of two from 4 KiB to 4 MiB.
    #[error(transparent)]
    ChunkSize(#[from] ChunkSizeError),
    /// A title, description, tag or attribute the cluster would refuse,
    /// caught before the file is hashed.
    #[error("{0}")]
    Invalid(String),
    /// A price above the largest amount.
    #[error(transparent)]
    Amount(#[from] AmountError),
    /// The cluster refused the write or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The peer's local database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listing is on the cluster, but this peer could not record which
    /// file it is (so it could not serve it).
    #[error(
        "listing {listing_id} is published, but this peer could not record which file it is ({reason}); unpublish it with `agora unpublish {listing_id}` and publish again"
    )]
    Unrecorded {
        /// The new listing.
        listing_id: u64,
        /// Why it could not be recorded. Part of the message rather than a
        /// `source`, so that the advice comes last.
        reason: StoreError,
    },
    /// Hashing stopped before it finished (the runtime is shutting down).
    #[error("hashing the file was interrupted")]
    Interrupted,
}

impl CatalogueError {
    /// The gRPC code this error amounts to, when it has one: the server's
    /// own for a refused call, `INVALID_ARGUMENT` for what breaks the
    /// listing rules.
    #[must_use]
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Client(err) => err.code(),
            Self::EmptyFile(_)
            | Self::FileTooLarge(_)
            | Self::ChunkSize(_)
            | Self::Invalid(_)
            | Self::Amount(_) => Some(Code::InvalidArgument),
            _ => None,
        }
    }
}

impl From<Status> for CatalogueError {
    fn from(status: Status) -> Self {
        Self::Client(ClientError::Rpc(status))
    }
}

/// What a listing commits to about its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    /// File size in bytes (more than 0).
    pub size: u64,
    /// Chunk size in bytes; every chunk has this size except possibly the
    /// last.
    pub chunk_size: u32,
    /// BLAKE3 Merkle root over the plaintext chunks.
    pub merkle_root: Hash,
}

impl FileDigest {
    /// How many chunks the file has.
    #[must_use]
    pub fn chunk_count(&self) -> u64 {
        merkle::chunk_count(self.size, self.chunk_size)
    }
}

/// Hashes the file at `path` into its [`FileDigest`]: reads it once, in
/// `chunk_size` pieces through one fixed buffer, so memory stays constant
/// whatever the file's size. Blocking: from async code, run it on the
/// blocking pool (as [`publish`] does).
///
/// # Errors
/// [`CatalogueError::ChunkSize`] for a chunk size out of range,
/// [`CatalogueError::EmptyFile`] for an empty file, and the file's own
/// problems (missing, unreadable, not a file, changed while read).
pub fn hash_file(path: &Path, chunk_size: u32) -> Result<FileDigest, CatalogueError> {
    hash_file_with_progress(path, chunk_size, |_, _| {})
}

/// [`hash_file`], calling `progress(bytes hashed, file size)` after each
/// chunk (for a progress bar).
///
/// # Errors
/// As [`hash_file`].
pub fn hash_file_with_progress(
    path: &Path,
    chunk_size: u32,
    progress: impl FnMut(u64, u64),
) -> Result<FileDigest, CatalogueError> {
    hash_snapshot(path, chunk_size, progress).map(|(digest, _)| digest)
}

/// [`hash_file_with_progress`], also returning the file's modification
/// time (Unix ms), which is checked not to change while the file is read.
fn hash_snapshot(
    path: &Path,
    chunk_size: u32,
    mut progress: impl FnMut(u64, u64),
) -> Result<(FileDigest, Option<u64>), CatalogueError> {
    let chunk_size = merkle::check_chunk_size(chunk_size)?;
    let read_error = |source| CatalogueError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let before = file.metadata().map_err(read_error)?;
    if !before.is_file() {
        return Err(CatalogueError::NotAFile(path.to_path_buf()));
    }
    let size = before.len();
    if size == 0 {
        return Err(CatalogueError::EmptyFile(path.to_path_buf()));
    }
    if size > MAX_FILE_SIZE {
        return Err(CatalogueError::FileTooLarge(path.to_path_buf()));
    }
    let modified = modified_ms(&before);

    let buffer_len = usize::try_from(chunk_size).map_err(|_| ChunkSizeError(chunk_size))?;
    let mut buffer = vec![0u8; buffer_len];
    let mut builder = MerkleBuilder::new();
    let mut done: u64 = 0;
    loop {
        let filled = fill(&mut file, &mut buffer).map_err(read_error)?;
        if filled == 0 {
            break;
        }
        builder.push(merkle::leaf_hash(&buffer[..filled]));
        done += filled as u64;
        progress(done.min(size), size);
        if filled < buffer.len() {
            break;
        }
    }
    let after = file.metadata().map_err(read_error)?;
    if done != size || after.len() != size || modified_ms(&after) != modified {
        return Err(CatalogueError::FileChanged(path.to_path_buf()));
    }
    let merkle_root = builder
        .finish()
        .ok_or_else(|| CatalogueError::EmptyFile(path.to_path_buf()))?;
    Ok((
        FileDigest {
            size,
            chunk_size,
            merkle_root,
        },
        modified,
    ))
}

/// Reads into `buffer` until it is full or the file ends; returns how many
/// bytes it holds (less than its length only at the end of the file).
pub(crate) fn fill(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// A file's modification time in Unix ms, when the file system has one.
pub(crate) fn modified_ms(metadata: &std::fs::Metadata) -> Option<u64> {
    let since_epoch = metadata.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since_epoch.as_millis()).ok()
}

/// Checks what the seller says about a file against the cluster's rules,
/// so a mistake is reported before a large file is hashed. The cluster
/// checks again (and is the authority: it also trims and lower-cases).
///
/// # Errors
/// [`CatalogueError::Invalid`] with a sentence saying what is wrong.
pub fn check_fields(fields: &ListingFields) -> Result<(), CatalogueError> {
    check_title(&fields.title)?;
    check_description(&fields.description)?;
    check_tags(&fields.tags)?;
    check_attributes(fields.attributes.iter())
}

/// Checks everything an edit changes.
///
/// # Errors
/// As [`check_fields`], and when the edit changes nothing.
pub fn check_edit(edit: &ListingEdit) -> Result<(), CatalogueError> {
    if edit.is_empty() {
        return Err(invalid(
            "nothing to change; give a new title, description, topic, tags or attributes",
        ));
    }
    if let Some(title) = &edit.title {
        check_title(title)?;
    }
    if let Some(description) = &edit.description {
        check_description(description)?;
    }
    if let Some(tags) = &edit.tags {
        check_tags(tags)?;
    }
    if let Some(attributes) = &edit.attributes {
        check_attributes(attributes.iter())?;
    }
    Ok(())
}

fn invalid(sentence: impl Into<String>) -> CatalogueError {
    CatalogueError::Invalid(sentence.into())
}

// The cluster's own rules (agora_proto::listing), run here before a large
// file is hashed for nothing.

fn check_title(title: &str) -> Result<(), CatalogueError> {
    listing::title(title).map(drop).map_err(invalid)
}

fn check_description(description: &str) -> Result<(), CatalogueError> {
    listing::description(description).map(drop).map_err(invalid)
}

fn check_tags(tags: &[String]) -> Result<(), CatalogueError> {
    listing::tags(tags).map(drop).map_err(invalid)
}

fn check_attributes<'a>(
    attributes: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), CatalogueError> {
    let mut map = BTreeMap::new();
    for (key, value) in attributes {
        if map.insert(key.clone(), value.clone()).is_some() {
            return Err(invalid(format!("the attribute {key:?} is given twice")));
        }
    }
    listing::attributes(&map).map(drop).map_err(invalid)
}

fn is_attribute_name(name: &str) -> bool {
    listing::attribute_name(name).is_ok_and(|n| n == name)
}

/// Parses one attribute given as `name=value` (the value may contain `=`
/// and spaces; the name is trimmed and lower-cased).
///
/// # Errors
/// [`CatalogueError::Invalid`] without `=`, or with a name that is not 1 to
/// 32 of `a-z`, `0-9`, `_`, `-`.
pub fn parse_attribute(text: &str) -> Result<(String, String), CatalogueError> {
    let (name, value) = text.split_once('=').ok_or_else(|| {
        invalid(format!(
            "an attribute is written name=value, like author=Le Guin (got {text:?})"
        ))
    })?;
    let name = name.trim().to_lowercase();
    if !is_attribute_name(&name) {
        return Err(invalid(format!(
            "an attribute name has 1 to {MAX_ATTRIBUTE_KEY} of the characters a-z, 0-9, '_' and '-' (got {text:?})"
        )));
    }
    Ok((name, value.trim().to_owned()))
}

/// Gathers attributes given one by one into a map.
///
/// # Errors
/// [`CatalogueError::Invalid`] when a name is given twice.
pub fn attribute_map(
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, CatalogueError> {
    let mut map = BTreeMap::new();
    for (name, value) in pairs {
        if map.contains_key(&name) {
            return Err(invalid(format!("the attribute {name:?} is given twice")));
        }
        map.insert(name, value);
    }
    Ok(map)
}

/// Refuses a price above [`MAX_AMOUNT`] (0 is a free listing).
fn check_price(price: u64) -> Result<(), CatalogueError> {
    if price > MAX_AMOUNT {
        return Err(AmountError::TooLarge(format_amount(price)).into());
    }
    Ok(())
}

/// A file to put up for sale.
#[derive(Debug, Clone, PartialEq)]
pub struct NewListing {
    /// The file.
    pub path: PathBuf,
    /// How to cut it (see [`merkle::DEFAULT_CHUNK_SIZE`]).
    pub chunk_size: u32,
    /// What the seller says about it.
    pub fields: ListingFields,
    /// Price in cents; 0 = free.
    pub price: u64,
}

/// A listing that was just published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The listing as the cluster stored it.
    pub listing: Listing,
    /// Log index of the publication.
    pub index: u64,
    /// What was sent about the file.
    pub digest: FileDigest,
    /// The file's absolute path, as remembered locally.
    pub path: PathBuf,
}

/// Hashes `new.path`, publishes it (the session's account is the seller)
/// and remembers locally which file the listing is. `progress(bytes hashed,
/// file size)` is called from the blocking pool while the file is hashed.
/// Reuse `request_id` to retry the same publication.
///
/// # Errors
/// The listing rules ([`check_fields`]), the file's problems (see
/// [`hash_file`]), the cluster's refusals ([`CatalogueError::Client`]: e.g.
/// `NOT_FOUND` for an unknown topic, `UNAUTHENTICATED` without a
/// session), or [`CatalogueError::Unrecorded`] when the listing exists but
/// could not be recorded here.
pub async fn publish(
    client: &ClusterClient,
    store: &PeerStore,
    new: &NewListing,
    request_id: RequestId,
    progress: impl FnMut(u64, u64) + Send + 'static,
) -> Result<Published, CatalogueError> {
    merkle::check_chunk_size(new.chunk_size)?;
    check_fields(&new.fields)?;
    check_price(new.price)?;
    let path = std::fs::canonicalize(&new.path).map_err(|source| CatalogueError::Read {
        path: new.path.clone(),
        source,
    })?;
    let (digest, modified) = {
        let path = path.clone();
        let chunk_size = new.chunk_size;
        tokio::task::spawn_blocking(move || hash_snapshot(&path, chunk_size, progress))
            .await
            .map_err(|_| CatalogueError::Interrupted)??
    };
    let request = PublishRequest {
        request_id: Some(request_id),
        fields: Some(new.fields.clone()),
        size: digest.size,
        chunk_size: digest.chunk_size,
        merkle_root: digest.merkle_root.to_vec(),
        price: new.price,
    };
    let reply = client
        .call_leader(|channel| {
            let request = request.clone();
            let mut catalogue = client.catalogue_on(channel);
            async move { catalogue.publish(request).await.map(Response::into_inner) }
        })
        .await
        .map_err(ClientError::from)?;
    let index = reply.index;
    let listing = listing_of(reply)?;
    if listing.merkle_root != digest.merkle_root || listing.size != digest.size {
        return Err(ClientError::Protocol(format!(
            "listing {} does not describe the file that was published",
            listing.id
        ))
        .into());
    }
    let local = LocalListing {
        listing_id: listing.id,
        seller_id: listing.seller_id,
        path: path.clone(),
        size: digest.size,
        chunk_size: digest.chunk_size,
        merkle_root: digest.merkle_root,
        modified_ms: modified,
        published_at_ms: now_ms(),
        active: true,
    };
    let recorded = async {
        store.bump_max_seen_index(index).await?;
        remember_leader(client, store).await?;
        store.save_listing(&local).await
    };
    recorded
        .await
        .map_err(|reason| CatalogueError::Unrecorded {
            listing_id: listing.id,
            reason,
        })?;
    Ok(Published {
        listing,
        index,
        digest,
        path,
    })
}

/// What an edit changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingEdit {
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New topic.
    pub topic: Option<String>,
    /// New tags, replacing the old ones (`Some(vec![])`: no tags).
    pub tags: Option<Vec<String>>,
    /// New attributes, replacing the old ones (`Some` empty map: none).
    pub attributes: Option<BTreeMap<String, String>>,
}

impl ListingEdit {
    /// Whether the edit changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.description.is_none()
            && self.topic.is_none()
            && self.tags.is_none()
            && self.attributes.is_none()
    }
}

/// Changes listing `listing_id`'s description as `edit` says (the seller
/// or an admin). Reuse `request_id` to retry the same edit.
///
/// # Errors
/// [`check_edit`]'s refusals, and the cluster's: `NOT_FOUND` for an
/// unknown listing, `PERMISSION_DENIED` for someone else's.
pub async fn edit(
    client: &ClusterClient,
    store: &PeerStore,
    listing_id: u64,
    edit: &ListingEdit,
    request_id: RequestId,
) -> Result<ListingReply, CatalogueError> {
    check_edit(edit)?;
    let request = EditListingRequest {
        request_id: Some(request_id),
        listing_id,
        title: edit.title.clone(),
        description: edit.description.clone(),
        topic: edit.topic.clone(),
        tags: edit.tags.clone().map(|tags| TagList { tags }),
        attributes: edit.attributes.clone().map(|attributes| AttributeMap {
            attributes: attributes.into_iter().collect(),
        }),
    };
    let reply = client
        .call_leader(|channel| {
            let request = request.clone();
            let mut catalogue = client.catalogue_on(channel);
            async move {
                catalogue
                    .edit_listing(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await
        .map_err(ClientError::from)?;
    recorded_write(client, store, reply).await
}

/// Sets listing `listing_id`'s price to `price` cents (0: free).
///
/// # Errors
/// [`CatalogueError::Amount`] above the largest amount (before any call),
/// and the cluster's refusals as for [`edit`].
pub async fn reprice(
    client: &ClusterClient,
    store: &PeerStore,
    listing_id: u64,
    price: u64,
    request_id: RequestId,
) -> Result<ListingReply, CatalogueError> {
    check_price(price)?;
    let request = RepriceRequest {
        request_id: Some(request_id),
        listing_id,
        price,
    };
    let reply = client
        .call_leader(|channel| {
            let request = request.clone();
            let mut catalogue = client.catalogue_on(channel);
            async move { catalogue.reprice(request).await.map(Response::into_inner) }
        })
        .await
        .map_err(ClientError::from)?;
    recorded_write(client, store, reply).await
}

/// Takes listing `listing_id` off sale; it leaves search, and this peer
/// stops counting it among the files it serves.
///
/// # Errors
/// The cluster's refusals as for [`edit`].
pub async fn unpublish(
    client: &ClusterClient,
    store: &PeerStore,
    listing_id: u64,
    request_id: RequestId,
) -> Result<ListingReply, CatalogueError> {
    let request = UnpublishRequest {
        request_id: Some(request_id),
        listing_id,
    };
    let reply = client
        .call_leader(|channel| {
            let request = request.clone();
            let mut catalogue = client.catalogue_on(channel);
            async move { catalogue.unpublish(request).await.map(Response::into_inner) }
        })
        .await
        .map_err(ClientError::from)?;
    store.set_listing_active(listing_id, false).await?;
    recorded_write(client, store, reply).await
}

/// Records a listing write's index (and the leader that took it) and
/// checks the reply has its listing.
async fn recorded_write(
    client: &ClusterClient,
    store: &PeerStore,
    reply: ListingReply,
) -> Result<ListingReply, CatalogueError> {
    store.bump_max_seen_index(reply.index).await?;
    remember_leader(client, store).await?;
    if reply.listing.is_none() {
        return Err(
            ClientError::Protocol("a listing write came back without its listing".into()).into(),
        );
    }
    Ok(reply)
}

/// Remembers the node that just took a write as the leader, so the next
/// process of this peer reads from the followers first (a new process
/// knows no leader, and would otherwise ask the leader a third of the
/// time in a three-node cluster).
async fn remember_leader(client: &ClusterClient, store: &PeerStore) -> Result<(), StoreError> {
    match client.leader_hint() {
        Some(id) => store.set_leader_hint(id).await,
        None => Ok(()),
    }
}

/// The listing of a write's reply.
fn listing_of(reply: ListingReply) -> Result<Listing, ClientError> {
    reply.listing.ok_or_else(|| {
        ClientError::Protocol("a listing write came back without its listing".into())
    })
}

/// The freshness catalogue reads ask for: at least every write this peer
/// has seen (its own included), without a read-index round trip. Without
/// a local database, whatever the answering node has.
///
/// # Errors
/// When the local database fails.
pub async fn read_your_writes(store: Option<&PeerStore>) -> Result<ReadConsistency, StoreError> {
    let min_index = match store {
        Some(store) => store.max_seen_index().await?,
        None => 0,
    };
    Ok(ReadConsistency {
        min_index,
        linearizable: false,
    })
}

/// Listing `listing_id`, active or not, from a follower if one answers.
///
/// # Errors
/// [`ClientError::Rpc`] with `NOT_FOUND` for an unknown listing, or the
/// last error when no node answered.
pub async fn get_listing(
    client: &ClusterClient,
    listing_id: u64,
    consistency: ReadConsistency,
) -> Result<Listing, ClientError> {
    let request = GetListingRequest {
        listing_id,
        consistency: Some(consistency),
    };
    let reply = client
        .call_followers_first(|channel| {
            let mut catalogue = client.catalogue_on(channel);
            async move {
                catalogue
                    .get_listing(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await?;
    reply
        .listing
        .ok_or_else(|| ClientError::Protocol(format!("listing {listing_id} came back empty")))
}

/// One page of a seller's listings (the request's `seller`; empty: the
/// session's own), newest first, from a follower if one answers.
///
/// # Errors
/// [`ClientError::Rpc`] with `UNAUTHENTICATED` for the caller's own
/// listings without a session, `NOT_FOUND` for an unknown seller,
/// `INVALID_ARGUMENT` for a cursor the cluster did not hand out.
pub async fn seller_listings(
    client: &ClusterClient,
    request: &SellerListingsRequest,
) -> Result<SellerListingsReply, ClientError> {
    Ok(client
        .call_followers_first(|channel| {
            let request = request.clone();
            let mut catalogue = client.catalogue_on(channel);
            async move {
                catalogue
                    .seller_listings(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await?)
}

/// Every listing of `seller` (empty: the session's own), newest first,
/// following the cursors to the end; unpublished ones too with
/// `include_inactive`.
///
/// # Errors
/// As [`seller_listings`], and [`ClientError::Protocol`] when the
/// cluster's cursors do not come to an end.
pub async fn all_seller_listings(
    client: &ClusterClient,
    seller: &str,
    include_inactive: bool,
    consistency: ReadConsistency,
) -> Result<Vec<Listing>, ClientError> {
    let mut request = SellerListingsRequest {
        seller: seller.to_owned(),
        include_inactive,
        limit: MAX_LISTINGS_PAGE,
        cursor: String::new(),
        consistency: Some(consistency),
    };
    let mut listings = Vec::new();
    let mut cursors = BTreeSet::new();
    for _ in 0..MAX_PAGES {
        let page = seller_listings(client, &request).await?;
        listings.extend(page.listings);
        if page.next_cursor.is_empty() {
            return Ok(listings);
        }
        if !cursors.insert(page.next_cursor.clone()) {
            return Err(ClientError::Protocol(format!(
                "the listings cursor {:?} came back twice",
                page.next_cursor
            )));
        }
        request.cursor = page.next_cursor;
    }
    Err(ClientError::Protocol(format!(
        "the listings did not end after {MAX_PAGES} pages"
    )))
}

/// One page of search results, from a follower if one answers. Pass the
/// reply's `next_cursor` back in an otherwise unchanged request for the
/// next page.
///
/// # Errors
/// [`ClientError::Rpc`] with `INVALID_ARGUMENT` for text that is too long
/// or a cursor from another query, or the last error when no node
/// answered.
pub async fn search(
    client: &ClusterClient,
    request: &SearchRequest,
) -> Result<SearchReply, ClientError> {
    Ok(client
        .call_followers_first(|channel| {
            let request = request.clone();
            let mut catalogue = client.catalogue_on(channel);
            async move { catalogue.search(request).await.map(Response::into_inner) }
        })
        .await?)
}

/// Every topic, by name, from a follower if one answers.
///
/// # Errors
/// The last error when no node answered.
pub async fn topics(
    client: &ClusterClient,
    consistency: ReadConsistency,
) -> Result<Vec<Topic>, ClientError> {
    let request = TopicsRequest {
        consistency: Some(consistency),
    };
    let reply = client
        .call_followers_first(|channel| {
            let mut catalogue = client.catalogue_on(channel);
            async move { catalogue.topics(request).await.map(Response::into_inner) }
        })
        .await?;
    Ok(reply.topics)
}

/// Adds topic `name` (or changes its description) (admin). Reuse
/// `request_id` to retry the same write.
///
/// # Errors
/// [`ClientError::Rpc`] with `INVALID_ARGUMENT` for a name or description
/// that breaks the rules, `PERMISSION_DENIED` without admin rights.
pub async fn add_topic(
    client: &ClusterClient,
    name: &str,
    description: &str,
    request_id: &str,
) -> Result<LedgerWriteReply, ClientError> {
    let request = AddTopicRequest {
        request_id: Some(AdminRequestId {
            id: request_id.to_owned(),
        }),
        name: name.to_owned(),
        description: description.to_owned(),
    };
    Ok(client
        .call_leader(|channel| {
            let request = request.clone();
            let mut admin = client.admin_on(channel);
            async move { admin.add_topic(request).await.map(Response::into_inner) }
        })
        .await?)
}

/// Removes topic `name` (admin).
///
/// # Errors
/// [`ClientError::Rpc`] with `FAILED_PRECONDITION` while active listings
/// use it, `NOT_FOUND` for an unknown topic, `PERMISSION_DENIED` without
/// admin rights.
pub async fn remove_topic(
    client: &ClusterClient,
    name: &str,
    request_id: &str,
) -> Result<LedgerWriteReply, ClientError> {
    let request = RemoveTopicRequest {
        request_id: Some(AdminRequestId {
            id: request_id.to_owned(),
        }),
        name: name.to_owned(),
    };
    Ok(client
        .call_leader(|channel| {
            let request = request.clone();
            let mut admin = client.admin_on(channel);
            async move { admin.remove_topic(request).await.map(Response::into_inner) }
        })
        .await?)
}

/// A hash as lower-case hex, as listings show their roots.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const CHUNK: u32 = merkle::MIN_CHUNK_SIZE;

    /// Deterministic, non-repeating file content.
    fn content(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 7 + i / 251) % 256).unwrap_or(0))
            .collect()
    }

    /// The digest computed in memory, chunk by chunk, with the reference
    /// `merkle::root`.
    fn expected(bytes: &[u8], chunk_size: u32) -> FileDigest {
        let leaves: Vec<Hash> = bytes
            .chunks(chunk_size as usize)
            .map(merkle::leaf_hash)
            .collect();
        FileDigest {
            size: bytes.len() as u64,
            chunk_size,
            merkle_root: merkle::root(&leaves).expect("not empty"),
        }
    }

    fn file_of(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut file = File::create(&path).expect("create");
        file.write_all(bytes).expect("write");
        path
    }

    #[test]
    fn hashes_files_of_every_awkward_size() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let chunk = CHUNK as usize;
        for (name, len) in [
            ("one", 1),
            ("chunk", chunk),
            ("chunk-plus-one", chunk + 1),
            ("several", 5 * chunk + 123),
            ("exact-several", 4 * chunk),
        ] {
            let bytes = content(len);
            let path = file_of(tmp.path(), name, &bytes);
            let digest = hash_file(&path, CHUNK).expect("hashes");
            assert_eq!(digest, expected(&bytes, CHUNK), "{name}");
            assert_eq!(
                digest.chunk_count(),
                (len as u64).div_ceil(u64::from(CHUNK)),
                "{name}"
            );
        }
        // One chunk: the root is the leaf itself.
        let path = file_of(tmp.path(), "tiny", b"x");
        assert_eq!(
            hash_file(&path, CHUNK).expect("hashes").merkle_root,
            merkle::leaf_hash(b"x")
        );
    }

    #[test]
    fn reports_progress_to_the_end() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bytes = content(3 * CHUNK as usize + 10);
        let path = file_of(tmp.path(), "f", &bytes);
        let mut seen = Vec::new();
        hash_file_with_progress(&path, CHUNK, |done, total| seen.push((done, total)))
            .expect("hashes");
        let total = bytes.len() as u64;
        let chunk = u64::from(CHUNK);
        assert_eq!(
            seen,
            vec![
                (chunk, total),
                (2 * chunk, total),
                (3 * chunk, total),
                (total, total)
            ]
        );
    }

    #[test]
    fn the_chunk_size_changes_the_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bytes = content(100_000);
        let path = file_of(tmp.path(), "f", &bytes);
        let small = hash_file(&path, 4096).expect("hashes");
        let large = hash_file(&path, 65_536).expect("hashes");
        assert_ne!(small.merkle_root, large.merkle_root);
        assert_eq!(large, expected(&bytes, 65_536));
    }

    #[test]
    fn refuses_what_cannot_be_sold() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let empty = file_of(tmp.path(), "empty", b"");
        let err = hash_file(&empty, CHUNK).expect_err("empty");
        assert!(matches!(err, CatalogueError::EmptyFile(_)), "{err}");
        assert!(err
            .to_string()
            .ends_with("is empty; there is nothing to sell"));

        let err = hash_file(tmp.path(), CHUNK).expect_err("a directory");
        assert!(
            matches!(
                err,
                CatalogueError::NotAFile(_) | CatalogueError::Read { .. }
            ),
            "{err}"
        );
        let err = hash_file(&tmp.path().join("absent"), CHUNK).expect_err("missing");
        assert!(matches!(err, CatalogueError::Read { .. }), "{err}");

        let one = file_of(tmp.path(), "one", b"1");
        for bad in [0, 1000, 4095, 8 << 20] {
            let err = hash_file(&one, bad).expect_err("bad chunk size");
            assert!(matches!(err, CatalogueError::ChunkSize(_)), "{bad}: {err}");
        }
    }

    fn fields(title: &str) -> ListingFields {
        ListingFields {
            title: title.to_owned(),
            ..ListingFields::default()
        }
    }

    #[test]
    fn checks_fields_before_hashing() {
        assert!(check_fields(&fields("A Wizard of Earthsea")).is_ok());
        assert!(check_fields(&fields("  ")).is_err());
        assert!(check_fields(&fields(&"x".repeat(201))).is_err());
        assert!(check_fields(&fields(&"é".repeat(200))).is_ok());
        assert!(check_fields(&fields("bell\u{7}")).is_err());

        let mut many_tags = fields("t");
        many_tags.tags = (0..17).map(|i| format!("tag{i}")).collect();
        assert!(check_fields(&many_tags).is_err());
        // Duplicates (after lower-casing) count once, as the cluster does.
        many_tags.tags = (0..17).map(|i| format!("Tag{}", i % 16)).collect();
        assert!(check_fields(&many_tags).is_ok());
        many_tags.tags = vec![String::new()];
        assert!(check_fields(&many_tags).is_err());

        let mut attrs = fields("t");
        attrs
            .attributes
            .insert("Author".to_owned(), "Le Guin".to_owned());
        assert!(check_fields(&attrs).is_ok());
        attrs.attributes.insert("author".to_owned(), "U".to_owned());
        assert!(check_fields(&attrs).is_err(), "the same name twice");
        attrs.attributes.clear();
        attrs
            .attributes
            .insert("first name".to_owned(), "U".to_owned());
        assert!(check_fields(&attrs).is_err());

        assert!(check_edit(&ListingEdit::default()).is_err());
        assert!(check_edit(&ListingEdit {
            tags: Some(Vec::new()),
            ..ListingEdit::default()
        })
        .is_ok());
        assert!(check_edit(&ListingEdit {
            title: Some(String::new()),
            ..ListingEdit::default()
        })
        .is_err());
        assert!(check_price(MAX_AMOUNT).is_ok());
        assert!(check_price(0).is_ok());
        assert!(matches!(
            check_price(MAX_AMOUNT + 1),
            Err(CatalogueError::Amount(AmountError::TooLarge(_)))
        ));
    }

    #[test]
    fn parses_attributes() {
        assert_eq!(
            parse_attribute("author=Le Guin").expect("valid"),
            ("author".to_owned(), "Le Guin".to_owned())
        );
        assert_eq!(
            parse_attribute(" Year = 1968 ").expect("valid"),
            ("year".to_owned(), "1968".to_owned())
        );
        assert_eq!(
            parse_attribute("formula=a=b").expect("valid"),
            ("formula".to_owned(), "a=b".to_owned())
        );
        assert_eq!(
            parse_attribute("note=").expect("valid"),
            ("note".to_owned(), String::new())
        );
        for bad in ["author", "=x", "first name=x", "caf\u{e9}=x", ""] {
            assert!(parse_attribute(bad).is_err(), "{bad:?}");
        }
        let pairs = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ];
        assert_eq!(attribute_map(pairs.clone()).expect("distinct").len(), 2);
        let mut twice = pairs;
        twice.push(("a".to_owned(), "3".to_owned()));
        assert!(attribute_map(twice).is_err());
    }

    #[test]
    fn formats_hex() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(hex(&[]), "");
    }
}

//! Buying a file (`agora buy`, `agora resume`): open the purchase on the
//! cluster, fetch the encrypted file straight from the seller, settle, then
//! decrypt, verify every chunk and write the file atomically.
//!
//! The download lives in the peer's data directory until the file is in
//! place: `downloads/<purchase>.part` holds the ciphertext chunks at fixed
//! offsets, `<purchase>.leaves` the leaf hash of each chunk received (in
//! order), and `<purchase>.manifest` the plaintext leaves the seller sent
//! (checked against the listing's root before any chunk is accepted). A
//! resumed download re-checks what it has against those leaves and asks the
//! seller for the next missing chunk; the seller sends the same ciphertext
//! again (same key, same nonces).
//!
//! A seller at its transfer limit answers `RESOURCE_EXHAUSTED`; the buyer
//! asks again with growing pauses for at most [`BUSY_SELLER_WAIT`], then
//! stops with the seller's sentence (the money stays held; `agora resume`
//! goes on later).
//!
//! Settlement ([`crate::purchase::complete`]) uses a request id made once
//! and stored, so a completion retried after a crash (of this process or of
//! the leader) is the same request: charged once, the same key back.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_proto::dispute;
use agora_proto::escrow::{self, ChunkCipher, EscrowKey};
use agora_proto::market::{PurchaseState, RequestId};
use agora_proto::merkle::{self, Hash};
use agora_proto::peer::fetch_reply::Part;
use agora_proto::peer::seller_service_client::SellerServiceClient;
use agora_proto::peer::FetchRequest;
use ed25519_dalek::SigningKey;
use tonic::Code;

use crate::account::now_ms;
use crate::catalogue::{fill, read_your_writes};
use crate::local::{Download, DownloadState};
use crate::peer_tls::{self, PeerIdentity};
use crate::selling::MAX_FETCH_MESSAGE_BYTES;
use crate::{new_request_id, purchase, request_id, ClientError, ClusterClient, PeerStore};

/// Reports how a download goes; the CLI draws it.
pub trait Progress: Send {
    /// A phase starts ("fetching", "verifying", ...) over `total` bytes, of
    /// which `done` are done already.
    fn start(&mut self, phase: &str, total: u64, done: u64);
    /// `bytes` more are done.
    fn advance(&mut self, bytes: u64);
    /// The phase ended.
    fn finish(&mut self);
}

/// A [`Progress`] that shows nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: &str, _: u64, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// Why a purchase did not end with the file in place.
#[derive(Debug, thiserror::Error)]
pub enum BuyError {
    /// The cluster refused or could not be reached.
    #[error(transparent)]
    Cluster(#[from] ClientError),
    /// The local database failed.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    /// A local file could not be read or written.
    #[error("{} failed: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The TLS identity could not be made.
    #[error(transparent)]
    Tls(#[from] peer_tls::PeerTlsError),
    /// The output file exists.
    #[error("{} exists already; pass --out with another path", .0.display())]
    OutExists(PathBuf),
    /// No such download here.
    #[error(
        "there is no download of purchase {0} in this data directory; `agora downloads` lists them"
    )]
    UnknownPurchase(u64),
    /// The seller could not be reached or refused; the money stays held.
    #[error("purchase {purchase_id}: {reason}. Your money stays held until the purchase lapses{}: run `agora resume {purchase_id}` when the seller is back, or `agora cancel {purchase_id}` to get it back now", lapse_note(*expires_at_ms))]
    Seller {
        /// The purchase.
        purchase_id: u64,
        /// What happened.
        reason: String,
        /// When the hold lapses.
        expires_at_ms: u64,
    },
    /// The seller sent something that does not match the listing or its
    /// own commitment: nothing was charged.
    #[error("purchase {purchase_id}: the seller sent {what}; nothing was charged. Run `agora cancel {purchase_id}` to get your money back")]
    Misbehaved {
        /// The purchase.
        purchase_id: u64,
        /// What was wrong.
        what: String,
    },
    /// After payment, a chunk does not decrypt or does not match the
    /// listing.
    #[error("purchase {purchase_id}: chunk {index} does not match the listing after decryption; the seller cheated. The evidence is kept in {}", evidence.display())]
    BadChunk {
        /// The purchase.
        purchase_id: u64,
        /// The chunk.
        index: u64,
        /// The ciphertext file.
        evidence: PathBuf,
    },
    /// A chunk was bad after payment; the dispute was proven and the sale
    /// reversed.
    #[error("purchase {purchase_id}: chunk {index} did not match the listing after decryption, so the seller cheated. The cluster checked the proof and reversed the sale: the price is back on your account and the seller has a strike")]
    Refunded {
        /// The purchase.
        purchase_id: u64,
        /// The bad chunk.
        index: u64,
    },
    /// A chunk was bad after payment, but the dispute was refused.
    #[error("purchase {purchase_id}: chunk {index} does not match the listing, but the dispute was refused ({reason}); the evidence is kept in {}", evidence.display())]
    DisputeRefused {
        /// The purchase.
        purchase_id: u64,
        /// The bad chunk.
        index: u64,
        /// Why the cluster refused.
        reason: String,
        /// The ciphertext file.
        evidence: PathBuf,
    },
    /// The download ended after a dispute.
    #[error("purchase {purchase_id} is over: {what}")]
    Over {
        /// The purchase.
        purchase_id: u64,
        /// How it ended.
        what: &'static str,
    },
    /// The purchase ended without completing.
    #[error("purchase {purchase_id} {state}; your money went back to your account. Run `agora buy {listing_id}` to buy it again")]
    Lapsed {
        /// The purchase.
        purchase_id: u64,
        /// The listing.
        listing_id: u64,
        /// "expired" or "was cancelled".
        state: &'static str,
    },
}

fn lapse_note(expires_at_ms: u64) -> String {
    let left = expires_at_ms.saturating_sub(now_ms()) / 1000;
    if left == 0 {
        String::new()
    } else {
        format!(" (in about {} min {} s)", left / 60, left % 60)
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BuyError + '_ {
    move |source| BuyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who buys: the account's id and identity key (its TLS certificate).
pub struct Buyer<'a> {
    /// The cluster, carrying the buyer's session.
    pub client: &'a ClusterClient,
    /// The peer's database.
    pub store: &'a PeerStore,
    /// The buyer's account.
    pub user_id: u64,
    /// The buyer's identity key.
    pub identity: &'a SigningKey,
}

/// A file name for a listing: its title with anything but letters, digits,
/// `.`, `-` and `_` made `_`.
#[must_use]
pub fn default_file_name(listing_id: u64, title: &str) -> String {
    let cleaned: String = title
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c| c == '.' || c == '_');
    if cleaned.is_empty() {
        format!("listing-{listing_id}")
    } else {
        cleaned.chars().take(100).collect()
    }
}

impl Buyer<'_> {
    /// Buys listing `listing_id` into `out` (default: a name from the
    /// title, in the current directory), or continues this peer's
    /// unfinished purchase of it.
    ///
    /// # Errors
    /// See [`BuyError`].
    pub async fn buy(
        &self,
        listing_id: u64,
        out: Option<PathBuf>,
        hold_seconds: u32,
        progress: &mut dyn Progress,
    ) -> Result<Download, BuyError> {
        if let Some(d) = self
            .store
            .live_download_of(self.user_id, listing_id)
            .await?
        {
            tracing::info!(
                purchase_id = d.purchase_id,
                "continuing the unfinished purchase"
            );
            return self.finish(d, progress, Begun::Earlier).await;
        }
        if let Some(out) = &out {
            if out.exists() {
                return Err(BuyError::OutExists(out.clone()));
            }
        }
        // The request id is stored before the call and forgotten once the
        // download is recorded: if this process dies in between, the next
        // `agora buy` of the listing gets the same purchase back instead of
        // holding the money twice.
        let pending = format!("begin-request:{}:{listing_id}", self.user_id);
        let id = match self.store.setting(&pending).await? {
            Some(id) => id,
            None => {
                let id = new_request_id();
                self.store.set_setting(&pending, &id).await?;
                id
            }
        };
        let request = RequestId {
            client: format!("user:{}", self.user_id),
            id,
        };
        let reply = match purchase::begin(self.client, listing_id, hold_seconds, request).await {
            Ok(reply) => reply,
            Err(e) => {
                // A refusal is remembered under the id: the next attempt
                // (after a deposit, say) needs a new one. A transient error
                // keeps it, since the purchase may exist.
                if e.status().is_none_or(|s| !crate::is_retryable(s)) {
                    self.store.clear_setting(&pending).await?;
                }
                return Err(e.into());
            }
        };
        self.store.bump_max_seen_index(reply.index).await?;
        let p = reply
            .purchase
            .ok_or_else(|| ClientError::Protocol("a purchase came back empty".into()))?;
        if p.state() != PurchaseState::Open {
            // The purchase a crashed attempt opened has lapsed since.
            self.store.clear_setting(&pending).await?;
            return Err(BuyError::Lapsed {
                purchase_id: p.id,
                listing_id,
                state: "ended before this peer recorded it",
            });
        }
        let out = match out {
            Some(out) => out,
            None => {
                let name = default_file_name(listing_id, &p.title);
                let out = std::env::current_dir()
                    .map_err(io_error(Path::new(".")))?
                    .join(name);
                if out.exists() {
                    // Do not leave the money held for a purchase that cannot
                    // be written.
                    let _ = purchase::cancel(
                        self.client,
                        p.id,
                        request_id(format!("user:{}", self.user_id)),
                    )
                    .await;
                    self.store.clear_setting(&pending).await?;
                    return Err(BuyError::OutExists(out));
                }
                out
            }
        };
        let bad = |what: &str| ClientError::Protocol(format!("the purchase's {what} is malformed"));
        let download = Download {
            purchase_id: p.id,
            buyer_id: self.user_id,
            listing_id,
            title: p.title.clone(),
            price: p.price,
            size: p.size,
            chunk_size: p.chunk_size,
            merkle_root: p
                .merkle_root
                .as_slice()
                .try_into()
                .map_err(|_| bad("root"))?,
            ticket: reply.ticket,
            seller: p.seller.clone(),
            seller_endpoint: reply.seller_endpoint,
            seller_key: reply
                .seller_key
                .as_slice()
                .try_into()
                .map_err(|_| bad("seller key"))?,
            expires_at_ms: p.expires_at_ms,
            out_path: std::path::absolute(&out).map_err(io_error(&out))?,
            state: DownloadState::Fetching,
            ciphertext_root: None,
            complete_request: new_request_id(),
            escrow_key: None,
            started_ms: now_ms(),
            finished_ms: None,
            disputed: false,
            dispute_refused: false,
        };
        self.store.save_download(&download).await?;
        self.store.clear_setting(&pending).await?;
        self.finish(download, progress, Begun::Now).await
    }

    /// Continues purchase `purchase_id` from wherever it stopped.
    ///
    /// # Errors
    /// See [`BuyError`].
    pub async fn resume(
        &self,
        purchase_id: u64,
        progress: &mut dyn Progress,
    ) -> Result<Download, BuyError> {
        let d = self
            .store
            .download(purchase_id)
            .await?
            .filter(|d| d.buyer_id == self.user_id)
            .ok_or(BuyError::UnknownPurchase(purchase_id))?;
        self.finish(d, progress, Begun::Earlier).await
    }

    /// Cancels purchase `purchase_id`; the money is available again.
    ///
    /// # Errors
    /// The cluster's refusal (completed already), or storage errors.
    pub async fn cancel(&self, purchase_id: u64) -> Result<(), BuyError> {
        let reply = purchase::cancel(
            self.client,
            purchase_id,
            request_id(format!("user:{}", self.user_id)),
        )
        .await?;
        self.store.bump_max_seen_index(reply.index).await?;
        if self.store.download(purchase_id).await?.is_some() {
            let state = match reply.purchase.map(|p| p.state()) {
                Some(PurchaseState::Expired) => DownloadState::Expired,
                _ => DownloadState::Cancelled,
            };
            self.store
                .finish_download(purchase_id, state, now_ms())
                .await?;
            remove_files(&self.files(purchase_id));
        }
        Ok(())
    }

    fn files(&self, purchase_id: u64) -> Files {
        let dir = self.store.downloads_dir();
        Files {
            part: dir.join(format!("{purchase_id}.part")),
            leaves: dir.join(format!("{purchase_id}.leaves")),
            manifest: dir.join(format!("{purchase_id}.manifest")),
            dir,
        }
    }

    async fn finish(
        &self,
        mut d: Download,
        progress: &mut dyn Progress,
        begun: Begun,
    ) -> Result<Download, BuyError> {
        let files = self.files(d.purchase_id);
        if d.state == DownloadState::Fetching {
            let root = match d.ciphertext_root {
                Some(root) if files.complete(&d)? => root,
                _ => match self.fetch(&d, &files, progress, begun).await {
                    Ok(root) => root,
                    // The seller cannot help: the purchase may be over
                    // already, which is what the buyer should hear.
                    Err(e @ BuyError::Seller { .. }) => return Err(self.lapsed_or(&d, e).await),
                    Err(e) => return Err(e),
                },
            };
            let key = self.settle(&d, &root).await?;
            self.store.set_download_paid(d.purchase_id, &key).await?;
            d.state = DownloadState::Paid;
            d.escrow_key = Some(key);
        }
        if d.state == DownloadState::Paid {
            let key = d
                .escrow_key
                .ok_or_else(|| ClientError::Protocol("a paid download has no key".into()))?;
            let job = files.clone();
            let target = d.clone();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            progress.start("verifying", d.size, 0);
            let writer = tokio::task::spawn_blocking(move || {
                decrypt_into_place(&target, &job, &EscrowKey::from_bytes(key), &tx)
            });
            while let Some(bytes) = rx.recv().await {
                progress.advance(bytes);
            }
            progress.finish();
            let written = writer
                .await
                .map_err(|e| ClientError::Protocol(format!("writing the file stopped: {e}")))?;
            if let Err(BuyError::BadChunk { index, .. }) = written {
                // Paid for a bad chunk: prove it and get the money back.
                return Err(self.dispute(&d, &files, index).await);
            }
            written?;
            self.store
                .finish_download(d.purchase_id, DownloadState::Done, now_ms())
                .await?;
            remove_files(&files);
            d.state = DownloadState::Done;
            d.escrow_key = None;
        }
        match d.state {
            DownloadState::Done => Ok(d),
            DownloadState::Cancelled if d.disputed || d.dispute_refused => Err(BuyError::Over {
                purchase_id: d.purchase_id,
                what: if d.disputed {
                    "a chunk was bad; the dispute was upheld, the sale reversed and the price refunded"
                } else {
                    "a chunk was bad but the dispute was refused; the evidence is kept in the data directory's downloads/"
                },
            }),
            DownloadState::Cancelled => Err(BuyError::Lapsed {
                purchase_id: d.purchase_id,
                listing_id: d.listing_id,
                state: "was cancelled",
            }),
            _ => Err(BuyError::Lapsed {
                purchase_id: d.purchase_id,
                listing_id: d.listing_id,
                state: "expired",
            }),
        }
    }

    /// Files a dispute for bad chunk `index` of a paid download: the proof
    /// is the chunk's ciphertext with its path to the committed ciphertext
    /// root, and the listing's leaf with its path to the listing's root.
    async fn dispute(&self, d: &Download, files: &Files, index: u64) -> BuyError {
        let evidence = match files.evidence(d, index) {
            Ok(e) => e,
            Err(e) => return e,
        };
        let request = request_id(format!("user:{}", self.user_id));
        match purchase::dispute(self.client, d.purchase_id, evidence, request).await {
            Ok(reply) => {
                if let Err(e) = self.store.bump_max_seen_index(reply.index).await {
                    return e.into();
                }
                if let Err(e) = self
                    .store
                    .set_download_disputed(d.purchase_id, true, now_ms())
                    .await
                {
                    return e.into();
                }
                BuyError::Refunded {
                    purchase_id: d.purchase_id,
                    index,
                }
            }
            Err(e) => {
                // A refusal on the merits (or a closed window) is final: the
                // download is over, and buying again starts a new purchase.
                // A transient error keeps it paid, so `resume` tries again.
                let final_refusal = matches!(
                    e.code(),
                    Some(Code::FailedPrecondition | Code::PermissionDenied | Code::InvalidArgument)
                );
                if final_refusal {
                    if let Err(e) = self
                        .store
                        .set_download_disputed(d.purchase_id, false, now_ms())
                        .await
                    {
                        return e.into();
                    }
                }
                BuyError::DisputeRefused {
                    purchase_id: d.purchase_id,
                    index,
                    reason: e.to_string(),
                    evidence: files.part.clone(),
                }
            }
        }
    }

    /// Completes the purchase on the cluster (the stored request id makes a
    /// retry the same request) and returns the key.
    async fn settle(&self, d: &Download, root: &Hash) -> Result<[u8; 32], BuyError> {
        let request = RequestId {
            client: format!("user:{}", self.user_id),
            id: d.complete_request.clone(),
        };
        match purchase::complete(self.client, d.purchase_id, root, request).await {
            Ok(reply) => {
                self.store.bump_max_seen_index(reply.index).await?;
                reply.key.as_slice().try_into().map_err(|_| {
                    ClientError::Protocol("the released key is not 32 bytes".into()).into()
                })
            }
            Err(e) if e.code() == Some(Code::FailedPrecondition) => {
                Err(self.lapsed_or(d, BuyError::Cluster(e)).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// When the purchase is over on the cluster (cancelled or expired),
    /// records that and says so; otherwise `error`.
    async fn lapsed_or(&self, d: &Download, error: BuyError) -> BuyError {
        let consistency = match read_your_writes(Some(self.store)).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let state = match purchase::get(self.client, d.purchase_id, consistency).await {
            Ok(p) => p.state(),
            Err(_) => return error,
        };
        let (local, words) = match state {
            PurchaseState::Expired => (DownloadState::Expired, "expired"),
            PurchaseState::Cancelled => (DownloadState::Cancelled, "was cancelled"),
            _ => return error,
        };
        if let Err(e) = self
            .store
            .finish_download(d.purchase_id, local, now_ms())
            .await
        {
            return e.into();
        }
        remove_files(&self.files(d.purchase_id));
        BuyError::Lapsed {
            purchase_id: d.purchase_id,
            listing_id: d.listing_id,
            state: words,
        }
    }

    /// Fetches the missing chunks from the seller; returns the sealed
    /// ciphertext root, checked against the chunks received.
    async fn fetch(
        &self,
        d: &Download,
        files: &Files,
        progress: &mut dyn Progress,
        begun: Begun,
    ) -> Result<Hash, BuyError> {
        let seller_error = |reason: String| BuyError::Seller {
            purchase_id: d.purchase_id,
            reason,
            expires_at_ms: d.expires_at_ms,
        };
        let misbehaved = |what: String| BuyError::Misbehaved {
            purchase_id: d.purchase_id,
            what,
        };
        std::fs::create_dir_all(&files.dir).map_err(io_error(&files.dir))?;
        let ct_leaves = files.verified_leaves(d)?;
        let chunk_count = merkle::chunk_count(d.size, d.chunk_size);
        let from_chunk = ct_leaves.len() as u64;

        // A seller that restarted may listen elsewhere: a download begun
        // earlier asks where it is now; a fresh one has just been told.
        let mut endpoint = d.seller_endpoint.clone();
        if begun == Begun::Earlier {
            if let Ok(consistency) = read_your_writes(Some(self.store)).await {
                if let Ok(Some(now)) =
                    purchase::seller_endpoint(self.client, d.purchase_id, consistency).await
                {
                    if now != endpoint {
                        self.store
                            .set_download_endpoint(d.purchase_id, &now)
                            .await?;
                        endpoint = now;
                    }
                }
            }
        }
        let identity = PeerIdentity::from_signing_key(self.identity)?;
        let config = peer_tls::client_config(&identity, d.seller_key)?;
        let channel = match peer_tls::connect(&endpoint, config).await {
            Ok(c) => c,
            Err(e) => return Err(seller_error(e.to_string())),
        };
        let mut seller =
            SellerServiceClient::new(channel).max_decoding_message_size(MAX_FETCH_MESSAGE_BYTES);
        let request = FetchRequest {
            ticket: d.ticket.clone().into(),
            listing_id: d.listing_id,
            from_chunk,
        };
        let mut stream = match fetch_when_free(&mut seller, request).await {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == Code::FailedPrecondition => {
                let e = seller_error(format!("the seller refused: {}", status.message()));
                return Err(self.lapsed_or(d, e).await);
            }
            Err(status) => {
                return Err(seller_error(format!(
                    "the seller refused: {}",
                    status.message()
                )))
            }
        };
        let broke = |status: &tonic::Status, got: u64| {
            seller_error(format!(
                "the transfer broke after {got} of {chunk_count} chunks ({})",
                status.message()
            ))
        };

        // The manifest and the plaintext leaves, checked against the
        // listing before any chunk is taken.
        let mut plain_leaves: Vec<Hash> = Vec::new();
        let mut manifest_seen = false;
        let mut writer = ChunkWriter::start(files, d.chunk_size, ct_leaves)?;
        let mut next = from_chunk;
        let mut started = false;
        loop {
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    progress.finish();
                    return Err(seller_error(format!(
                        "the seller stopped sending after {next} of {chunk_count} chunks"
                    )));
                }
                Err(status) => {
                    progress.finish();
                    if status.code() == Code::FailedPrecondition {
                        let e = broke(&status, next);
                        return Err(self.lapsed_or(d, e).await);
                    }
                    return Err(broke(&status, next));
                }
            };
            match message.part {
                Some(Part::Manifest(m)) => {
                    if manifest_seen
                        || m.purchase_id != d.purchase_id
                        || m.listing_id != d.listing_id
                        || m.size != d.size
                        || m.chunk_size != d.chunk_size
                        || m.chunk_count != chunk_count
                        || m.merkle_root.as_ref() != d.merkle_root.as_slice()
                        || m.from_chunk != from_chunk
                    {
                        return Err(misbehaved(
                            "a manifest that does not describe the listing bought".into(),
                        ));
                    }
                    manifest_seen = true;
                }
                Some(Part::Leaves(batch)) => {
                    if !manifest_seen
                        || batch.first_index != plain_leaves.len() as u64
                        || batch.leaves.len() % 32 != 0
                        || plain_leaves.len() as u64 + (batch.leaves.len() / 32) as u64
                            > chunk_count
                    {
                        return Err(misbehaved("malformed leaf hashes".into()));
                    }
                    plain_leaves.extend(batch.leaves.chunks_exact(32).map(|c| {
                        let mut h = [0u8; 32];
                        h.copy_from_slice(c);
                        h
                    }));
                }
                Some(Part::Chunk(chunk)) => {
                    if !started {
                        if plain_leaves.len() as u64 != chunk_count
                            || merkle::root(&plain_leaves) != Some(d.merkle_root)
                        {
                            return Err(misbehaved(
                                "leaf hashes that do not add up to the listing's root".into(),
                            ));
                        }
                        std::fs::write(&files.manifest, plain_leaves.concat())
                            .map_err(io_error(&files.manifest))?;
                        started = true;
                        progress.start(
                            "fetching",
                            d.size,
                            (from_chunk * u64::from(d.chunk_size)).min(d.size),
                        );
                    }
                    let plain = escrow::plain_chunk_len(d.size, d.chunk_size, next);
                    if chunk.index != next
                        || chunk.ciphertext.len() != escrow::ciphertext_len(plain)
                    {
                        return Err(misbehaved(format!(
                            "chunk {} of {} bytes where chunk {next} of {} bytes was due",
                            chunk.index,
                            chunk.ciphertext.len(),
                            escrow::ciphertext_len(plain)
                        )));
                    }
                    writer.write(chunk).await?;
                    next += 1;
                    progress.advance(plain as u64);
                }
                Some(Part::Sealed(sealed)) => {
                    progress.finish();
                    if next != chunk_count {
                        return Err(misbehaved(format!(
                            "the end of the file after {next} of {chunk_count} chunks"
                        )));
                    }
                    let ct_leaves = writer.finish().await?;
                    let ours = merkle::root(&ct_leaves);
                    if ours.as_ref().map(|h| h.as_slice()) != Some(sealed.ciphertext_root.as_ref())
                    {
                        // Start over on the next attempt.
                        remove_files(files);
                        return Err(misbehaved(
                            "ciphertext that does not match the root it committed to".into(),
                        ));
                    }
                    let root = ours.unwrap_or_default();
                    self.store.bump_max_seen_index(sealed.deposit_index).await?;
                    self.store.set_download_sealed(d.purchase_id, &root).await?;
                    return Ok(root);
                }
                None => return Err(misbehaved("an empty message".into())),
            }
        }
    }
}

/// Longest a buyer keeps asking a seller that is at its transfer limit
/// (`RESOURCE_EXHAUSTED`) before giving up with the seller's sentence: long
/// enough for one of the transfers ahead to end, short enough that a buyer
/// is never stuck without a word.
pub const BUSY_SELLER_WAIT: Duration = Duration::from_secs(60);
/// First pause before asking a busy seller again; it doubles each time.
const BUSY_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between two asks.
const BUSY_RETRY_MAX: Duration = Duration::from_secs(2);

/// Calls `Fetch`, asking again with growing pauses while the seller is at
/// its transfer limit, for at most [`BUSY_SELLER_WAIT`]; any other answer
/// (and the last refusal) is returned as it is.
async fn fetch_when_free(
    seller: &mut SellerServiceClient<tonic::transport::Channel>,
    request: FetchRequest,
) -> Result<tonic::Response<tonic::Streaming<agora_proto::peer::FetchReply>>, tonic::Status> {
    let give_up = Instant::now() + BUSY_SELLER_WAIT;
    let mut pause = BUSY_RETRY_FIRST;
    loop {
        match seller.fetch(request.clone()).await {
            Err(status)
                if status.code() == Code::ResourceExhausted && Instant::now() + pause < give_up =>
            {
                tracing::info!(
                    reason = status.message(),
                    ?pause,
                    "the seller is busy; asking again"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BUSY_RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// Whether a download's purchase was opened by this very call (so the
/// seller's address in it is fresh) or earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begun {
    /// Just now.
    Now,
    /// By an earlier call or process.
    Earlier,
}

/// Chunks queued for the disk while the network keeps receiving.
const WRITE_AHEAD: usize = 8;

/// Writes received chunks at their offsets in the part file and appends
/// their leaves, on a blocking thread, so that receiving (TLS, HTTP/2) runs
/// beside the disk writes and the hashing instead of waiting for them.
struct ChunkWriter {
    /// `None` once closed: the writer then finishes what is queued.
    queue: Option<tokio::sync::mpsc::Sender<agora_proto::peer::Chunk>>,
    task: tokio::task::JoinHandle<Result<Vec<Hash>, BuyError>>,
}

impl ChunkWriter {
    /// Opens the files; `leaves` are those of the chunks already there.
    fn start(files: &Files, chunk_size: u32, mut leaves: Vec<Hash>) -> Result<Self, BuyError> {
        let mut part = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&files.part)
            .map_err(io_error(&files.part))?;
        let mut leaves_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.leaves)
            .map_err(io_error(&files.leaves))?;
        let ct_chunk = escrow::ciphertext_len(chunk_size as usize) as u64;
        let (queue, mut chunks) =
            tokio::sync::mpsc::channel::<agora_proto::peer::Chunk>(WRITE_AHEAD);
        let files = files.clone();
        let task = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = chunks.blocking_recv() {
                part.seek(SeekFrom::Start(chunk.index * ct_chunk))
                    .and_then(|_| part.write_all(&chunk.ciphertext))
                    .map_err(io_error(&files.part))?;
                let leaf = escrow::ciphertext_leaf(&chunk.ciphertext);
                leaves_file
                    .write_all(&leaf)
                    .map_err(io_error(&files.leaves))?;
                leaves.push(leaf);
            }
            Ok(leaves)
        });
        Ok(Self {
            queue: Some(queue),
            task,
        })
    }

    /// Queues the next chunk (in order).
    async fn write(&mut self, chunk: agora_proto::peer::Chunk) -> Result<(), BuyError> {
        let sent = match &self.queue {
            Some(queue) => queue.send(chunk).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped: its error says why.
            self.queue = None;
            return Err(self.join().await.err().unwrap_or_else(|| {
                ClientError::Protocol("the chunk writer stopped early".into()).into()
            }));
        }
        Ok(())
    }

    async fn join(&mut self) -> Result<Vec<Hash>, BuyError> {
        (&mut self.task)
            .await
            .map_err(|e| ClientError::Protocol(format!("the chunk writer stopped: {e}")))?
    }

    /// Waits for every queued chunk to be written; the leaves of all the
    /// chunks, in order.
    async fn finish(mut self) -> Result<Vec<Hash>, BuyError> {
        self.queue = None;
        self.join().await
    }
}

/// The files of one download.
#[derive(Debug, Clone)]
struct Files {
    dir: PathBuf,
    part: PathBuf,
    leaves: PathBuf,
    manifest: PathBuf,
}

impl Files {
    /// The leaves of the chunks received so far whose ciphertext in the part
    /// file still hashes to them (a crash may have torn the last write);
    /// the leaves file is cut back to those.
    fn verified_leaves(&self, d: &Download) -> Result<Vec<Hash>, BuyError> {
        let bytes = match std::fs::read(&self.leaves) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&self.leaves)(e)),
        };
        let mut part = match File::open(&self.part) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No ciphertext at all: start from chunk 0.
                let _ = std::fs::remove_file(&self.leaves);
                return Ok(Vec::new());
            }
            Err(e) => return Err(io_error(&self.part)(e)),
        };
        let mut good = Vec::new();
        let mut buffer = Vec::new();
        for (index, stored) in bytes.chunks_exact(32).enumerate() {
            let plain = escrow::plain_chunk_len(d.size, d.chunk_size, index as u64);
            buffer.resize(escrow::ciphertext_len(plain), 0);
            if fill(&mut part, &mut buffer).map_err(io_error(&self.part))? != buffer.len()
                || escrow::ciphertext_leaf(&buffer).as_slice() != stored
            {
                break;
            }
            let mut h = [0u8; 32];
            h.copy_from_slice(stored);
            good.push(h);
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&self.leaves)
            .map_err(io_error(&self.leaves))?;
        file.set_len(good.len() as u64 * 32)
            .map_err(io_error(&self.leaves))?;
        Ok(good)
    }

    /// The encoded dispute evidence for chunk `index`.
    fn evidence(&self, d: &Download, index: u64) -> Result<Vec<u8>, BuyError> {
        let hashes = |path: &Path| -> Result<Vec<Hash>, BuyError> {
            let bytes = std::fs::read(path).map_err(io_error(path))?;
            Ok(bytes
                .chunks_exact(32)
                .map(|c| {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(c);
                    h
                })
                .collect())
        };
        let ciphertext_leaves = hashes(&self.leaves)?;
        let plaintext_leaves = hashes(&self.manifest)?;
        let plain = escrow::plain_chunk_len(d.size, d.chunk_size, index);
        let mut ciphertext = vec![0u8; escrow::ciphertext_len(plain)];
        let mut part = File::open(&self.part).map_err(io_error(&self.part))?;
        part.seek(SeekFrom::Start(
            index * escrow::ciphertext_len(d.chunk_size as usize) as u64,
        ))
        .and_then(|_| part.read_exact(&mut ciphertext))
        .map_err(io_error(&self.part))?;
        let evidence = dispute::evidence(index, ciphertext, &ciphertext_leaves, &plaintext_leaves)
            .ok_or_else(|| {
                ClientError::Protocol(format!("no evidence can be made for chunk {index}"))
            })?;
        Ok(dispute::encode(&evidence))
    }

    /// Whether every chunk is here (a sealed download interrupted before
    /// settling).
    fn complete(&self, d: &Download) -> Result<bool, BuyError> {
        let leaves = self.verified_leaves(d)?;
        Ok(
            leaves.len() as u64 == merkle::chunk_count(d.size, d.chunk_size)
                && merkle::root(&leaves) == d.ciphertext_root,
        )
    }
}

fn remove_files(files: &Files) {
    for path in [&files.part, &files.leaves, &files.manifest] {
        let _ = std::fs::remove_file(path);
    }
}

/// Decrypts every chunk, checks it against its plaintext leaf, and writes
/// the file beside its destination, then renames it into place (on a
/// blocking thread). Sends the bytes done to `progress`.
fn decrypt_into_place(
    d: &Download,
    files: &Files,
    key: &EscrowKey,
    progress: &tokio::sync::mpsc::UnboundedSender<u64>,
) -> Result<(), BuyError> {
    let manifest = std::fs::read(&files.manifest).map_err(io_error(&files.manifest))?;
    let chunk_count = merkle::chunk_count(d.size, d.chunk_size);
    if manifest.len() as u64 != chunk_count * 32 {
        return Err(BuyError::Io {
            path: files.manifest.clone(),
            source: std::io::Error::other("the stored leaf hashes are incomplete"),
        });
    }
    let out = &d.out_path;
    let dir = out.parent().unwrap_or_else(|| Path::new("."));
    let name = out
        .file_name()
        .map_or_else(|| "download".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.agora-{}.tmp", d.purchase_id));
    let mut writer = File::create(&temp).map_err(io_error(&temp))?;
    let mut part = File::open(&files.part).map_err(io_error(&files.part))?;
    let cipher = ChunkCipher::new(key, d.purchase_id);
    let batch = crate::parallel::batch_len() as u64;
    let mut first = 0;
    while first < chunk_count {
        let end = (first + batch).min(chunk_count);
        // Read the batch in order, decrypt and check it on every core, then
        // write it in order.
        let mut chunks = Vec::new();
        for index in first..end {
            let plain = escrow::plain_chunk_len(d.size, d.chunk_size, index);
            let mut buffer = vec![0u8; escrow::ciphertext_len(plain)];
            part.read_exact(&mut buffer)
                .map_err(io_error(&files.part))?;
            chunks.push(buffer);
        }
        let checked = crate::parallel::for_each(&mut chunks, |i, buffer| {
            let index = first + i as u64;
            let at = usize::try_from(index)
                .unwrap_or(usize::MAX)
                .saturating_mul(32);
            let expected = manifest.get(at..at + 32);
            let good = cipher.decrypt_in_place(index, buffer).is_ok()
                && expected == Some(merkle::leaf_hash(buffer).as_slice());
            if good {
                Ok(())
            } else {
                Err(index)
            }
        });
        if let Err(index) = checked {
            drop(writer);
            let _ = std::fs::remove_file(&temp);
            return Err(BuyError::BadChunk {
                purchase_id: d.purchase_id,
                index,
                evidence: files.part.clone(),
            });
        }
        for buffer in &chunks {
            writer.write_all(buffer).map_err(io_error(&temp))?;
            let _ = progress.send(buffer.len() as u64);
        }
        first = end;
    }
    writer.sync_all().map_err(io_error(&temp))?;
    drop(writer);
    std::fs::rename(&temp, out).map_err(io_error(out))?;
    if let Ok(d) = File::open(dir) {
        // Make the rename itself durable.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_come_from_titles() {
        assert_eq!(
            default_file_name(3, "Rust book (2nd ed.)"),
            "Rust_book__2nd_ed"
        );
        assert_eq!(default_file_name(3, "../../etc/passwd"), "etc_passwd");
        assert_eq!(default_file_name(9, "///"), "listing-9");
    }
}

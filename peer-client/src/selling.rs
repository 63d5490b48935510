//! The selling peer's file server (`agora serve`).
//!
//! It serves `agora.peer.v1.SellerService.Fetch` over peer TLS
//! ([`crate::peer_tls`]): the buyer's certificate carries its identity key,
//! and the ticket the cluster signed must name exactly that key, this
//! seller and the listing asked for. The ticket is checked offline, with the
//! cluster's ticket key fetched once at start.
//!
//! For each purchase the server makes one AES-256-GCM key and keeps it in
//! the peer database, so a resumed fetch sends the very same ciphertext.
//! It streams the manifest (the plaintext leaf hashes, which the buyer
//! checks against the listing's root), then the encrypted chunks, and once
//! the last chunk is out it deposits the key and the ciphertext Merkle root
//! with the cluster and tells the buyer (`Sealed`). A resumed fetch that
//! starts past chunk 0 before the key was deposited re-encrypts the skipped
//! chunks (without sending them) to learn their ciphertext leaves.
//!
//! Memory stays flat whatever the file size: a small batch of chunks (a
//! few per core) is read, encrypted on every core and handed to a bounded
//! channel (at most [`PIPELINE_CHUNKS`] chunks per transfer queued).
//!
//! How many transfers run at once is bounded per buyer and in total
//! ([`crate::transfer_slots`]): a transfer beyond either limit is refused at
//! once with `RESOURCE_EXHAUSTED` and a sentence naming the limit.

use std::fs::File;
use std::future::Future;
use std::io::{Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;

use agora_proto::escrow::{self, ChunkCipher, EscrowKey};
use agora_proto::merkle::{self, Hash, MerkleBuilder};
use agora_proto::peer::fetch_reply::Part;
use agora_proto::peer::seller_service_server::{SellerService, SellerServiceServer};
use agora_proto::peer::{Chunk, FetchReply, FetchRequest, LeafBatch, Manifest, Sealed};
use agora_proto::ticket::{Ticket, TicketError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::account::now_ms;
use crate::catalogue::{fill, modified_ms};
use crate::local::SaleKey;
use crate::peer_tls::{self, PeerIdentity, FETCH_WINDOW_BYTES};
use crate::transfer_slots::{TransferLimits, TransferSlots};
use crate::{new_request_id, purchase, ClientError, ClusterClient, LocalListing, PeerStore};

/// Encrypted chunks of one transfer waiting to be sent: enough to keep the
/// network busy while the next chunk is read and encrypted, and the bound
/// on a transfer's memory (4 × 4 MiB at the largest chunk size).
pub const PIPELINE_CHUNKS: usize = 4;
/// HTTP/2 streams one connection may have open beyond the per-buyer
/// transfer limit. The HTTP/2 limit bounds what one connection can make the
/// server hold; it sits above the transfer limit on purpose, because a
/// client at the HTTP/2 limit queues its next stream silently, while a
/// stream over the transfer limit is refused with a sentence saying why.
pub const HTTP2_STREAM_HEADROOM: u32 = 8;
/// Plaintext leaves per manifest message (2 MiB).
const LEAVES_PER_BATCH: usize = 65_536;
/// Largest message the server sends: a 4 MiB chunk plus its tag and framing.
pub const MAX_FETCH_MESSAGE_BYTES: usize = 5 * 1024 * 1024;

/// Why the file server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SellError {
    /// The cluster could not be asked for the ticket key.
    #[error("cannot fetch the cluster's ticket key: {0}")]
    Cluster(#[from] ClientError),
    /// The TLS identity could not be made.
    #[error(transparent)]
    Tls(#[from] peer_tls::PeerTlsError),
    /// The listener failed.
    #[error("the file server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The listening address is unknown.
    #[error("cannot read the listening address: {0}")]
    Listen(#[source] std::io::Error),
}

/// Who serves, and what it needs to check tickets and deposit keys.
#[derive(Clone)]
pub struct Seller {
    client: ClusterClient,
    store: PeerStore,
    /// The account the files belong to (tickets must name it).
    seller_id: u64,
    /// The cluster's ticket-signing key.
    ticket_key: VerifyingKey,
    /// Caps concurrent transfers, per buyer and in total.
    slots: TransferSlots,
    /// A chunk whose plaintext is corrupted before encryption (tests of
    /// disputes only; always `None` otherwise).
    corrupt_chunk: Option<u64>,
}

impl Seller {
    /// A seller for `seller_id`, whose cluster client carries its session.
    ///
    /// # Errors
    /// When the cluster's ticket key cannot be fetched.
    pub async fn new(
        client: ClusterClient,
        store: PeerStore,
        seller_id: u64,
    ) -> Result<Self, SellError> {
        let ticket_key = purchase::ticket_key(&client).await?;
        Ok(Self {
            client,
            store,
            seller_id,
            ticket_key,
            slots: TransferSlots::new(TransferLimits::default()),
            corrupt_chunk: None,
        })
    }

    /// The same seller under other transfer limits (`agora serve
    /// --max-transfers`, `--max-transfers-per-buyer`).
    #[must_use]
    pub fn with_limits(mut self, limits: TransferLimits) -> Self {
        self.slots = TransferSlots::new(limits);
        self
    }

    /// The transfer limits in force.
    #[must_use]
    pub fn limits(&self) -> TransferLimits {
        self.slots.limits()
    }

    /// A dishonest seller, for tests of disputes: it flips a byte of chunk
    /// `index`'s plaintext before encrypting it, so its ciphertext root is
    /// consistent with what it sends but the chunk is not the listing's.
    #[cfg(feature = "fault-injection")]
    #[must_use]
    pub fn corrupting_chunk(mut self, index: u64) -> Self {
        self.corrupt_chunk = Some(index);
        self
    }

    /// Serves on `listener` until `shutdown` resolves: peer TLS with
    /// `identity`, HTTP/2 windows sized for large messages.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built or the server fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        identity: &SigningKey,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SellError> {
        let identity = PeerIdentity::from_signing_key(identity)?;
        let config = peer_tls::server_config(&identity)?;
        let per_buyer = u32::try_from(self.slots.limits().per_buyer).unwrap_or(u32::MAX);
        Server::builder()
            .max_concurrent_streams(per_buyer.saturating_add(HTTP2_STREAM_HEADROOM))
            .initial_stream_window_size(FETCH_WINDOW_BYTES)
            .initial_connection_window_size(FETCH_WINDOW_BYTES)
            .add_service(
                SellerServiceServer::new(self)
                    .max_encoding_message_size(MAX_FETCH_MESSAGE_BYTES)
                    .max_decoding_message_size(64 * 1024),
            )
            .serve_with_incoming_shutdown(peer_tls::incoming(listener, config), shutdown)
            .await?;
        Ok(())
    }
}

/// The bound address of `listener`.
///
/// # Errors
/// When the socket cannot tell.
pub fn local_addr(listener: &TcpListener) -> Result<SocketAddr, SellError> {
    listener.local_addr().map_err(SellError::Listen)
}

fn ticket_status(e: &TicketError) -> Status {
    match e {
        TicketError::Malformed(_) => Status::invalid_argument(e.to_string()),
        TicketError::BadSignature => Status::unauthenticated(e.to_string()),
        TicketError::Expired { .. } => Status::failed_precondition(e.to_string()),
        TicketError::WrongSeller | TicketError::WrongListing | TicketError::WrongBuyer => {
            Status::permission_denied(e.to_string())
        }
    }
}

fn store_status(e: &crate::StoreError) -> Status {
    Status::internal(format!("the seller's database failed: {e}"))
}

/// Everything one transfer needs, moved into its task.
struct Transfer {
    purchase_id: u64,
    listing: LocalListing,
    leaves: Vec<Hash>,
    key: SaleKey,
    from_chunk: u64,
}

#[tonic::async_trait]
impl SellerService for Seller {
    type FetchStream = ReceiverStream<Result<FetchReply, Status>>;

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let presenter = peer_tls::peer_key_of(&request).ok_or_else(|| {
            Status::unauthenticated("present the certificate of your identity key")
        })?;
        let req = request.into_inner();
        let ticket =
            Ticket::verify(&req.ticket, &self.ticket_key).map_err(|e| ticket_status(&e))?;
        ticket
            .check(now_ms(), self.seller_id, req.listing_id, &presenter)
            .map_err(|e| ticket_status(&e))?;
        // After the ticket check: the buyer it names is the one the TLS
        // identity proved, so its share cannot be spent by anybody else.
        let permit = self.slots.try_take(ticket.buyer_id).map_err(|refused| {
            tracing::info!(buyer_id = ticket.buyer_id, %refused, "transfer refused");
            Status::resource_exhausted(refused.to_string())
        })?;
        let listing = self
            .store
            .listing(req.listing_id)
            .await
            .map_err(|e| store_status(&e))?
            .filter(|l| l.seller_id == self.seller_id && l.active)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "this peer does not serve listing {}: it was unpublished, or published from another data directory",
                    req.listing_id
                ))
            })?;
        let leaves = self.leaves_of(&listing).await?;
        let chunk_count = leaves.len() as u64;
        if req.from_chunk > chunk_count {
            return Err(Status::out_of_range(format!(
                "the file has {chunk_count} chunks; from_chunk {} is past the end",
                req.from_chunk
            )));
        }
        let key = self
            .store
            .sale_key_or_insert(&SaleKey {
                purchase_id: ticket.purchase_id,
                seller_id: self.seller_id,
                listing_id: ticket.listing_id,
                buyer_id: ticket.buyer_id,
                escrow_key: *EscrowKey::generate().as_bytes(),
                ciphertext_root: None,
                deposit_request: new_request_id(),
                created_ms: now_ms(),
            })
            .await
            .map_err(|e| store_status(&e))?;
        let transfer = Transfer {
            purchase_id: ticket.purchase_id,
            listing,
            leaves,
            key,
            from_chunk: req.from_chunk,
        };
        let (tx, rx) = mpsc::channel(PIPELINE_CHUNKS);
        let seller = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(status) = seller.send(transfer, &tx).await {
                // The buyer may be gone already; nothing else to tell.
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Seller {
    /// The plaintext leaves of `listing`'s file, from the database while the
    /// file is unchanged, else hashed again and checked against the root.
    async fn leaves_of(&self, listing: &LocalListing) -> Result<Vec<Hash>, Status> {
        let path = listing.path.clone();
        let id = listing.listing_id;
        let metadata = std::fs::metadata(&path).map_err(|e| {
            Status::failed_precondition(format!(
                "the seller cannot read the file of listing {id} ({e}); it cannot be sold until it is back"
            ))
        })?;
        let modified = modified_ms(&metadata);
        if metadata.len() != listing.size {
            return Err(changed(id));
        }
        if let Some(leaves) = self
            .store
            .listing_leaves(id, modified)
            .await
            .map_err(|e| store_status(&e))?
        {
            return Ok(leaves);
        }
        let chunk_size = listing.chunk_size;
        let leaves = tokio::task::spawn_blocking(move || file_leaves(&path, chunk_size))
            .await
            .map_err(|e| Status::internal(format!("hashing the file stopped: {e}")))?
            .map_err(|e| {
                Status::failed_precondition(format!(
                    "the seller cannot read the file of listing {id} ({e})"
                ))
            })?;
        if merkle::root(&leaves) != Some(listing.merkle_root) {
            return Err(changed(id));
        }
        self.store
            .save_listing_leaves(id, modified, &leaves)
            .await
            .map_err(|e| store_status(&e))?;
        Ok(leaves)
    }

    /// Streams one transfer: manifest, leaves, chunks, then the deposit and
    /// `Sealed`.
    async fn send(
        &self,
        transfer: Transfer,
        tx: &mpsc::Sender<Result<FetchReply, Status>>,
    ) -> Result<(), Status> {
        let Transfer {
            purchase_id,
            listing,
            leaves,
            key,
            from_chunk,
        } = transfer;
        let chunk_count = leaves.len() as u64;
        let manifest = Part::Manifest(Manifest {
            purchase_id,
            listing_id: listing.listing_id,
            size: listing.size,
            chunk_size: listing.chunk_size,
            chunk_count,
            merkle_root: listing.merkle_root.to_vec().into(),
            from_chunk,
        });
        if !send(tx, manifest).await {
            return Ok(());
        }
        for (n, batch) in leaves.chunks(LEAVES_PER_BATCH).enumerate() {
            let part = Part::Leaves(LeafBatch {
                first_index: (n * LEAVES_PER_BATCH) as u64,
                leaves: batch.concat().into(),
            });
            if !send(tx, part).await {
                return Ok(());
            }
        }

        let escrow_key = EscrowKey::from_bytes(key.escrow_key);
        let sealed_before = key.ciphertext_root;
        let chunks_tx = tx.clone();
        let path = listing.path.clone();
        let (size, chunk_size) = (listing.size, listing.chunk_size);
        let corrupt_chunk = self.corrupt_chunk;
        let streamed = tokio::task::spawn_blocking(move || {
            encrypt_file(
                &EncryptJob {
                    path,
                    size,
                    chunk_size,
                    purchase_id,
                    from_chunk,
                    need_prefix: sealed_before.is_none(),
                    corrupt_chunk,
                },
                &escrow_key,
                &chunks_tx,
            )
        })
        .await
        .map_err(|e| Status::internal(format!("encrypting the file stopped: {e}")))??;
        let Some(computed_root) = streamed else {
            tracing::info!(
                purchase_id,
                from_chunk,
                "buyer went away during the transfer"
            );
            return Ok(());
        };
        tracing::info!(
            "served purchase {purchase_id} chunks {from_chunk}..{chunk_count} of listing {}",
            listing.listing_id
        );
        let root = match sealed_before {
            Some(root) => root,
            None => computed_root.ok_or_else(|| {
                Status::internal("the ciphertext root is missing after a full pass")
            })?,
        };
        let request = agora_proto::market::RequestId {
            client: "seller".into(),
            id: key.deposit_request.clone(),
        };
        let reply =
            purchase::deposit_key(&self.client, purchase_id, &key.escrow_key, &root, request)
                .await
                .map_err(|e| match e.status() {
                    Some(s) => Status::new(
                        s.code(),
                        format!(
                            "the cluster refused the seller's key deposit: {}",
                            s.message()
                        ),
                    ),
                    None => Status::unavailable(format!(
                "the seller could not deposit the key with the cluster ({e}); resume in a moment"
            )),
                })?;
        if let Err(e) = self.store.set_sale_deposited(purchase_id, &root).await {
            // The deposit is on the cluster; a later resume deposits the same
            // key and root again, which the cluster accepts.
            tracing::warn!(purchase_id, error = %e, "could not record the deposit locally");
        }
        if let Err(e) = self.store.bump_max_seen_index(reply.index).await {
            tracing::warn!(error = %e, "could not record the deposit's index");
        }
        send(
            tx,
            Part::Sealed(Sealed {
                ciphertext_root: root.to_vec().into(),
                deposit_index: reply.index,
            }),
        )
        .await;
        Ok(())
    }
}

fn changed(listing_id: u64) -> Status {
    Status::failed_precondition(format!(
        "the seller's file for listing {listing_id} changed since it was published; it cannot be sold until it is published again"
    ))
}

/// Sends one part; false when the buyer has gone.
async fn send(tx: &mpsc::Sender<Result<FetchReply, Status>>, part: Part) -> bool {
    tx.send(Ok(FetchReply { part: Some(part) })).await.is_ok()
}

/// The plaintext leaf hashes of the file at `path`.
///
/// # Errors
/// When the file cannot be read.
pub fn file_leaves(path: &PathBuf, chunk_size: u32) -> std::io::Result<Vec<Hash>> {
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; chunk_size as usize];
    let mut leaves = Vec::new();
    loop {
        let n = fill(&mut file, &mut buffer)?;
        if n == 0 {
            break;
        }
        leaves.push(merkle::leaf_hash(&buffer[..n]));
        if n < buffer.len() {
            break;
        }
    }
    Ok(leaves)
}

/// What [`encrypt_file`] reads and how.
struct EncryptJob {
    path: PathBuf,
    size: u64,
    chunk_size: u32,
    purchase_id: u64,
    /// The first chunk to send.
    from_chunk: u64,
    /// Whether the ciphertext root is still to be learned (then the chunks
    /// before `from_chunk` are encrypted too, and not sent).
    need_prefix: bool,
    /// See [`Seller::corrupting_chunk`].
    corrupt_chunk: Option<u64>,
}

/// Reads, encrypts and sends the chunks (on a blocking thread). Returns
/// `None` when the buyer went away, else the ciphertext root when
/// `need_prefix` (every chunk was encrypted), else `Some(None)`.
fn encrypt_file(
    job: &EncryptJob,
    key: &EscrowKey,
    tx: &mpsc::Sender<Result<FetchReply, Status>>,
) -> Result<Option<Option<Hash>>, Status> {
    let read_error = |e: std::io::Error| {
        Status::failed_precondition(format!(
            "the seller could not read the file ({e}); resume when it is back"
        ))
    };
    let cipher = ChunkCipher::new(key, job.purchase_id);
    let chunk_count = merkle::chunk_count(job.size, job.chunk_size);
    let start = if job.need_prefix { 0 } else { job.from_chunk };
    let mut file = File::open(&job.path).map_err(read_error)?;
    file.seek(SeekFrom::Start(start * u64::from(job.chunk_size)))
        .map_err(read_error)?;
    let mut tree = MerkleBuilder::new();
    let batch = crate::parallel::batch_len() as u64;
    let mut first = start;
    while first < chunk_count {
        let end = (first + batch).min(chunk_count);
        // Read the batch in order, encrypt and hash it on every core, then
        // send it in order.
        let mut chunks = Vec::new();
        for index in first..end {
            let len = escrow::plain_chunk_len(job.size, job.chunk_size, index);
            let mut chunk = Vec::with_capacity(escrow::ciphertext_len(len));
            chunk.resize(len, 0);
            if fill(&mut file, &mut chunk).map_err(read_error)? != len {
                return Err(Status::failed_precondition(
                    "the seller's file is shorter than when it was published; it cannot be sold until it is published again",
                ));
            }
            if job.corrupt_chunk == Some(index) {
                if let Some(byte) = chunk.first_mut() {
                    *byte ^= 0xff;
                }
            }
            chunks.push((chunk, [0u8; 32]));
        }
        crate::parallel::for_each(&mut chunks, |i, (chunk, leaf)| {
            cipher.encrypt_in_place(first + i as u64, chunk);
            if job.need_prefix {
                *leaf = escrow::ciphertext_leaf(chunk);
            }
            Ok::<(), Status>(())
        })?;
        for (index, (chunk, leaf)) in (first..end).zip(chunks) {
            if job.need_prefix {
                tree.push(leaf);
            }
            if index >= job.from_chunk {
                let part = Part::Chunk(Chunk {
                    index,
                    ciphertext: chunk.into(),
                });
                if tx
                    .blocking_send(Ok(FetchReply { part: Some(part) }))
                    .is_err()
                {
                    return Ok(None);
                }
            }
        }
        first = end;
    }
    Ok(Some(if job.need_prefix { tree.finish() } else { None }))
}

//! What the peer keeps about buying and selling: its downloads (as buyer),
//! the keys it made for purchases of its files (as seller), and the leaf
//! hashes of the files it sells.

use std::path::{Path, PathBuf};

use agora_proto::merkle::Hash;
use sqlx::sqlite::SqliteRow;
use sqlx::Row as _;

use super::{database, path_bytes, path_from_bytes, to_i64, to_u64, PeerStore, StoreError};

/// Where a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadState {
    /// Receiving the encrypted chunks (or waiting to resume).
    Fetching,
    /// Paid and the key received; the file is not written yet.
    Paid,
    /// The file is in place.
    Done,
    /// Cancelled; the money went back.
    Cancelled,
    /// Lapsed before completion; the money went back.
    Expired,
}

impl DownloadState {
    /// The name stored and shown.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DownloadState::Fetching => "fetching",
            DownloadState::Paid => "paid",
            DownloadState::Done => "done",
            DownloadState::Cancelled => "cancelled",
            DownloadState::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "fetching" => DownloadState::Fetching,
            "paid" => DownloadState::Paid,
            "done" => DownloadState::Done,
            "cancelled" => DownloadState::Cancelled,
            "expired" => DownloadState::Expired,
            _ => return None,
        })
    }

    /// Still to be finished (fetching or writing the file).
    #[must_use]
    pub fn is_live(self) -> bool {
        matches!(self, DownloadState::Fetching | DownloadState::Paid)
    }
}

/// A purchase this peer made and its download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The cluster's purchase id.
    pub purchase_id: u64,
    /// The buyer (this peer's account when it bought).
    pub buyer_id: u64,
    /// The listing.
    pub listing_id: u64,
    /// Its title.
    pub title: String,
    /// Cents.
    pub price: u64,
    /// File size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// The listing's plaintext Merkle root.
    pub merkle_root: Hash,
    /// The signed ticket.
    pub ticket: Vec<u8>,
    /// The seller's name.
    pub seller: String,
    /// The seller's file server.
    pub seller_endpoint: String,
    /// The seller's identity key (pinned in TLS).
    pub seller_key: [u8; 32],
    /// When the purchase lapses unless completed.
    pub expires_at_ms: u64,
    /// Where the file goes.
    pub out_path: PathBuf,
    /// Where it is.
    pub state: DownloadState,
    /// The ciphertext root the seller sealed.
    pub ciphertext_root: Option<Hash>,
    /// Request id of the completion, made once.
    pub complete_request: String,
    /// The released key, until the file is written.
    pub escrow_key: Option<[u8; 32]>,
    /// When it started (this peer's clock, Unix ms).
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// A chunk proved bad after payment and the sale was reversed.
    pub disputed: bool,
    /// A chunk proved bad after payment but the dispute was refused for
    /// good (e.g. the window had closed); the download is over.
    pub dispute_refused: bool,
}

/// A key this peer made for a purchase of one of its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleKey {
    /// The purchase.
    pub purchase_id: u64,
    /// This peer's account when it made the key.
    pub seller_id: u64,
    /// The listing.
    pub listing_id: u64,
    /// The buyer.
    pub buyer_id: u64,
    /// The AES-256-GCM key.
    pub escrow_key: [u8; 32],
    /// The ciphertext root, once deposited.
    pub ciphertext_root: Option<Hash>,
    /// Request id of the deposit, made once.
    pub deposit_request: String,
    /// When it was made.
    pub created_ms: u64,
}

fn corrupt(path: &Path, what: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: what.to_owned(),
    }
}

fn hash32(bytes: Option<Vec<u8>>, what: &str) -> Result<Option<[u8; 32]>, String> {
    bytes
        .map(|b| <[u8; 32]>::try_from(b.as_slice()).map_err(|_| format!("{what} is not 32 bytes")))
        .transpose()
}

fn download_of(path: &Path, row: &SqliteRow) -> Result<Download, StoreError> {
    read_download(row).map_err(|e| corrupt(path, &e))
}

fn read_download(row: &SqliteRow) -> Result<Download, String> {
    let get = |e: sqlx::Error| format!("a download row does not read: {e}");
    let state: String = row.try_get("state").map_err(get)?;
    Ok(Download {
        purchase_id: to_u64(row.try_get("purchase_id").map_err(get)?),
        buyer_id: to_u64(row.try_get("buyer_id").map_err(get)?),
        listing_id: to_u64(row.try_get("listing_id").map_err(get)?),
        title: row.try_get("title").map_err(get)?,
        price: to_u64(row.try_get("price").map_err(get)?),
        size: to_u64(row.try_get("size").map_err(get)?),
        chunk_size: u32::try_from(row.try_get::<i64, _>("chunk_size").map_err(get)?)
            .map_err(|_| "a download's chunk size is out of range".to_owned())?,
        merkle_root: hash32(row.try_get("merkle_root").map_err(get)?, "merkle root")?
            .ok_or("a download has no Merkle root")?,
        ticket: row.try_get("ticket").map_err(get)?,
        seller: row.try_get("seller").map_err(get)?,
        seller_endpoint: row.try_get("seller_endpoint").map_err(get)?,
        seller_key: hash32(row.try_get("seller_key").map_err(get)?, "seller key")?
            .ok_or("a download has no seller key")?,
        expires_at_ms: to_u64(row.try_get("expires_at_ms").map_err(get)?),
        out_path: path_from_bytes(row.try_get("out_path").map_err(get)?),
        state: DownloadState::parse(&state)
            .ok_or_else(|| format!("unknown download state {state:?}"))?,
        ciphertext_root: hash32(row.try_get("ciphertext_root").map_err(get)?, "root")?,
        complete_request: row.try_get("complete_request").map_err(get)?,
        escrow_key: hash32(row.try_get("escrow_key").map_err(get)?, "escrow key")?,
        started_ms: to_u64(row.try_get("started_ms").map_err(get)?),
        finished_ms: row
            .try_get::<Option<i64>, _>("finished_ms")
            .map_err(get)?
            .map(to_u64),
        disputed: row.try_get::<i64, _>("disputed").map_err(get)? == 1,
        dispute_refused: row.try_get::<i64, _>("disputed").map_err(get)? == 2,
    })
}

impl PeerStore {
    /// The directory beside the database where downloads keep their
    /// ciphertext until the file is written.
    #[must_use]
    pub fn downloads_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map_or_else(|| PathBuf::from("downloads"), |d| d.join("downloads"))
    }

    /// Records a new download.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn save_download(&self, d: &Download) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO downloads (purchase_id, buyer_id, listing_id, title, price, size, \
             chunk_size, merkle_root, ticket, seller, seller_endpoint, seller_key, expires_at_ms, \
             out_path, state, ciphertext_root, complete_request, escrow_key, started_ms, finished_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (purchase_id) DO NOTHING",
        )
        .bind(to_i64(d.purchase_id))
        .bind(to_i64(d.buyer_id))
        .bind(to_i64(d.listing_id))
        .bind(&d.title)
        .bind(to_i64(d.price))
        .bind(to_i64(d.size))
        .bind(i64::from(d.chunk_size))
        .bind(d.merkle_root.as_slice())
        .bind(&d.ticket)
        .bind(&d.seller)
        .bind(&d.seller_endpoint)
        .bind(d.seller_key.as_slice())
        .bind(to_i64(d.expires_at_ms))
        .bind(path_bytes(&d.out_path))
        .bind(d.state.as_str())
        .bind(d.ciphertext_root.map(|r| r.to_vec()))
        .bind(&d.complete_request)
        .bind(d.escrow_key.map(|k| k.to_vec()))
        .bind(to_i64(d.started_ms))
        .bind(d.finished_ms.map(to_i64))
        .execute(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// One download.
    ///
    /// # Errors
    /// When SQLite fails or the row is damaged.
    pub async fn download(&self, purchase_id: u64) -> Result<Option<Download>, StoreError> {
        let row = sqlx::query("SELECT * FROM downloads WHERE purchase_id = ?")
            .bind(to_i64(purchase_id))
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| database(&self.path, source))?;
        row.as_ref().map(|r| download_of(&self.path, r)).transpose()
    }

    /// The downloads of `buyer_id`, newest first.
    ///
    /// # Errors
    /// When SQLite fails or a row is damaged.
    pub async fn downloads(&self, buyer_id: u64) -> Result<Vec<Download>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM downloads WHERE buyer_id = ? ORDER BY purchase_id DESC")
                .bind(to_i64(buyer_id))
                .fetch_all(&self.pool)
                .await
                .map_err(|source| database(&self.path, source))?;
        rows.iter().map(|r| download_of(&self.path, r)).collect()
    }

    /// The newest unfinished download of `listing_id` by `buyer_id`, if any.
    ///
    /// # Errors
    /// When SQLite fails or the row is damaged.
    pub async fn live_download_of(
        &self,
        buyer_id: u64,
        listing_id: u64,
    ) -> Result<Option<Download>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM downloads WHERE buyer_id = ? AND listing_id = ? \
             AND state IN ('fetching', 'paid') ORDER BY purchase_id DESC LIMIT 1",
        )
        .bind(to_i64(buyer_id))
        .bind(to_i64(listing_id))
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        row.as_ref().map(|r| download_of(&self.path, r)).transpose()
    }

    /// Records the ciphertext root the seller sealed.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn set_download_sealed(
        &self,
        purchase_id: u64,
        root: &Hash,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE downloads SET ciphertext_root = ? WHERE purchase_id = ?")
            .bind(root.as_slice())
            .bind(to_i64(purchase_id))
            .execute(&self.pool)
            .await
            .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// Records that the download was disputed (`upheld`: the sale was
    /// reversed; else the dispute was refused for good). Its files stay, as
    /// evidence; it is over either way.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn set_download_disputed(
        &self,
        purchase_id: u64,
        upheld: bool,
        finished_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE downloads SET state = 'cancelled', disputed = ?, escrow_key = NULL, \
             finished_ms = ? WHERE purchase_id = ?",
        )
        .bind(if upheld { 1 } else { 2 })
        .bind(to_i64(finished_ms))
        .bind(to_i64(purchase_id))
        .execute(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// Records where the seller serves now.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn set_download_endpoint(
        &self,
        purchase_id: u64,
        endpoint: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE downloads SET seller_endpoint = ? WHERE purchase_id = ?")
            .bind(endpoint)
            .bind(to_i64(purchase_id))
            .execute(&self.pool)
            .await
            .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// Records the released key: the download is paid.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn set_download_paid(
        &self,
        purchase_id: u64,
        key: &[u8; 32],
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE downloads SET state = 'paid', escrow_key = ? WHERE purchase_id = ?")
            .bind(key.as_slice())
            .bind(to_i64(purchase_id))
            .execute(&self.pool)
            .await
            .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// Closes a download (done, cancelled or expired) and forgets its key.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn finish_download(
        &self,
        purchase_id: u64,
        state: DownloadState,
        finished_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE downloads SET state = ?, escrow_key = NULL, finished_ms = ? WHERE purchase_id = ?",
        )
        .bind(state.as_str())
        .bind(to_i64(finished_ms))
        .bind(to_i64(purchase_id))
        .execute(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// The key for `key.purchase_id`: the one stored before if there is
    /// one (a resumed fetch must send the same bytes), else `key`, stored.
    ///
    /// # Errors
    /// When SQLite fails or the row is damaged.
    pub async fn sale_key_or_insert(&self, key: &SaleKey) -> Result<SaleKey, StoreError> {
        sqlx::query(
            "INSERT INTO sale_keys (purchase_id, seller_id, listing_id, buyer_id, escrow_key, \
             ciphertext_root, deposit_request, created_ms) VALUES (?, ?, ?, ?, ?, NULL, ?, ?) \
             ON CONFLICT (purchase_id) DO NOTHING",
        )
        .bind(to_i64(key.purchase_id))
        .bind(to_i64(key.seller_id))
        .bind(to_i64(key.listing_id))
        .bind(to_i64(key.buyer_id))
        .bind(key.escrow_key.as_slice())
        .bind(&key.deposit_request)
        .bind(to_i64(key.created_ms))
        .execute(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        let row = sqlx::query("SELECT * FROM sale_keys WHERE purchase_id = ?")
            .bind(to_i64(key.purchase_id))
            .fetch_one(&self.pool)
            .await
            .map_err(|source| database(&self.path, source))?;
        let get = |e: sqlx::Error| corrupt(&self.path, &format!("a sale key does not read: {e}"));
        let key32 =
            |v: Option<Vec<u8>>, what: &str| hash32(v, what).map_err(|e| corrupt(&self.path, &e));
        Ok(SaleKey {
            purchase_id: to_u64(row.try_get("purchase_id").map_err(get)?),
            seller_id: to_u64(row.try_get("seller_id").map_err(get)?),
            listing_id: to_u64(row.try_get("listing_id").map_err(get)?),
            buyer_id: to_u64(row.try_get("buyer_id").map_err(get)?),
            escrow_key: key32(row.try_get("escrow_key").map_err(get)?, "escrow key")?
                .ok_or_else(|| corrupt(&self.path, "a sale key is missing"))?,
            ciphertext_root: key32(row.try_get("ciphertext_root").map_err(get)?, "root")?,
            deposit_request: row.try_get("deposit_request").map_err(get)?,
            created_ms: to_u64(row.try_get("created_ms").map_err(get)?),
        })
    }

    /// Records that the key of `purchase_id` is deposited, with `root`.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn set_sale_deposited(
        &self,
        purchase_id: u64,
        root: &Hash,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE sale_keys SET ciphertext_root = ? WHERE purchase_id = ?")
            .bind(root.as_slice())
            .bind(to_i64(purchase_id))
            .execute(&self.pool)
            .await
            .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// The plaintext leaves of listing `listing_id` computed when its file
    /// had modification time `modified_ms`, if still known.
    ///
    /// # Errors
    /// When SQLite fails or the row is damaged.
    pub async fn listing_leaves(
        &self,
        listing_id: u64,
        modified_ms: Option<u64>,
    ) -> Result<Option<Vec<Hash>>, StoreError> {
        let row: Option<(Option<i64>, Vec<u8>)> =
            sqlx::query_as("SELECT modified_ms, leaves FROM listing_leaves WHERE listing_id = ?")
                .bind(to_i64(listing_id))
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| database(&self.path, source))?;
        let Some((stored_ms, bytes)) = row else {
            return Ok(None);
        };
        if stored_ms.map(to_u64) != modified_ms || modified_ms.is_none() {
            return Ok(None);
        }
        if bytes.len() % 32 != 0 {
            return Err(corrupt(&self.path, "stored leaf hashes are not whole"));
        }
        Ok(Some(
            bytes
                .chunks_exact(32)
                .map(|c| {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(c);
                    h
                })
                .collect(),
        ))
    }

    /// Remembers the plaintext leaves of listing `listing_id`.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn save_listing_leaves(
        &self,
        listing_id: u64,
        modified_ms: Option<u64>,
        leaves: &[Hash],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO listing_leaves (listing_id, modified_ms, leaves) VALUES (?, ?, ?) \
             ON CONFLICT (listing_id) DO UPDATE SET modified_ms = excluded.modified_ms, \
             leaves = excluded.leaves",
        )
        .bind(to_i64(listing_id))
        .bind(modified_ms.map(to_i64))
        .bind(leaves.concat())
        .execute(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        Ok(())
    }
}

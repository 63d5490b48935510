//! Queries of purchases: the rows the purchase commands change, and the
//! views the purchase service reads (with the buyer's and seller's names).

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqliteExecutor};

use super::{to_i64, to_u64};
use crate::domain::purchases::{PurchaseFacts, PurchaseState};

/// A purchase as stored, with the names the API shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseRow {
    /// Its id.
    pub id: u64,
    /// The listing bought.
    pub listing_id: u64,
    /// The listing's title when bought.
    pub title: String,
    /// The buyer.
    pub buyer_id: u64,
    /// The buyer's name.
    pub buyer: String,
    /// The buyer's identity key bound in the ticket.
    pub buyer_key: [u8; 32],
    /// The seller.
    pub seller_id: u64,
    /// The seller's name.
    pub seller: String,
    /// Cents.
    pub price: u64,
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Plaintext Merkle root.
    pub merkle_root: [u8; 32],
    /// The hold on the buyer's money (none for a free listing).
    pub hold_id: Option<i64>,
    /// Where it is.
    pub state: PurchaseState,
    /// The escrowed key, once deposited.
    pub escrow_key: Option<[u8; 32]>,
    /// The committed ciphertext root, once deposited.
    pub ciphertext_root: Option<[u8; 32]>,
    /// Cents the operator kept.
    pub commission: u64,
    /// Opened at (leader's clock, Unix ms).
    pub created_ms: u64,
    /// Lapses at.
    pub expires_at_ms: u64,
    /// Closed at, once completed, cancelled or expired.
    pub closed_ms: Option<u64>,
    /// What became of the proceeds of a completed purchase.
    pub proceeds: Option<Proceeds>,
    /// When pending proceeds become available (the end of the dispute
    /// window).
    pub release_at_ms: Option<u64>,
}

/// What became of a completed purchase's proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proceeds {
    /// Held on the seller's account until the dispute window ends.
    Pending,
    /// Available to the seller.
    Released,
    /// Given back to the buyer after a proven dispute.
    Refunded,
}

impl Proceeds {
    /// The name stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Proceeds::Pending => "pending",
            Proceeds::Released => "released",
            Proceeds::Refunded => "refunded",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Proceeds::Pending),
            "released" => Some(Proceeds::Released),
            "refunded" => Some(Proceeds::Refunded),
            _ => None,
        }
    }
}

impl PurchaseRow {
    /// What the seller receives: the price less the commission.
    #[must_use]
    pub fn net(&self) -> u64 {
        self.price.saturating_sub(self.commission)
    }
}

impl PurchaseRow {
    /// What the purchase rules need.
    #[must_use]
    pub fn facts(&self) -> PurchaseFacts {
        PurchaseFacts {
            id: self.id,
            buyer_id: self.buyer_id,
            seller_id: self.seller_id,
            state: self.state,
            expires_at_ms: self.expires_at_ms,
            escrow: self.escrow_key.zip(self.ciphertext_root),
        }
    }
}

/// A purchase about to be opened.
#[derive(Debug, Clone)]
pub struct NewPurchase<'a> {
    /// The listing.
    pub listing_id: u64,
    /// Its title now.
    pub title: &'a str,
    /// The buyer.
    pub buyer_id: u64,
    /// The buyer's identity key.
    pub buyer_key: &'a [u8],
    /// The seller.
    pub seller_id: u64,
    /// Cents.
    pub price: u64,
    /// File size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Plaintext Merkle root.
    pub merkle_root: &'a [u8; 32],
    /// Lapses at.
    pub expires_at_ms: u64,
}

const COLUMNS: &str = "p.id, p.listing_id, p.title, p.buyer_id, b.username AS buyer, p.buyer_key, \
     p.seller_id, s.username AS seller, p.price, p.size, p.chunk_size, p.merkle_root, p.hold_id, \
     p.state, p.escrow_key, p.ciphertext_root, p.commission, p.created_ms, p.expires_at_ms, \
     p.closed_ms, p.proceeds, p.release_at_ms";
const JOINS: &str = "JOIN users b ON b.id = p.buyer_id JOIN users s ON s.id = p.seller_id";

fn key32(row: &SqliteRow, column: &str) -> Result<Option<[u8; 32]>, sqlx::Error> {
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    bytes
        .map(|b| {
            <[u8; 32]>::try_from(b.as_slice()).map_err(|_| sqlx::Error::ColumnDecode {
                index: column.into(),
                source: "not 32 bytes".into(),
            })
        })
        .transpose()
}

fn from_row(row: &SqliteRow) -> Result<PurchaseRow, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let missing = |c: &str| sqlx::Error::ColumnDecode {
        index: c.into(),
        source: "missing".into(),
    };
    Ok(PurchaseRow {
        id: to_u64(row.try_get("id")?),
        listing_id: to_u64(row.try_get("listing_id")?),
        title: row.try_get("title")?,
        buyer_id: to_u64(row.try_get("buyer_id")?),
        buyer: row.try_get("buyer")?,
        buyer_key: key32(row, "buyer_key")?.ok_or_else(|| missing("buyer_key"))?,
        seller_id: to_u64(row.try_get("seller_id")?),
        seller: row.try_get("seller")?,
        price: to_u64(row.try_get("price")?),
        size: to_u64(row.try_get("size")?),
        chunk_size: u32::try_from(row.try_get::<i64, _>("chunk_size")?).unwrap_or(0),
        merkle_root: key32(row, "merkle_root")?.ok_or_else(|| missing("merkle_root"))?,
        hold_id: row.try_get("hold_id")?,
        state: PurchaseState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown purchase state {state:?}").into(),
        })?,
        escrow_key: key32(row, "escrow_key")?,
        ciphertext_root: key32(row, "ciphertext_root")?,
        commission: to_u64(row.try_get("commission")?),
        created_ms: to_u64(row.try_get("created_ms")?),
        expires_at_ms: to_u64(row.try_get("expires_at_ms")?),
        closed_ms: row.try_get::<Option<i64>, _>("closed_ms")?.map(to_u64),
        proceeds: row
            .try_get::<Option<String>, _>("proceeds")?
            .as_deref()
            .and_then(Proceeds::parse),
        release_at_ms: row.try_get::<Option<i64>, _>("release_at_ms")?.map(to_u64),
    })
}

/// Opens a purchase (state `open`, no hold yet) and returns its id.
///
/// # Errors
/// Storage errors.
pub async fn insert(
    conn: &mut SqliteConnection,
    p: &NewPurchase<'_>,
    index: u64,
    time_ms: u64,
) -> Result<u64, sqlx::Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO purchases (listing_id, buyer_id, seller_id, buyer_key, title, price, size, \
         chunk_size, merkle_root, state, created_ms, created_index, expires_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'open', ?10, ?11, ?12) RETURNING id",
    )
    .bind(to_i64(p.listing_id))
    .bind(to_i64(p.buyer_id))
    .bind(to_i64(p.seller_id))
    .bind(p.buyer_key)
    .bind(p.title)
    .bind(to_i64(p.price))
    .bind(to_i64(p.size))
    .bind(i64::from(p.chunk_size))
    .bind(p.merkle_root.as_slice())
    .bind(to_i64(time_ms))
    .bind(to_i64(index))
    .bind(to_i64(p.expires_at_ms))
    .fetch_one(conn)
    .await?;
    Ok(to_u64(id))
}

/// Links a purchase to the hold on the buyer's money.
///
/// # Errors
/// Storage errors.
pub async fn set_hold(
    conn: &mut SqliteConnection,
    purchase_id: u64,
    hold_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE purchases SET hold_id = ?2 WHERE id = ?1")
        .bind(to_i64(purchase_id))
        .bind(hold_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// One purchase.
///
/// # Errors
/// Storage errors.
pub async fn get(
    conn: impl SqliteExecutor<'_>,
    purchase_id: u64,
) -> Result<Option<PurchaseRow>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM purchases p {JOINS} WHERE p.id = ?1"
    ))
    .bind(to_i64(purchase_id))
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Records the deposited key: the purchase becomes `keyed`.
///
/// # Errors
/// Storage errors.
pub async fn set_keyed(
    conn: &mut SqliteConnection,
    purchase_id: u64,
    key: &[u8; 32],
    ciphertext_root: &[u8; 32],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE purchases SET state = 'keyed', escrow_key = ?2, ciphertext_root = ?3 WHERE id = ?1",
    )
    .bind(to_i64(purchase_id))
    .bind(key.as_slice())
    .bind(ciphertext_root.as_slice())
    .execute(conn)
    .await?;
    Ok(())
}

/// Closes a purchase: completed (with the commission kept), cancelled or
/// expired.
///
/// # Errors
/// Storage errors.
pub async fn close(
    conn: &mut SqliteConnection,
    purchase_id: u64,
    state: PurchaseState,
    commission: u64,
    index: u64,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE purchases SET state = ?2, commission = ?3, closed_index = ?4, closed_ms = ?5 \
         WHERE id = ?1",
    )
    .bind(to_i64(purchase_id))
    .bind(state.as_str())
    .bind(to_i64(commission))
    .bind(to_i64(index))
    .bind(to_i64(time_ms))
    .execute(conn)
    .await?;
    Ok(())
}

/// Ids of live purchases past their expiry at `now_ms`, oldest first, at
/// most `limit`.
///
/// # Errors
/// Storage errors.
pub async fn expired(
    conn: impl SqliteExecutor<'_>,
    now_ms: u64,
    limit: u32,
) -> Result<Vec<u64>, sqlx::Error> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM purchases WHERE state IN ('open', 'keyed') AND expires_at_ms <= ?1 \
         ORDER BY expires_at_ms, id LIMIT ?2",
    )
    .bind(to_i64(now_ms))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    Ok(ids.into_iter().map(to_u64).collect())
}

/// The purchase a hold pays for, if any.
///
/// # Errors
/// Storage errors.
pub async fn purchase_of_hold(
    conn: impl SqliteExecutor<'_>,
    hold_id: i64,
) -> Result<Option<u64>, sqlx::Error> {
    let id: Option<i64> = sqlx::query_scalar("SELECT id FROM purchases WHERE hold_id = ?1")
        .bind(hold_id)
        .fetch_optional(conn)
        .await?;
    Ok(id.map(to_u64))
}

/// Which side of a purchase a listing is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Purchases the user made.
    Buyer,
    /// Purchases of the user's listings.
    Seller,
}

/// A user's purchases or sales, newest first, with ids below `before_id`
/// (0 = from the newest).
///
/// # Errors
/// Storage errors.
pub async fn list(
    conn: impl SqliteExecutor<'_>,
    user_id: u64,
    side: Side,
    before_id: u64,
    limit: u32,
) -> Result<Vec<PurchaseRow>, sqlx::Error> {
    let column = match side {
        Side::Buyer => "buyer_id",
        Side::Seller => "seller_id",
    };
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM purchases p {JOINS} WHERE p.{column} = ?1 AND p.id < ?2 \
         ORDER BY p.id DESC LIMIT ?3"
    ))
    .bind(to_i64(user_id))
    .bind(if before_id == 0 {
        i64::MAX
    } else {
        to_i64(before_id)
    })
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Marks a completed purchase's proceeds (pending until `release_at_ms`,
/// released, or refunded).
///
/// # Errors
/// Storage errors.
pub async fn set_proceeds(
    conn: &mut SqliteConnection,
    purchase_id: u64,
    proceeds: Proceeds,
    release_at_ms: Option<u64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE purchases SET proceeds = ?2, release_at_ms = COALESCE(?3, release_at_ms) WHERE id = ?1",
    )
    .bind(to_i64(purchase_id))
    .bind(proceeds.as_str())
    .bind(release_at_ms.map(to_i64))
    .execute(conn)
    .await?;
    Ok(())
}

/// Ids of purchases whose pending proceeds are due at `now_ms`, oldest
/// first, at most `limit`.
///
/// # Errors
/// Storage errors.
pub async fn due_proceeds(
    conn: impl SqliteExecutor<'_>,
    now_ms: u64,
    limit: u32,
) -> Result<Vec<u64>, sqlx::Error> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM purchases WHERE proceeds = 'pending' AND release_at_ms <= ?1 \
         ORDER BY release_at_ms, id LIMIT ?2",
    )
    .bind(to_i64(now_ms))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    Ok(ids.into_iter().map(to_u64).collect())
}

/// Counts a completed sale (`strike` false) or a lost dispute (`strike`
/// true) on the seller.
///
/// # Errors
/// Storage errors.
pub async fn count_for_seller(
    conn: &mut SqliteConnection,
    seller_id: u64,
    strike: bool,
) -> Result<(), sqlx::Error> {
    let sql = if strike {
        "UPDATE users SET strikes = strikes + 1 WHERE id = ?1"
    } else {
        "UPDATE users SET sales = sales + 1 WHERE id = ?1"
    };
    sqlx::query(sql)
        .bind(to_i64(seller_id))
        .execute(conn)
        .await?;
    Ok(())
}

/// A proven dispute, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisputeRow {
    /// The purchase.
    pub purchase_id: u64,
    /// The buyer.
    pub buyer_id: u64,
    /// The seller.
    pub seller_id: u64,
    /// The chunk proven bad.
    pub chunk_index: u64,
    /// What was wrong with it.
    pub fault: String,
    /// BLAKE3 of the evidence.
    pub evidence_hash: [u8; 32],
}

/// Records a proven dispute.
///
/// # Errors
/// Storage errors.
pub async fn insert_dispute(
    conn: &mut SqliteConnection,
    d: &DisputeRow,
    index: u64,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO disputes (purchase_id, buyer_id, seller_id, chunk_index, fault, evidence_hash, \
         created_ms, created_index) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(to_i64(d.purchase_id))
    .bind(to_i64(d.buyer_id))
    .bind(to_i64(d.seller_id))
    .bind(to_i64(d.chunk_index))
    .bind(&d.fault)
    .bind(d.evidence_hash.as_slice())
    .bind(to_i64(time_ms))
    .bind(to_i64(index))
    .execute(conn)
    .await?;
    Ok(())
}

/// The dispute window, in milliseconds.
///
/// # Errors
/// Storage errors.
pub async fn dispute_window_ms(conn: impl SqliteExecutor<'_>) -> Result<u64, sqlx::Error> {
    let value: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?1")
        .bind(DISPUTE_WINDOW_SETTING)
        .fetch_optional(conn)
        .await?;
    Ok(value
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_DISPUTE_WINDOW_MS))
}

/// Sets the dispute window.
///
/// # Errors
/// Storage errors.
pub async fn set_dispute_window_ms(
    conn: &mut SqliteConnection,
    ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
    )
    .bind(DISPUTE_WINDOW_SETTING)
    .bind(ms.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// The replicated purchase hold time, ms; `None` until an admin sets one
/// (then each node's `--purchase-hold-ms` applies).
///
/// # Errors
/// Storage errors.
pub async fn hold_ttl_ms(conn: impl SqliteExecutor<'_>) -> Result<Option<u64>, sqlx::Error> {
    let value: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?1")
        .bind(HOLD_TTL_SETTING)
        .fetch_optional(conn)
        .await?;
    Ok(value.and_then(|v| v.parse().ok()).filter(|ms| *ms > 0))
}

/// Sets the purchase hold time (0 clears it).
///
/// # Errors
/// Storage errors.
pub async fn set_hold_ttl_ms(conn: &mut SqliteConnection, ms: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
    )
    .bind(HOLD_TTL_SETTING)
    .bind(ms.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Settings key of the purchase hold time.
const HOLD_TTL_SETTING: &str = "hold_ttl_ms";
/// Settings key of the dispute window.
const DISPUTE_WINDOW_SETTING: &str = "dispute_window_ms";
/// The dispute window until an admin sets one: 24 hours.
pub const DEFAULT_DISPUTE_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// The longest dispute window: 90 days.
pub const MAX_DISPUTE_WINDOW_MS: u64 = 90 * 24 * 3600 * 1000;

/// Proceeds of `user_id`'s sales still held for their dispute window, in
/// cents.
///
/// # Errors
/// Storage errors.
pub async fn pending_proceeds(
    conn: impl SqliteExecutor<'_>,
    user_id: u64,
) -> Result<u64, sqlx::Error> {
    let sum: Option<i64> = sqlx::query_scalar(
        "SELECT SUM(price - commission) FROM purchases WHERE seller_id = ?1 AND proceeds = 'pending'",
    )
    .bind(to_i64(user_id))
    .fetch_one(conn)
    .await?;
    Ok(sum.map_or(0, to_u64))
}

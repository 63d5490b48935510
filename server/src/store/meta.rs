//! Raft bookkeeping kept inside the state database, so it changes in the
//! same transaction as the data it describes.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::SqliteConnection;

/// Key of the last applied log id.
pub const LAST_APPLIED: &str = "last_applied";
/// Key of the last membership.
pub const MEMBERSHIP: &str = "membership";

/// Reads a bincode value.
///
/// # Errors
/// Storage or decoding errors.
pub async fn get<T: DeserializeOwned>(
    conn: &mut SqliteConnection,
    key: &str,
) -> Result<Option<T>, sqlx::Error> {
    let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT value FROM meta WHERE key = ?1")
        .bind(key)
        .fetch_optional(conn)
        .await?;
    row.map(|(v,)| bincode::deserialize(&v).map_err(|e| sqlx::Error::Decode(e)))
        .transpose()
}

/// Writes a bincode value.
///
/// # Errors
/// Storage or encoding errors.
pub async fn set<T: Serialize>(
    conn: &mut SqliteConnection,
    key: &str,
    value: &T,
) -> Result<(), sqlx::Error> {
    let bytes = bincode::serialize(value).map_err(|e| sqlx::Error::Encode(e))?;
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
    )
    .bind(key)
    .bind(bytes)
    .execute(conn)
    .await?;
    Ok(())
}

/// The index of the last applied log entry as seen by `conn` (0 before the
/// first). Read inside the same transaction as the rows a reply is made
/// of, it is the exact index of the state that reply shows: the applier
/// may commit more batches between two statements outside a transaction.
///
/// # Errors
/// Storage or decoding errors.
pub async fn applied_index(conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
    let applied: Option<crate::raft::typ::LogId> = get(conn, LAST_APPLIED).await?;
    Ok(applied.map_or(0, |log_id| log_id.index))
}

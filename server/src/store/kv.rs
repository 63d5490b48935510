//! Queries of the replicated key/value register.

use sqlx::{SqliteConnection, SqliteExecutor};

use super::{to_i64, to_u64};

/// Writes `value` under `key` and returns the key's new revision.
///
/// # Errors
/// Storage errors.
pub async fn put(
    conn: &mut SqliteConnection,
    key: &str,
    value: &[u8],
    index: u64,
) -> Result<u64, sqlx::Error> {
    let (revision,): (i64,) = sqlx::query_as(
        "INSERT INTO kv (key, value, revision, log_index) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT (key) DO UPDATE SET value = ?2, revision = revision + 1, log_index = ?3
         RETURNING revision",
    )
    .bind(key)
    .bind(value)
    .bind(to_i64(index))
    .fetch_one(conn)
    .await?;
    Ok(to_u64(revision))
}

/// A stored value and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The value.
    pub value: Vec<u8>,
    /// Writes to the key so far.
    pub revision: u64,
}

/// Reads the value under `key`.
///
/// # Errors
/// Storage errors.
pub async fn get(conn: impl SqliteExecutor<'_>, key: &str) -> Result<Option<Stored>, sqlx::Error> {
    let row: Option<(Vec<u8>, i64)> =
        sqlx::query_as("SELECT value, revision FROM kv WHERE key = ?1")
            .bind(key)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(value, revision)| Stored {
        value,
        revision: to_u64(revision),
    }))
}

//! The exactly-once table: the first outcome of every client request.

use sqlx::SqliteConnection;

use super::to_i64;
use crate::raft::command::{ApplyContext, Outcome, RequestKey};

/// A request seen before.
pub struct SeenRequest {
    /// Fingerprint of the body it had.
    pub body_hash: Vec<u8>,
    /// What it produced.
    pub outcome: Outcome,
}

/// Looks up a request id.
///
/// # Errors
/// Storage errors (a stored outcome that does not decode is one).
pub async fn find(
    conn: &mut SqliteConnection,
    key: &RequestKey,
) -> Result<Option<SeenRequest>, sqlx::Error> {
    let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT body_hash, outcome FROM requests WHERE client = ?1 AND request_id = ?2",
    )
    .bind(&key.client)
    .bind(&key.id)
    .fetch_optional(conn)
    .await?;
    row.map(|(body_hash, outcome)| {
        let outcome = bincode::deserialize(&outcome).map_err(|e| sqlx::Error::Decode(e))?;
        Ok(SeenRequest { body_hash, outcome })
    })
    .transpose()
}

/// Remembers a request's outcome.
///
/// # Errors
/// Storage errors.
pub async fn insert(
    conn: &mut SqliteConnection,
    key: &RequestKey,
    body_hash: &[u8],
    outcome: &Outcome,
    ctx: ApplyContext,
) -> Result<(), sqlx::Error> {
    let outcome = bincode::serialize(outcome).map_err(|e| sqlx::Error::Encode(e))?;
    sqlx::query(
        "INSERT INTO requests (client, request_id, body_hash, outcome, log_index, time_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(&key.client)
    .bind(&key.id)
    .bind(body_hash)
    .bind(outcome)
    .bind(to_i64(ctx.index))
    .bind(to_i64(ctx.time_ms))
    .execute(conn)
    .await?;
    Ok(())
}

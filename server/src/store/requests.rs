//! The exactly-once table: the first outcome of every client request.

use std::collections::HashMap;

use sqlx::SqliteConnection;

use super::to_i64;
use crate::raft::command::{ApplyContext, Outcome, RequestKey};

/// A request seen before.
pub struct SeenRequest {
    /// Fingerprint of the body it had.
    pub body_hash: Vec<u8>,
    /// What it produced.
    pub outcome: Outcome,
    /// The log index it was first applied at.
    pub log_index: u64,
}

/// Rows per statement, well under SQLite's bound-variable limit.
const ROWS_PER_STATEMENT: usize = 400;

/// Looks up many request ids at once.
///
/// # Errors
/// Storage errors (a stored outcome that does not decode is one).
pub async fn find_many(
    conn: &mut SqliteConnection,
    keys: &[&RequestKey],
) -> Result<HashMap<RequestKey, SeenRequest>, sqlx::Error> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "SELECT client, request_id, body_hash, outcome, log_index FROM requests WHERE (client, request_id) IN (VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 { "(?,?)" } else { ",(?,?)" });
        }
        sql.push(')');
        let mut query = sqlx::query_as::<_, (String, String, Vec<u8>, Vec<u8>, i64)>(&sql);
        for key in chunk {
            query = query.bind(&key.client).bind(&key.id);
        }
        for (client, id, body_hash, outcome, log_index) in query.fetch_all(&mut *conn).await? {
            let outcome = bincode::deserialize(&outcome).map_err(|e| sqlx::Error::Decode(e))?;
            found.insert(
                RequestKey { client, id },
                SeenRequest {
                    body_hash,
                    outcome,
                    log_index: super::to_u64(log_index),
                },
            );
        }
    }
    Ok(found)
}

/// Remembers the outcomes of newly applied requests.
///
/// # Errors
/// Storage errors.
pub async fn insert_many(
    conn: &mut SqliteConnection,
    rows: &[(&RequestKey, [u8; 32], Outcome)],
    ctx: ApplyContext,
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO requests (client, request_id, body_hash, outcome, log_index, time_ms) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 {
                "(?,?,?,?,?,?)"
            } else {
                ",(?,?,?,?,?,?)"
            });
        }
        let mut query = sqlx::query(&sql);
        for (key, hash, outcome) in chunk {
            let outcome = bincode::serialize(outcome).map_err(|e| sqlx::Error::Encode(e))?;
            query = query
                .bind(&key.client)
                .bind(&key.id)
                .bind(hash.to_vec())
                .bind(outcome)
                .bind(to_i64(ctx.index))
                .bind(to_i64(ctx.time_ms));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Most rows one prune removes (the next prune takes the rest).
const PRUNE_LIMIT: i64 = 10_000;

/// Forgets requests applied before `horizon_ms` (leader's clock).
///
/// # Errors
/// Storage errors.
pub async fn prune(conn: &mut SqliteConnection, horizon_ms: u64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM requests WHERE (client, request_id) IN
           (SELECT client, request_id FROM requests WHERE time_ms < ?1 ORDER BY time_ms LIMIT ?2)",
    )
    .bind(to_i64(horizon_ms))
    .bind(PRUNE_LIMIT)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

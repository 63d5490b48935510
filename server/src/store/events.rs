//! Queries of the replicated event log.

use sqlx::{SqliteConnection, SqliteExecutor};

use super::{to_i64, to_u64};

/// Events kept; older ones are pruned as new ones arrive (on every node
/// alike, inside the command that adds one).
pub const MAX_EVENTS: u64 = 10_000;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Increasing id.
    pub id: u64,
    /// Leader's time of the command that recorded it.
    pub time_ms: u64,
    /// The node that recorded it.
    pub node_id: u64,
    /// What happened (see `events::EventKind`).
    pub kind: String,
    /// The node it is about (0: none).
    pub subject_node_id: u64,
    /// The recording node's term.
    pub term: u64,
    /// A sentence for people.
    pub message: String,
}

/// The fields of a new event.
pub struct NewEvent<'a> {
    /// The node that recorded it.
    pub node_id: u64,
    /// What happened.
    pub kind: &'a str,
    /// The node it is about (0: none).
    pub subject_node_id: u64,
    /// The recording node's term.
    pub term: u64,
    /// A sentence for people.
    pub message: &'a str,
}

/// Appends an event and prunes all but the newest [`MAX_EVENTS`]. Returns
/// the new event's id.
///
/// # Errors
/// Storage errors.
pub async fn insert(
    conn: &mut SqliteConnection,
    event: &NewEvent<'_>,
    time_ms: u64,
    log_index: u64,
) -> Result<u64, sqlx::Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (time_ms, node_id, kind, subject_node_id, term, message, log_index) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
    )
    .bind(to_i64(time_ms))
    .bind(to_i64(event.node_id))
    .bind(event.kind)
    .bind(to_i64(event.subject_node_id))
    .bind(to_i64(event.term))
    .bind(event.message)
    .bind(to_i64(log_index))
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM events WHERE id <= ?1")
        .bind(id.saturating_sub(to_i64(MAX_EVENTS)))
        .execute(conn)
        .await?;
    Ok(to_u64(id))
}

type EventTuple = (i64, i64, i64, String, i64, i64, String);

/// Up to `limit` events with an id above `since_id`, oldest first.
///
/// # Errors
/// Storage errors.
pub async fn page(
    conn: impl SqliteExecutor<'_>,
    since_id: u64,
    limit: u32,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let rows: Vec<EventTuple> = sqlx::query_as(
        "SELECT id, time_ms, node_id, kind, subject_node_id, term, message FROM events \
         WHERE id > ?1 ORDER BY id LIMIT ?2",
    )
    .bind(to_i64(since_id))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|t| EventRow {
            id: to_u64(t.0),
            time_ms: to_u64(t.1),
            node_id: to_u64(t.2),
            kind: t.3,
            subject_node_id: to_u64(t.4),
            term: to_u64(t.5),
            message: t.6,
        })
        .collect())
}

/// The newest event's id (0 when there is none).
///
/// # Errors
/// Storage errors.
pub async fn last_id(conn: impl SqliteExecutor<'_>) -> Result<u64, sqlx::Error> {
    let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM events")
        .fetch_one(conn)
        .await?;
    Ok(id.map_or(0, to_u64))
}

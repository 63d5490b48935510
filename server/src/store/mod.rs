//! sqlx access to a node's SQLite files: the state database (schema from
//! `migrations/node`) and the queries the state machine and the read paths
//! run against it.

pub mod accounts;
pub mod audit;
pub mod catalogue;
pub mod digest;
pub mod events;
pub mod kv;
pub mod ledger;
pub mod meta;
pub mod purchases;
pub mod requests;
pub mod users;

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqliteConnection, SqlitePool};

/// Readers of the state database (search, balances, status). WAL lets them
/// run beside the single writer.
const READ_POOL_SIZE: u32 = 8;

/// How long a connection waits on a lock before it reports busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn state_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL: a commit is not fsynced, but WAL keeps the file consistent,
        // a process crash loses nothing, and the Raft log (fsynced) replays
        // whatever a power loss takes back. Snapshots checkpoint with a sync
        // before the log is purged behind them.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // Reads (search above all) touch the full-text index all over:
        // mapping the file saves a read syscall and a copy per page, and a
        // larger page cache keeps the hot index pages decoded.
        .pragma("mmap_size", MMAP_BYTES.to_string())
        .pragma("cache_size", format!("-{CACHE_KIB}"))
}

/// How much of the state database each connection maps into memory.
const MMAP_BYTES: u64 = 1 << 30;
/// Page cache per connection, KiB.
const CACHE_KIB: u64 = 32 * 1024;

/// Opens the state database: runs the migrations and returns the writer
/// connection (owned by the state machine) and a pool of readers.
///
/// # Errors
/// When the file cannot be opened or migrated.
pub async fn open_state(path: &Path) -> Result<(SqliteConnection, SqlitePool), sqlx::Error> {
    let mut writer = state_options(path).connect().await?;
    sqlx::migrate!("../migrations/node")
        .run(&mut writer)
        .await
        .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
    let readers = SqlitePoolOptions::new()
        .max_connections(READ_POOL_SIZE)
        .min_connections(1)
        .connect_with(state_options(path).read_only(true))
        .await?;
    Ok((writer, readers))
}

/// Opens another SQLite file read-only (a snapshot being inspected).
///
/// # Errors
/// When the file cannot be opened.
pub async fn open_read_only(path: &Path) -> Result<SqliteConnection, sqlx::Error> {
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
}

/// The tables that make up the replicated state, in a stable order: every
/// ordinary table except SQLite's own, sqlx's migration record, virtual
/// tables and their shadow tables (FTS indexes are rebuilt from content).
///
/// # Errors
/// Storage errors.
pub async fn replicated_tables(
    conn: &mut SqliteConnection,
    schema: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT name, sql FROM {schema}.sqlite_master WHERE type = 'table' ORDER BY name"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let virtual_tables: Vec<&str> = rows
        .iter()
        .filter(|(_, sql)| {
            sql.as_deref().is_some_and(|s| {
                s.trim_start()
                    .to_ascii_uppercase()
                    .starts_with("CREATE VIRTUAL")
            })
        })
        .map(|(name, _)| name.as_str())
        .collect();
    Ok(rows
        .iter()
        .map(|(name, _)| name)
        .filter(|name| {
            !name.starts_with("sqlite_")
                && !name.starts_with("_sqlx")
                && !virtual_tables
                    .iter()
                    .any(|v| *name == v || name.starts_with(&format!("{v}_")))
        })
        .cloned()
        .collect())
}

/// Converts a stored integer back to `u64` (SQLite integers are signed).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

/// Converts a `u64` for storage; our indexes and counters stay far below
/// `i64::MAX`, so saturating is only a guard.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

//! The durable Raft log: an in-memory mirror for reads, and one writer task
//! that persists to SQLite with **group commit**.
//!
//! openraft hands us entries with a callback to call once they are on disk.
//! `append` puts them in the mirror (so they are readable at once, as openraft
//! requires) and queues them for the writer. The writer drains everything
//! that queued up while it was busy and writes it in one transaction, so one
//! fsync (SQLite WAL with `synchronous=FULL`) covers every entry of the batch,
//! however many clients produced them. Truncations, purges and votes travel
//! through the same queue, so the file sees every change in openraft's order.
//!
//! The mirror holds the entries since the last purge; the snapshot policy
//! bounds how many that is.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::typ::{Entry, LogId, StorageError, Vote};
use super::{storage_io, TypeConfig};
use crate::store::{to_i64, to_u64};

/// Rows per multi-row INSERT statement (well under SQLite's variable limit).
const ROWS_PER_INSERT: usize = 300;
/// Most queued operations one transaction takes, to bound a batch's latency.
const MAX_OPS_PER_BATCH: usize = 4096;

/// Meta keys in the log database.
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log store handed to openraft; cheap to clone (readers share it).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// The log since the last purge, plus vote and commit bookkeeping.
    /// A std `RwLock`: it is held only for map operations, never across an
    /// await.
    mirror: RwLock<Mirror>,
    /// Queue of the writer task that owns the SQLite connection.
    writer: mpsc::UnboundedSender<WriteOp>,
}

#[derive(Default)]
struct Mirror {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

enum WriteOp {
    Append {
        rows: Vec<(u64, u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Truncate(u64),
    Purge(LogId),
    /// A vote (bincode), answered once it is on disk.
    SaveVote {
        value: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

fn read_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    storage_io(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    storage_io(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl LogStore {
    /// Opens (or creates) the log database at `path`, loads it, and starts
    /// the writer task.
    ///
    /// # Errors
    /// When the file cannot be opened or holds an entry that does not decode.
    pub async fn open(path: &Path) -> Result<Self, StorageError> {
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed batch is fsynced before its callbacks run.
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await
            .map_err(|e| read_err(&e))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, entry BLOB NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .map_err(|e| write_err(&e))?;
        sqlx::query("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            .execute(&mut conn)
            .await
            .map_err(|e| write_err(&e))?;

        let mut mirror = Mirror::default();
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT idx, entry FROM log ORDER BY idx")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| read_err(&e))?;
        for (idx, bytes) in rows {
            let entry: Entry = bincode::deserialize(&bytes).map_err(|e| read_err(&e))?;
            mirror.entries.insert(to_u64(idx), entry);
        }
        let meta: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT key, value FROM meta")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| read_err(&e))?;
        for (key, value) in meta {
            match key.as_str() {
                VOTE => mirror.vote = bincode::deserialize(&value).map_err(|e| read_err(&e))?,
                COMMITTED => {
                    mirror.committed = bincode::deserialize(&value).map_err(|e| read_err(&e))?
                }
                LAST_PURGED => {
                    mirror.last_purged = bincode::deserialize(&value).map_err(|e| read_err(&e))?;
                }
                _ => {}
            }
        }
        tracing::info!(
            entries = mirror.entries.len(),
            last_purged = ?mirror.last_purged,
            "raft log loaded"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Self {
            shared: Arc::new(Shared {
                mirror: RwLock::new(mirror),
                writer: tx,
            }),
        };
        tokio::spawn(run_writer(conn, rx, store.clone()));
        Ok(store)
    }

    /// The highest log index this node knows to be committed.
    #[must_use]
    pub fn committed_index(&self) -> u64 {
        self.read_mirror(|m| m.committed.map_or(0, |c| c.index))
    }

    fn downgrade(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.shared)
    }

    fn read_mirror<T>(&self, f: impl FnOnce(&Mirror) -> T) -> T {
        let guard = self
            .shared
            .mirror
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    fn write_mirror<T>(&self, f: impl FnOnce(&mut Mirror) -> T) -> T {
        let mut guard = self
            .shared
            .mirror
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        self.shared
            .writer
            .send(op)
            .map_err(|_| write_err(&std::io::Error::other("the raft log writer has stopped")))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.read_mirror(|m| m.entries.range(range).map(|(_, e)| e.clone()).collect()))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(self.read_mirror(|m| {
            let last = m
                .entries
                .values()
                .next_back()
                .map(|e| e.log_id)
                .or(m.last_purged);
            LogState {
                last_purged_log_id: m.last_purged,
                last_log_id: last,
            }
        }))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_mirror(|m| m.vote = Some(*vote));
        // A vote must be on disk before the node acts on it.
        let value = bincode::serialize(&Some(*vote)).map_err(|e| write_err(&e))?;
        let (done, rx) = oneshot::channel();
        self.send(WriteOp::SaveVote { value, done })?;
        rx.await
            .map_err(|_| write_err(&std::io::Error::other("the raft log writer has stopped")))?
            .map_err(|e| write_err(&std::io::Error::other(e)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.read_mirror(|m| m.vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only a hint for faster restarts: kept in memory and written with
        // the next batch, so advancing the commit index costs no fsync.
        self.write_mirror(|m| m.committed = committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_mirror(|m| m.committed))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut rows = Vec::with_capacity(entries.len());
        for entry in &entries {
            let bytes = bincode::serialize(entry).map_err(|e| write_err(&e))?;
            rows.push((entry.log_id.index, entry.log_id.leader_id.term, bytes));
        }
        self.write_mirror(|m| {
            for entry in entries {
                m.entries.insert(entry.log_id.index, entry);
            }
        });
        self.send(WriteOp::Append { rows, callback })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_mirror(|m| {
            m.entries.split_off(&log_id.index);
        });
        self.send(WriteOp::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_mirror(|m| {
            let keep = m.entries.split_off(&(log_id.index + 1));
            m.entries = keep;
            m.last_purged = Some(log_id);
        });
        self.send(WriteOp::Purge(log_id))
    }
}

/// Owns the connection; persists queued operations in batches, one
/// transaction (one fsync) per batch.
async fn run_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::UnboundedReceiver<WriteOp>,
    store: LogStore,
) {
    // The writer holds a clone of the store only to read the commit index;
    // it ends when openraft drops its handles (the channel closes).
    let store = store.downgrade();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_OPS_PER_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let committed = store.upgrade().and_then(|s| {
            s.mirror
                .read()
                .ok()
                .and_then(|m| m.committed)
                .and_then(|c| bincode::serialize(&Some(c)).ok())
        });
        let started = Instant::now();
        let result = write_batch(&mut conn, &batch, committed.as_deref()).await;
        record_batch(&batch, started.elapsed());
        if let Err(e) = &result {
            tracing::error!(error = %e, "writing the raft log failed");
        }
        for op in batch {
            match op {
                WriteOp::Append { callback, .. } => callback.log_io_completed(
                    result
                        .as_ref()
                        .copied()
                        .map_err(|e| std::io::Error::other(e.to_string())),
                ),
                WriteOp::SaveVote { done, .. } => {
                    let _ = done.send(result.as_ref().copied().map_err(ToString::to_string));
                }
                _ => {}
            }
        }
    }
    let _ = conn.close().await;
}

fn record_batch(batch: &[WriteOp], took: Duration) {
    let entries: usize = batch
        .iter()
        .map(|op| match op {
            WriteOp::Append { rows, .. } => rows.len(),
            _ => 0,
        })
        .sum();
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!("agora_raft_log_batch_entries").record(entries as f64);
    metrics::histogram!("agora_raft_log_write_seconds").record(took.as_secs_f64());
}

async fn write_batch(
    conn: &mut SqliteConnection,
    batch: &[WriteOp],
    committed: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    if let Some(committed) = committed {
        upsert_meta(&mut tx, COMMITTED, committed).await?;
    }
    for op in batch {
        match op {
            WriteOp::Append { rows, .. } => {
                for chunk in rows.chunks(ROWS_PER_INSERT) {
                    let mut sql =
                        String::from("INSERT OR REPLACE INTO log (idx, term, entry) VALUES ");
                    for i in 0..chunk.len() {
                        sql.push_str(if i == 0 { "(?,?,?)" } else { ",(?,?,?)" });
                    }
                    let mut query = sqlx::query(&sql);
                    for (idx, term, bytes) in chunk {
                        query = query
                            .bind(to_i64(*idx))
                            .bind(to_i64(*term))
                            .bind(bytes.as_slice());
                    }
                    query.execute(&mut *tx).await?;
                }
            }
            WriteOp::Truncate(from) => {
                sqlx::query("DELETE FROM log WHERE idx >= ?1")
                    .bind(to_i64(*from))
                    .execute(&mut *tx)
                    .await?;
            }
            WriteOp::Purge(upto) => {
                sqlx::query("DELETE FROM log WHERE idx <= ?1")
                    .bind(to_i64(upto.index))
                    .execute(&mut *tx)
                    .await?;
                let value = bincode::serialize(&Some(*upto)).map_err(|e| sqlx::Error::Encode(e))?;
                upsert_meta(&mut tx, LAST_PURGED, &value).await?;
            }
            WriteOp::SaveVote { value, .. } => upsert_meta(&mut tx, VOTE, value).await?,
        }
    }
    tx.commit().await
}

async fn upsert_meta(
    conn: &mut SqliteConnection,
    key: &str,
    value: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
    )
    .bind(key)
    .bind(value)
    .execute(conn)
    .await?;
    Ok(())
}

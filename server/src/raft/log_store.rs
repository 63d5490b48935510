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
//!
//! **Damage.** A torn last record, or a log file restored from an older
//! copy, loses the log's newest transaction (entries and a vote) while
//! `state.db` keeps what it applied. [`LogStore::open`] checks the log
//! against the state machine's last applied log id and repairs what it can
//! prove: a log that no longer holds the applied entry is treated as purged
//! up to it (the leader sends the rest), and a vote older than the term of
//! that entry is raised to it. The vote is also kept in a second file
//! ([`VOTE_FILE`], written atomically after the log's transaction), so a
//! torn log cannot make a node vote twice in one term. What it repaired is
//! returned as [`LogDamage`]: the node then abstains from elections until
//! it has caught up with a leader (acknowledged entries may be among what
//! was lost).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
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
/// The second copy of the vote, beside the log database.
pub const VOTE_FILE: &str = "raft-vote.json";

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
    /// A vote (and its bincode), answered once it is on disk.
    SaveVote {
        vote: Vote,
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

fn vote_err(verb: ErrorVerb, e: &(impl std::error::Error + 'static)) -> StorageError {
    storage_io(ErrorSubject::Vote, verb, e)
}

/// What [`LogStore::open`] found wrong with the log and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDamage {
    /// Sentences for the operator, one per repair.
    pub repairs: Vec<String>,
    /// Whether entries were lost beyond what the state machine applied
    /// (some may have been acknowledged to a leader).
    pub entries_lost: bool,
}

impl std::fmt::Display for LogDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repairs.join("; "))
    }
}

/// The newer of the log's vote and the vote file's; an error when they
/// cannot be ordered (openraft orders every pair of its default leader ids,
/// so that would mean files from two different nodes).
fn newest_vote(in_log: Option<Vote>, in_file: Option<Vote>) -> Result<Option<Vote>, String> {
    match (in_log, in_file) {
        (Some(a), Some(b)) => match a.partial_cmp(&b) {
            Some(std::cmp::Ordering::Less) => Ok(Some(b)),
            Some(_) => Ok(Some(a)),
            None => Err(format!(
                "the vote in the raft log ({a}) and in {VOTE_FILE} ({b}) cannot be ordered; \
                 one of the files does not belong to this node"
            )),
        },
        (a, b) => Ok(a.or(b)),
    }
}

/// Checks the loaded log against `applied`, the state machine's last
/// applied log id, and repairs what the state proves (see the module
/// header). Pure, so every case is unit-tested.
fn repair(mirror: &mut Mirror, applied: Option<LogId>) -> Option<LogDamage> {
    let mut damage = LogDamage {
        repairs: Vec::new(),
        entries_lost: false,
    };
    let applied_index = applied.map_or(0, |a| a.index);
    let show = |id: Option<LogId>| id.map_or_else(|| "the beginning".to_owned(), |l| l.to_string());
    if let Some(purged) = mirror.last_purged.filter(|p| p.index > applied_index) {
        // openraft purges the log as soon as it starts installing a
        // snapshot, beside the install: a node stopped in between finds its
        // log purged past what its state holds.
        damage.repairs.push(format!(
            "the raft log is purged up to {purged} but the state machine has applied only {} \
             (the node stopped while installing a snapshot); the log now starts at what the \
             state holds and the leader will send the snapshot again",
            show(applied),
        ));
        damage.entries_lost = true;
        mirror.entries.clear();
        mirror.last_purged = applied;
        mirror.committed = applied;
    }
    let Some(applied) = applied else {
        return (!damage.repairs.is_empty()).then_some(damage);
    };
    let covered = mirror
        .last_purged
        .is_some_and(|purged| purged.index >= applied.index);
    let holds = mirror
        .entries
        .get(&applied.index)
        .is_some_and(|entry| entry.log_id == applied);
    if !covered && !holds {
        let last = mirror
            .entries
            .values()
            .next_back()
            .map(|entry| entry.log_id)
            .or(mirror.last_purged);
        damage.repairs.push(format!(
            "the raft log is behind the state machine: it ends at {} but the state has \
             applied {applied}, so its newest records were lost (a torn write or an older \
             copy of the file); it now counts as purged up to {applied} and the leader will \
             send the rest",
            show(last),
        ));
        damage.entries_lost = true;
        mirror.entries.clear();
        mirror.last_purged = Some(applied);
        mirror.committed = Some(applied);
    }
    let leader = applied.leader_id;
    if mirror
        .vote
        .is_none_or(|vote| vote.leader_id().term < leader.term)
    {
        let raised = Vote::new_committed(leader.term, leader.node_id);
        damage.repairs.push(format!(
            "the vote ({}) is older than the term of the last applied entry; it is now {raised}",
            mirror
                .vote
                .map_or_else(|| "none".to_owned(), |v| v.to_string()),
        ));
        mirror.vote = Some(raised);
    }
    (!damage.repairs.is_empty()).then_some(damage)
}

/// The vote a node starts with: its own granted leadership (a committed
/// vote for itself) becomes a plain vote for itself in the same term.
///
/// openraft resumes leadership at start when the vote is a committed vote
/// for this node, appending after whatever log it found. After a crash,
/// that log may have lost entries this leader had already replicated (a
/// torn last record), and the next entries it appends would reuse their
/// log ids with other contents: two histories under one leader id. As in
/// the Raft paper, a node restarts as a follower instead, and the cluster
/// elects a leader in a newer term (which it must do anyway while the
/// leader is down). Granting votes is unchanged: the same candidate and
/// term still order the same against every other vote.
fn restart_as_follower(vote: Vote, id: u64) -> Vote {
    if vote.is_committed() && vote.leader_id().voted_for() == Some(id) {
        Vote::new(vote.leader_id().term, id)
    } else {
        vote
    }
}

fn read_vote_file(path: &Path) -> Result<Option<Vote>, StorageError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| vote_err(ErrorVerb::Read, &e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(vote_err(ErrorVerb::Read, &e)),
    }
}

/// Replaces the vote file atomically: a synced temporary file renamed over
/// it, then the directory synced.
async fn write_vote_file(path: PathBuf, vote: Vote) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&vote).map_err(std::io::Error::other)?;
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

impl LogStore {
    /// Opens (or creates) the log database at `path`, loads it, checks it
    /// against `applied` (the state machine's last applied log id) and
    /// repairs what it can prove (see the module header), and starts the
    /// writer task. Returns what was repaired, if anything.
    ///
    /// # Errors
    /// When the file cannot be opened or holds an entry that does not decode,
    /// or the two copies of the vote contradict each other.
    pub async fn open(
        path: &Path,
        id: u64,
        applied: Option<LogId>,
    ) -> Result<(Self, Option<LogDamage>), StorageError> {
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
        let vote_file = path.with_file_name(VOTE_FILE);
        let file_vote = read_vote_file(&vote_file)?;
        let log_vote = mirror.vote;
        mirror.vote = newest_vote(log_vote, file_vote)
            .map_err(|e| vote_err(ErrorVerb::Read, &std::io::Error::other(e)))?;
        let mut damage = repair(&mut mirror, applied);
        if mirror.vote != log_vote && mirror.vote == file_vote {
            damage
                .get_or_insert_with(|| LogDamage {
                    repairs: Vec::new(),
                    entries_lost: false,
                })
                .repairs
                .insert(
                    0,
                    format!(
                        "the raft log lost its newest vote; {} restored it from {VOTE_FILE}",
                        file_vote.map_or_else(String::new, |v| v.to_string())
                    ),
                );
        }
        if let Some(damage) = &damage {
            persist_repair(&mut conn, &mirror, damage.entries_lost)
                .await
                .map_err(|e| write_err(&e))?;
            if let Some(vote) = mirror.vote {
                write_vote_file(vote_file.clone(), vote)
                    .await
                    .map_err(|e| vote_err(ErrorVerb::Write, &e))?;
            }
        }
        mirror.vote = mirror.vote.map(|vote| restart_as_follower(vote, id));
        tracing::info!(
            entries = mirror.entries.len(),
            last_purged = ?mirror.last_purged,
            vote = ?mirror.vote,
            "raft log loaded"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Self {
            shared: Arc::new(Shared {
                mirror: RwLock::new(mirror),
                writer: tx,
            }),
        };
        tokio::spawn(run_writer(conn, rx, store.clone(), vote_file));
        Ok((store, damage))
    }

    /// The log id the log is purged up to (covered by a snapshot).
    #[must_use]
    pub fn last_purged(&self) -> Option<LogId> {
        self.read_mirror(|m| m.last_purged)
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
        self.send(WriteOp::SaveVote {
            vote: *vote,
            value,
            done,
        })?;
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

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, sqlx::Error> {
    bincode::serialize(value).map_err(|e| sqlx::Error::Encode(e))
}

/// Writes what [`repair`] changed, in one transaction.
async fn persist_repair(
    conn: &mut SqliteConnection,
    mirror: &Mirror,
    entries_lost: bool,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    if entries_lost {
        sqlx::query("DELETE FROM log").execute(&mut *tx).await?;
    }
    upsert_meta(&mut tx, VOTE, &encode(&mirror.vote)?).await?;
    upsert_meta(&mut tx, COMMITTED, &encode(&mirror.committed)?).await?;
    upsert_meta(&mut tx, LAST_PURGED, &encode(&mirror.last_purged)?).await?;
    tx.commit().await
}

/// Owns the connection; persists queued operations in batches, one
/// transaction (one fsync) per batch, then the vote file when the batch
/// held a vote.
async fn run_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::UnboundedReceiver<WriteOp>,
    store: LogStore,
    vote_file: PathBuf,
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
        let mut result = write_batch(&mut conn, &batch, committed.as_deref()).await;
        record_batch(&batch, started.elapsed());
        let newest_vote = batch.iter().rev().find_map(|op| match op {
            WriteOp::SaveVote { vote, .. } => Some(*vote),
            _ => None,
        });
        if let (Ok(()), Some(vote)) = (&result, newest_vote) {
            if let Err(e) = write_vote_file(vote_file.clone(), vote).await {
                result = Err(sqlx::Error::Io(e));
            }
        }
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn log_id(term: u64, leader: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, leader), index)
    }

    /// A mirror holding blank entries at `ids`, voted for `vote`.
    fn mirror(ids: &[LogId], purged: Option<LogId>, vote: Option<Vote>) -> Mirror {
        Mirror {
            entries: ids
                .iter()
                .map(|id| {
                    (
                        id.index,
                        Entry {
                            log_id: *id,
                            payload: EntryPayload::Blank,
                        },
                    )
                })
                .collect(),
            last_purged: purged,
            vote,
            committed: ids.last().copied(),
        }
    }

    #[test]
    fn a_log_that_holds_the_applied_entry_is_left_alone() {
        let ids = [log_id(2, 1, 5), log_id(2, 1, 6), log_id(2, 1, 7)];
        let mut m = mirror(&ids, Some(log_id(1, 1, 4)), Some(Vote::new_committed(2, 1)));
        assert_eq!(repair(&mut m, Some(log_id(2, 1, 6))), None);
        assert_eq!(m.entries.len(), 3);
        // Applied exactly up to the purge point: fine too.
        assert_eq!(repair(&mut m, Some(log_id(1, 1, 4))), None);
    }

    #[test]
    fn a_log_that_lost_its_tail_counts_as_purged_up_to_the_applied_entry() {
        // The log ends at 7 of term 2; the state applied 9 of term 3.
        let ids = [log_id(2, 1, 6), log_id(2, 1, 7)];
        let mut m = mirror(&ids, Some(log_id(2, 1, 5)), Some(Vote::new_committed(2, 1)));
        let applied = log_id(3, 2, 9);
        let damage = repair(&mut m, Some(applied)).expect("damage found");
        assert!(damage.entries_lost);
        assert!(
            damage.repairs[0].contains("the raft log is behind the state machine"),
            "{damage}"
        );
        assert!(m.entries.is_empty());
        assert_eq!(m.last_purged, Some(applied));
        assert_eq!(m.committed, Some(applied));
        // The vote of term 2 is older than the applied entry's leader.
        assert_eq!(m.vote, Some(Vote::new_committed(3, 2)));
        assert_eq!(damage.repairs.len(), 2, "{damage}");
    }

    #[test]
    fn stale_entries_of_an_older_term_at_the_applied_index_are_dropped() {
        // A lost truncation brought back entries 8..=12 of term 2, while
        // the state applied 9 of term 3 (the entries that replaced them).
        let ids: Vec<LogId> = (8..=12).map(|i| log_id(2, 1, i)).collect();
        let mut m = mirror(&ids, Some(log_id(2, 1, 7)), Some(Vote::new_committed(3, 2)));
        let damage = repair(&mut m, Some(log_id(3, 2, 9))).expect("damage found");
        assert!(damage.entries_lost);
        assert_eq!(damage.repairs.len(), 1, "the vote was current: {damage}");
        assert!(m.entries.is_empty());
    }

    #[test]
    fn a_log_purged_past_the_state_starts_again_at_the_state() {
        // Killed while installing a snapshot up to 206: the log was purged
        // to 206 and took two entries after it; the state stayed at 22.
        let ids = [log_id(1, 1, 207), log_id(1, 1, 208)];
        let mut m = mirror(
            &ids,
            Some(log_id(1, 1, 206)),
            Some(Vote::new_committed(1, 1)),
        );
        let applied = log_id(1, 1, 22);
        let damage = repair(&mut m, Some(applied)).expect("damage found");
        assert!(damage.entries_lost);
        assert!(
            damage.repairs[0].contains("while installing a snapshot"),
            "{damage}"
        );
        assert!(m.entries.is_empty());
        assert_eq!(m.last_purged, Some(applied));
        assert_eq!(m.committed, Some(applied));
        // Nothing applied at all: the log starts from the beginning.
        let mut m = mirror(
            &ids,
            Some(log_id(1, 1, 206)),
            Some(Vote::new_committed(1, 1)),
        );
        assert!(repair(&mut m, None).is_some_and(|d| d.entries_lost));
        assert_eq!(m.last_purged, None);
        assert!(m.entries.is_empty());
    }

    #[test]
    fn a_deleted_log_gets_the_applied_entry_and_its_leader_back() {
        let mut m = Mirror::default();
        let damage = repair(&mut m, Some(log_id(4, 3, 100))).expect("damage found");
        assert!(damage.entries_lost);
        assert_eq!(m.last_purged, Some(log_id(4, 3, 100)));
        assert_eq!(m.vote, Some(Vote::new_committed(4, 3)));
    }

    #[test]
    fn the_newer_vote_of_the_two_copies_wins() {
        let old = Vote::new_committed(2, 1);
        let new = Vote::new(3, 2);
        assert_eq!(newest_vote(Some(old), Some(new)), Ok(Some(new)));
        assert_eq!(newest_vote(Some(new), Some(old)), Ok(Some(new)));
        assert_eq!(newest_vote(None, Some(old)), Ok(Some(old)));
        assert_eq!(newest_vote(Some(old), None), Ok(Some(old)));
        assert_eq!(newest_vote(None, None), Ok(None));
        // Committed beats uncommitted for the same candidate.
        assert_eq!(
            newest_vote(Some(Vote::new(3, 2)), Some(Vote::new_committed(3, 2))),
            Ok(Some(Vote::new_committed(3, 2)))
        );
        // Leader ids order by term, then node id (openraft's default,
        // several leaders per term): the higher candidate is the newer vote.
        assert_eq!(
            newest_vote(Some(Vote::new(3, 1)), Some(Vote::new(3, 2))),
            Ok(Some(Vote::new(3, 2)))
        );
    }

    #[test]
    fn a_leader_restarts_as_a_follower() {
        // Its own granted leadership becomes a plain vote for itself.
        assert_eq!(
            restart_as_follower(Vote::new_committed(4, 2), 2),
            Vote::new(4, 2)
        );
        // Anything else is kept.
        for vote in [Vote::new_committed(4, 1), Vote::new(4, 2), Vote::new(4, 3)] {
            assert_eq!(restart_as_follower(vote, 2), vote);
        }
    }

    #[tokio::test]
    async fn the_vote_survives_a_log_that_lost_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft-log.db");
        {
            let (mut store, damage) = LogStore::open(&path, 1, None).await.expect("opens");
            assert_eq!(damage, None);
            store
                .save_vote(&Vote::new(1, 1))
                .await
                .expect("saves a vote");
            store
                .save_vote(&Vote::new(5, 2))
                .await
                .expect("saves a vote");
        }
        // Take the newest vote out of the log database, as a torn write would.
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .expect("opens the file");
        upsert_meta(
            &mut conn,
            VOTE,
            &bincode::serialize(&Some(Vote::new(1, 1))).expect("encodes"),
        )
        .await
        .expect("rolls the vote back");
        conn.close().await.expect("closes");

        let (mut store, damage) = LogStore::open(&path, 1, None).await.expect("opens again");
        assert_eq!(
            store.read_vote().await.expect("reads"),
            Some(Vote::new(5, 2))
        );
        let damage = damage.expect("the restored vote is reported");
        assert!(damage.repairs[0].contains(VOTE_FILE), "{damage}");
        assert!(!damage.entries_lost);
    }
}

//! The state machine: a SQLite database applied to by one writer connection,
//! read through a pool, and snapshotted as a consistent copy of the file.
//!
//! - **Apply**: a batch of committed entries runs in one transaction, with
//!   the last applied log id and membership written in the same transaction,
//!   so the database always says exactly how far it got.
//! - **Build a snapshot**: `VACUUM INTO` a new file (a consistent copy inside
//!   a read transaction, taken beside ongoing applies). The copy carries its
//!   own `meta` table, so its log id and membership are read back from it.
//! - **Install a snapshot**: the received file is attached and every
//!   replicated table is replaced from it in one transaction.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio::sync::{watch, Mutex};

use super::command::Answer;
use super::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use super::{storage_io, TypeConfig};
use crate::events::{EventKind, EventSink};
use crate::store::{self, meta};

/// File name of a snapshot being received.
const INCOMING: &str = "incoming.db";
/// File describing the current snapshot.
const CURRENT: &str = "current.json";

/// The state machine handed to openraft.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

struct Shared {
    /// The single writer. A tokio mutex: it is held across awaits while a
    /// batch applies or a snapshot installs.
    writer: Mutex<SqliteConnection>,
    /// Readers for RPCs and snapshot builds.
    readers: SqlitePool,
    /// Where snapshot files live.
    snapshot_dir: PathBuf,
    /// The last applied index, published after each commit so readers can
    /// wait for `min_index` without polling.
    applied: watch::Sender<u64>,
    /// Makes snapshot file names unique within this process.
    snapshot_seq: AtomicU64,
    /// The applied index of the last batch that changed what search
    /// returns (listings, topics, presence), so search caches know when
    /// they are current.
    catalogue_changed: AtomicU64,
    /// Where snapshot builds and installs are reported for the event log;
    /// set once the node exists (it is made after the state machine).
    events: std::sync::OnceLock<EventSink>,
}

/// The current snapshot, as recorded in `current.json`.
#[derive(Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    file: String,
}

fn sm_err(verb: ErrorVerb, e: &(impl std::error::Error + 'static)) -> StorageError {
    storage_io(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(verb: ErrorVerb, e: &(impl std::error::Error + 'static)) -> StorageError {
    storage_io(ErrorSubject::Snapshot(None), verb, e)
}

impl StateMachine {
    /// Opens the state database under `dir` (created and migrated if new).
    ///
    /// # Errors
    /// When the database cannot be opened or migrated.
    pub async fn open(dir: &Path) -> Result<Self, StorageError> {
        let snapshot_dir = dir.join("snapshots");
        tokio::fs::create_dir_all(&snapshot_dir)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        let (mut writer, readers) = store::open_state(&dir.join("state.db"))
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, &e))?;
        let applied: Option<LogId> = meta::get(&mut writer, meta::LAST_APPLIED)
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, &e))?;
        let (applied_tx, _) = watch::channel(applied.map_or(0, |l| l.index));
        Ok(Self {
            shared: Arc::new(Shared {
                writer: Mutex::new(writer),
                readers,
                snapshot_dir,
                applied: applied_tx,
                snapshot_seq: AtomicU64::new(0),
                // Unknown after a restart: as if changed at the last index.
                catalogue_changed: AtomicU64::new(applied.map_or(0, |l| l.index)),
                events: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Reports snapshot builds and installs to `sink` from now on.
    pub fn set_event_sink(&self, sink: EventSink) {
        let _ = self.shared.events.set(sink);
    }

    fn note(&self, kind: EventKind, message: String) {
        if let Some(sink) = self.shared.events.get() {
            sink.note(kind, 0, message);
        }
    }

    /// The pool of read-only connections.
    #[must_use]
    pub fn readers(&self) -> &SqlitePool {
        &self.shared.readers
    }

    /// Watches the last applied index.
    #[must_use]
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// The applied index of the last change to the catalogue (listings,
    /// topics, presence): search results computed at or after it are
    /// current.
    #[must_use]
    pub fn catalogue_changed_at(&self) -> u64 {
        self.shared.catalogue_changed.load(Ordering::Acquire)
    }

    /// A digest of the state and the applied index it was taken at, read in
    /// one transaction.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn digest(&self) -> Result<(u64, String), sqlx::Error> {
        let mut conn = self.shared.readers.acquire().await?;
        let mut tx = conn.begin().await?;
        let applied: Option<LogId> = meta::get(&mut tx, meta::LAST_APPLIED).await?;
        let digest = store::digest::state_digest(&mut tx).await?;
        tx.rollback().await?;
        Ok((applied.map_or(0, |l| l.index), digest))
    }

    fn current_path(&self) -> PathBuf {
        self.shared.snapshot_dir.join(CURRENT)
    }

    async fn read_current(&self) -> Result<Option<CurrentSnapshot>, StorageError> {
        match tokio::fs::read(self.current_path()).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| snap_err(ErrorVerb::Read, &e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(snap_err(ErrorVerb::Read, &e)),
        }
    }

    /// Forgets the current snapshot when it does not reach `purged`, the
    /// log's purge point (a node killed between installing a snapshot's
    /// rows and recording it, or a log repaired past it). openraft then
    /// builds a fresh snapshot at start, so a follower that needs one never
    /// gets a snapshot older than the log this node still holds. Returns
    /// whether it forgot one.
    ///
    /// # Errors
    /// When the record cannot be read or removed.
    pub async fn forget_snapshot_behind(
        &self,
        purged: Option<LogId>,
    ) -> Result<bool, StorageError> {
        let Some(purged) = purged else {
            return Ok(false);
        };
        let Some(current) = self.read_current().await? else {
            return Ok(false);
        };
        if current
            .meta
            .last_log_id
            .is_some_and(|l| l.index >= purged.index)
        {
            return Ok(false);
        }
        tokio::fs::remove_file(self.current_path())
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        tracing::warn!(
            snapshot = ?current.meta.last_log_id,
            purged = %purged,
            "the current snapshot ends before the log's purge point; a new one will be built"
        );
        Ok(true)
    }

    /// Records `file` as the current snapshot (atomically) and deletes the
    /// files of older snapshots.
    async fn set_current(&self, meta: &SnapshotMeta, file: &str) -> Result<(), StorageError> {
        let record = CurrentSnapshot {
            meta: meta.clone(),
            file: file.to_owned(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        let tmp = self.shared.snapshot_dir.join("current.json.tmp");
        write_synced(&tmp, &bytes)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        tokio::fs::rename(&tmp, self.current_path())
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        let mut dir = tokio::fs::read_dir(&self.shared.snapshot_dir)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        while let Ok(Some(item)) = dir.next_entry().await {
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with("snapshot-") && name != file {
                let _ = tokio::fs::remove_file(item.path()).await;
            }
        }
        Ok(())
    }

    fn next_snapshot_name(&self, prefix: &str) -> String {
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{}-{seq}.db", std::process::id())
    }
}

async fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::create(path).await?;
    f.write_all(bytes).await?;
    f.sync_all().await
}

/// Applies one entry inside the batch transaction.
async fn apply_entry(
    conn: &mut SqliteConnection,
    entry: &Entry,
    membership: &mut Option<StoredMembership>,
) -> Result<Vec<Answer>, sqlx::Error> {
    match &entry.payload {
        EntryPayload::Blank => Ok(Vec::new()),
        EntryPayload::Normal(command) => command.apply(conn, entry.log_id.index).await,
        EntryPayload::Membership(m) => {
            *membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
            Ok(Vec::new())
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let mut conn = self.shared.writer.lock().await;
        let applied = meta::get(&mut conn, meta::LAST_APPLIED)
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, &e))?;
        let membership = meta::get(&mut conn, meta::MEMBERSHIP)
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, &e))?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Answer>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let started = std::time::Instant::now();
        let mut conn = self.shared.writer.lock().await;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut membership = None;
        for entry in &entries {
            let outcome = apply_entry(&mut tx, entry, &mut membership)
                .await
                .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
            outcomes.push(outcome);
        }
        meta::set(&mut tx, meta::LAST_APPLIED, &last)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        if let Some(m) = &membership {
            meta::set(&mut tx, meta::MEMBERSHIP, m)
                .await
                .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        }
        tx.commit()
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        drop(conn);
        let touches_catalogue = entries.iter().any(|e| match &e.payload {
            EntryPayload::Normal(command) => {
                command.proposals.iter().any(|p| p.op.touches_catalogue())
            }
            _ => false,
        });
        if touches_catalogue {
            self.shared
                .catalogue_changed
                .store(last.index, Ordering::Release);
        }
        self.shared.applied.send_replace(last.index);
        #[allow(clippy::cast_precision_loss)]
        metrics::histogram!("agora_raft_apply_batch_entries").record(entries.len() as f64);
        metrics::histogram!("agora_raft_apply_seconds").record(started.elapsed().as_secs_f64());
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.shared.snapshot_dir.join(INCOMING);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        snapshot_meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        snapshot
            .sync_all()
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        drop(snapshot);
        let name = self.next_snapshot_name("snapshot-installed");
        let path = self.shared.snapshot_dir.join(&name);
        tokio::fs::rename(self.shared.snapshot_dir.join(INCOMING), &path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;

        let mut conn = self.shared.writer.lock().await;
        replace_from(&mut conn, &path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        drop(conn);
        self.set_current(snapshot_meta, &name).await?;
        let index = snapshot_meta.last_log_id.map_or(0, |l| l.index);
        self.shared
            .catalogue_changed
            .store(index, Ordering::Release);
        self.shared.applied.send_replace(index);
        metrics::counter!("agora_raft_snapshots_installed_total").increment(1);
        self.note(
            EventKind::SnapshotInstalled,
            format!("installed a snapshot from the leader covering index {index}"),
        );
        tracing::info!(index, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(current) = self.read_current().await? else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(self.shared.snapshot_dir.join(&current.file))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        Ok(Some(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Replaces every replicated table of the writer's database with the rows of
/// the snapshot file at `path`, in one transaction.
async fn replace_from(conn: &mut SqliteConnection, path: &Path) -> Result<(), sqlx::Error> {
    let path = path.to_string_lossy().into_owned();
    sqlx::query("ATTACH DATABASE ?1 AS snap")
        .bind(&path)
        .execute(&mut *conn)
        .await?;
    // Tables reference each other (journal and holds -> accounts). SQLite's
    // deferred foreign-key counter does not forgive a child copied in before
    // its parent, so checks are off while the tables are swapped and the
    // finished state is checked as a whole before commit.
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut *conn)
        .await?;
    let result = async {
        let mut tx = conn.begin().await?;
        let tables = store::replicated_tables(&mut tx, "main").await?;
        for table in &tables {
            sqlx::query(&format!("DELETE FROM main.\"{table}\""))
                .execute(&mut *tx)
                .await?;
        }
        for table in &tables {
            sqlx::query(&format!(
                "INSERT INTO main.\"{table}\" SELECT * FROM snap.\"{table}\""
            ))
            .execute(&mut *tx)
            .await?;
        }
        let broken: Vec<(String,)> =
            sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
                .fetch_all(&mut *tx)
                .await?;
        if let Some((table,)) = broken.first() {
            return Err(sqlx::Error::Protocol(format!(
                "the snapshot breaks a foreign key in table {table}; it was not installed"
            )));
        }
        tx.commit().await
    }
    .await;
    sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DETACH DATABASE snap")
        .execute(&mut *conn)
        .await?;
    result
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let name = self.next_snapshot_name("snapshot");
        let path = self.shared.snapshot_dir.join(&name);
        let mut conn = self
            .shared
            .readers
            .acquire()
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        // A consistent copy at one moment, taken beside ongoing applies.
        sqlx::query("VACUUM INTO ?1")
            .bind(path.to_string_lossy().into_owned())
            .execute(&mut *conn)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        drop(conn);
        // Make everything up to here durable in the state database itself
        // before openraft purges the log behind the snapshot: a checkpoint
        // syncs the WAL first.
        {
            let mut writer = self.shared.writer.lock().await;
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *writer)
                .await
                .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        }
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        file.sync_all()
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;

        let mut copy = store::open_read_only(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        let last_applied: Option<LogId> = meta::get(&mut copy, meta::LAST_APPLIED)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        let membership: StoredMembership = meta::get(&mut copy, meta::MEMBERSHIP)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?
            .unwrap_or_default();
        let _ = copy.close().await;

        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: name.trim_end_matches(".db").to_owned(),
        };
        self.set_current(&meta, &name).await?;
        metrics::counter!("agora_raft_snapshots_built_total").increment(1);
        self.note(
            EventKind::SnapshotBuilt,
            format!(
                "built a snapshot covering index {}",
                last_applied.map_or(0, |l| l.index)
            ),
        );
        tracing::info!(index = ?last_applied.map(|l| l.index), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot with rows that reference each other (journal and holds
    /// pointing at accounts) installs over a database that has other rows.
    #[tokio::test]
    async fn snapshot_install_replaces_related_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut source, _r1) = store::open_state(&dir.path().join("a.db"))
            .await
            .expect("a");
        for sql in [
            "INSERT INTO ledger_accounts (id, kind, user_id, balance) VALUES (3, 'user', 7, 500)",
            "UPDATE ledger_accounts SET balance = -500 WHERE id = 1",
            "INSERT INTO journal (debit, credit, amount, kind, log_index, time_ms) VALUES (1, 3, 500, 'deposit', 5, 1)",
            "INSERT INTO holds (account, payee, amount, state, expires_at_ms, opened_index) VALUES (3, 1, 100, 'voided', 9, 6)",
            "INSERT INTO kv (key, value, revision, log_index) VALUES ('k', x'01', 1, 4)",
        ] {
            sqlx::query(sql).execute(&mut source).await.expect(sql);
        }
        let copy = dir.path().join("copy.db");
        sqlx::query("VACUUM INTO ?1")
            .bind(copy.to_string_lossy().into_owned())
            .execute(&mut source)
            .await
            .expect("vacuum");

        let (mut target, _r2) = store::open_state(&dir.path().join("b.db"))
            .await
            .expect("b");
        for sql in [
            "INSERT INTO ledger_accounts (id, kind, user_id, balance) VALUES (4, 'user', 8, 0)",
            "INSERT INTO holds (account, payee, amount, state, expires_at_ms, opened_index) VALUES (4, 2, 1, 'open', 1, 1)",
            "INSERT INTO kv (key, value, revision, log_index) VALUES ('other', x'02', 3, 2)",
        ] {
            sqlx::query(sql).execute(&mut target).await.expect(sql);
        }
        replace_from(&mut target, &copy).await.expect("installs");

        let a = store::digest::state_digest(&mut source)
            .await
            .expect("digest a");
        let b = store::digest::state_digest(&mut target)
            .await
            .expect("digest b");
        assert_eq!(a, b, "the installed state equals the snapshot's");
        let (accounts,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ledger_accounts")
            .fetch_one(&mut target)
            .await
            .expect("count");
        assert_eq!(accounts, 3);
    }
}

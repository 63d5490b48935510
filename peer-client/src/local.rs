//! The peer's local database: who it is signed in as, and small facts it
//! remembers between runs.
//!
//! It also remembers which local file each of the peer's listings is
//! ([`LocalListing`]): the cluster never learns a path.
//!
//! One SQLite file, `agora.db`, in the peer's data directory (`--data-dir`,
//! `AGORA_HOME`, default `~/.agora`; the operator console keeps its own),
//! so several peers run side by side on one machine. It holds a bearer
//! token and a private key, so the directory is created owner-only (0700)
//! and the file readable by its owner only (0600); SQLite gives its WAL
//! and shared-memory files the same mode as the database. The schema comes
//! from `migrations/peer`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agora_proto::auth::Role;
use agora_proto::merkle::Hash;
use ed25519_dalek::SigningKey;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use zeroize::Zeroizing;

use crate::account::{now_ms, role_of, Session};

mod trade;
pub use trade::{Download, DownloadState, SaleKey};

/// A listing this peer published, tied to the local file it sells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalListing {
    /// The cluster's listing id.
    pub listing_id: u64,
    /// The seller's user id.
    pub seller_id: u64,
    /// Absolute path of the file.
    pub path: PathBuf,
    /// File size in bytes, as published.
    pub size: u64,
    /// Chunk size in bytes, as published.
    pub chunk_size: u32,
    /// BLAKE3 Merkle root over the plaintext chunks, as published.
    pub merkle_root: Hash,
    /// The file's modification time when it was hashed (Unix ms), if known.
    pub modified_ms: Option<u64>,
    /// When this peer published it (Unix ms).
    pub published_at_ms: u64,
    /// False once this peer unpublished it.
    pub active: bool,
}

/// The database's file name inside the data directory.
pub const DATABASE_FILE: &str = "agora.db";

/// The data directory's name under `$HOME` for a peer.
pub const PEER_DIR_NAME: &str = ".agora";

/// The data directory's name under `$HOME` for the operator console.
pub const ADMIN_DIR_NAME: &str = ".agora-admin";

/// Settings key of the highest log index this peer has seen.
const MAX_SEEN_INDEX: &str = "max_seen_index";

/// Settings key of the node this peer last saw leading.
const LEADER_HINT: &str = "leader_hint";

/// How long a connection waits for another process (a second command of
/// the same peer) to release the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A CLI command or a provider needs only a couple of connections.
const POOL_SIZE: u32 = 2;

/// A problem with the peer's local database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No data directory was given and `$HOME` is not set.
    #[error("no data directory: HOME is not set; pass --data-dir or set AGORA_HOME")]
    NoHome,
    /// The data directory or the database file could not be created.
    #[error("could not create {}: {source}; pass another --data-dir", path.display())]
    Create {
        /// What was being created.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// SQLite refused to open, migrate, read or write the database.
    #[error("the local database {} failed: {source}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The stored session cannot be used.
    #[error("the stored session in {} is damaged ({reason}); log in again", path.display())]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A row about a purchase or a sale cannot be read back.
    #[error("the peer database {} has a damaged row: {reason}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The data directory to use: `explicit` (from `--data-dir` or the
/// environment, as the command line resolved it), else `$HOME/<dir_name>`.
///
/// # Errors
/// [`StoreError::NoHome`] when neither is available.
pub fn data_dir(explicit: Option<PathBuf>, dir_name: &str) -> Result<PathBuf, StoreError> {
    if let Some(dir) = explicit.filter(|d| !d.as_os_str().is_empty()) {
        return Ok(dir);
    }
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(dir_name))
        .ok_or(StoreError::NoHome)
}

/// A peer's local database.
#[derive(Debug, Clone)]
pub struct PeerStore {
    /// Cheap to clone; SQLite serializes writers, WAL lets readers run
    /// beside them.
    pool: SqlitePool,
    /// The database file, for error messages.
    path: PathBuf,
}

impl PeerStore {
    /// Opens the database in `data_dir`, creating the directory (0700) and
    /// the file (0600) if needed, and applies the migrations.
    ///
    /// # Errors
    /// When the directory or file cannot be created, or SQLite fails.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        create_private_file(&path)?;
        Self::connect(path).await
    }

    /// Opens the database in `data_dir` if one exists there, without
    /// creating anything otherwise (for commands that only read it).
    ///
    /// # Errors
    /// When SQLite fails on an existing file.
    pub async fn open_existing(data_dir: &Path) -> Result<Option<Self>, StoreError> {
        let path = data_dir.join(DATABASE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        Self::connect(path).await.map(Some)
    }

    async fn connect(path: PathBuf) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL: WAL keeps the file consistent; a power loss may take
            // back the last login, which simply asks for another.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await
            .map_err(|source| database(&path, source))?;
        sqlx::migrate!("../migrations/peer")
            .run(&pool)
            .await
            .map_err(|e| database(&path, sqlx::Error::Migrate(Box::new(e))))?;
        Ok(Self { pool, path })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `session` (and its identity key), replacing whatever account
    /// was signed in before.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn save_session(&self, session: &Session) -> Result<(), StoreError> {
        let db = |source| database(&self.path, source);
        let user_id = to_i64(session.user_id);
        let secret = Zeroizing::new(session.identity.to_bytes());
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("DELETE FROM session")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM identity")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO identity (user_id, username, public_key, secret_key) VALUES (?, ?, ?, ?)",
        )
        .bind(user_id)
        .bind(&session.username)
        .bind(session.identity.verifying_key().to_bytes().as_slice())
        .bind(secret.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO session (slot, token, user_id, username, role, expires_at_ms, logged_in_at_ms) \
             VALUES (1, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&session.token)
        .bind(user_id)
        .bind(&session.username)
        .bind(session.role.as_str())
        .bind(to_i64(session.expires_at_ms))
        .bind(to_i64(now_ms()))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// The stored session, if the peer is signed in (it may have expired;
    /// see [`Session::is_expired`]).
    ///
    /// # Errors
    /// When SQLite fails or the stored rows are damaged.
    pub async fn session(&self) -> Result<Option<Session>, StoreError> {
        type Row = (String, i64, String, String, i64, Vec<u8>, Vec<u8>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT s.token, s.user_id, s.username, s.role, s.expires_at_ms, i.public_key, i.secret_key \
             FROM session s JOIN identity i ON i.user_id = s.user_id",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        let Some((token, user_id, username, role, expires_at_ms, public_key, secret_key)) = row
        else {
            return Ok(None);
        };
        let damaged = |reason: &str| StoreError::Damaged {
            path: self.path.clone(),
            reason: reason.to_owned(),
        };
        let secret_key = Zeroizing::new(secret_key);
        let secret: &[u8; 32] = secret_key
            .as_slice()
            .try_into()
            .map_err(|_| damaged("the identity key has the wrong length"))?;
        let identity = SigningKey::from_bytes(secret);
        if identity.verifying_key().as_bytes().as_slice() != public_key.as_slice() {
            return Err(damaged("the identity key pair does not match"));
        }
        let role: Role = role_of(&role).map_err(|_| damaged("unknown role"))?;
        Ok(Some(Session {
            token,
            user_id: to_u64(user_id),
            username,
            role,
            expires_at_ms: to_u64(expires_at_ms),
            identity,
        }))
    }

    /// Forgets the session and the identity key. Returns whether there was
    /// a session to forget.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn clear_session(&self) -> Result<bool, StoreError> {
        let db = |source| database(&self.path, source);
        let mut tx = self.pool.begin().await.map_err(db)?;
        let sessions = sqlx::query("DELETE FROM session")
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        sqlx::query("DELETE FROM identity")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(sessions > 0)
    }

    /// The highest log index this peer has seen (0 if none): what a read
    /// passes as `min_index` to see the peer's own writes on any node.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn max_seen_index(&self) -> Result<u64, StoreError> {
        Ok(self
            .setting(MAX_SEEN_INDEX)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Records that the peer has seen log index `index`; the stored value
    /// only ever grows (two processes may race, the larger wins). Returns
    /// the value now stored.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn bump_max_seen_index(&self, index: u64) -> Result<u64, StoreError> {
        // Stored as text like every setting; compared as integers.
        let (value,): (String,) = sqlx::query_as(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = CAST(MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT) \
             RETURNING value",
        )
        .bind(MAX_SEEN_INDEX)
        .bind(to_i64(index).to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        Ok(value.parse().unwrap_or(index))
    }

    /// The node this peer last saw leading, if any: a new process starts
    /// from it, so that its reads go to followers first and its writes to
    /// the leader first.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn leader_hint(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .setting(LEADER_HINT)
            .await?
            .and_then(|v| v.parse().ok())
            .filter(|id| *id != 0))
    }

    /// Records that node `id` was leading.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn set_leader_hint(&self, id: u64) -> Result<(), StoreError> {
        self.set_setting(LEADER_HINT, &id.to_string()).await
    }

    /// A setting's value, if set.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| database(&self.path, source))
    }

    /// Sets a setting.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// Forgets a setting.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn clear_setting(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM settings WHERE key = ?")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// Remembers `listing` (replacing what was known under its id).
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn save_listing(&self, listing: &LocalListing) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO listings \
             (listing_id, seller_id, path, size, chunk_size, merkle_root, modified_ms, published_at_ms, active) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (listing_id) DO UPDATE SET \
             seller_id = excluded.seller_id, path = excluded.path, size = excluded.size, \
             chunk_size = excluded.chunk_size, merkle_root = excluded.merkle_root, \
             modified_ms = excluded.modified_ms, published_at_ms = excluded.published_at_ms, \
             active = excluded.active",
        )
        .bind(to_i64(listing.listing_id))
        .bind(to_i64(listing.seller_id))
        .bind(path_bytes(&listing.path))
        .bind(to_i64(listing.size))
        .bind(i64::from(listing.chunk_size))
        .bind(listing.merkle_root.as_slice())
        .bind(listing.modified_ms.map(to_i64))
        .bind(to_i64(listing.published_at_ms))
        .bind(listing.active)
        .execute(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        Ok(())
    }

    /// The local file of listing `listing_id`, if this peer published it.
    ///
    /// # Errors
    /// When SQLite fails or the row is damaged.
    pub async fn listing(&self, listing_id: u64) -> Result<Option<LocalListing>, StoreError> {
        let row: Option<ListingRow> = sqlx::query_as(&format!(
            "SELECT {LISTING_COLUMNS} FROM listings WHERE listing_id = ?"
        ))
        .bind(to_i64(listing_id))
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        row.map(|row| self.listing_of(row)).transpose()
    }

    /// The listings of seller `seller_id` published from this peer, by id;
    /// with `include_inactive`, also those it unpublished.
    ///
    /// # Errors
    /// When SQLite fails or a row is damaged.
    pub async fn listings(
        &self,
        seller_id: u64,
        include_inactive: bool,
    ) -> Result<Vec<LocalListing>, StoreError> {
        let rows: Vec<ListingRow> = sqlx::query_as(&format!(
            "SELECT {LISTING_COLUMNS} FROM listings \
             WHERE seller_id = ? AND (active = 1 OR ?) ORDER BY listing_id"
        ))
        .bind(to_i64(seller_id))
        .bind(include_inactive)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| database(&self.path, source))?;
        rows.into_iter().map(|row| self.listing_of(row)).collect()
    }

    /// Records that listing `listing_id` is on sale (`active`) or not.
    /// Returns whether this peer knows the listing.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn set_listing_active(
        &self,
        listing_id: u64,
        active: bool,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query("UPDATE listings SET active = ? WHERE listing_id = ?")
            .bind(active)
            .bind(to_i64(listing_id))
            .execute(&self.pool)
            .await
            .map_err(|source| database(&self.path, source))?
            .rows_affected();
        Ok(changed > 0)
    }

    fn listing_of(&self, row: ListingRow) -> Result<LocalListing, StoreError> {
        let (listing_id, seller_id, path, size, chunk_size, root, modified_ms, published, active) =
            row;
        let damaged = |reason: &str| StoreError::Damaged {
            path: self.path.clone(),
            reason: format!("listing {listing_id}: {reason}"),
        };
        Ok(LocalListing {
            listing_id: to_u64(listing_id),
            seller_id: to_u64(seller_id),
            path: path_from_bytes(path),
            size: to_u64(size),
            chunk_size: u32::try_from(chunk_size)
                .map_err(|_| damaged("the chunk size is out of range"))?,
            merkle_root: root
                .as_slice()
                .try_into()
                .map_err(|_| damaged("the Merkle root has the wrong length"))?,
            modified_ms: modified_ms.map(to_u64),
            published_at_ms: to_u64(published),
            active,
        })
    }

    /// Closes the connections (waits for them to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The columns of a [`ListingRow`], in order.
const LISTING_COLUMNS: &str = "listing_id, seller_id, path, size, chunk_size, merkle_root, \
     modified_ms, published_at_ms, active";

/// One row of `listings`, as SQLite returns it.
type ListingRow = (i64, i64, Vec<u8>, i64, i64, Vec<u8>, Option<i64>, i64, bool);

/// A path as the bytes stored for it: the operating system's own bytes on
/// Unix (a path need not be UTF-8), UTF-8 elsewhere.
fn path_bytes(path: &Path) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt as _;
        path.as_os_str().as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        path.to_string_lossy().into_owned().into_bytes()
    }
}

/// The inverse of [`path_bytes`].
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt as _;
        PathBuf::from(std::ffi::OsString::from_vec(bytes))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn database(path: &Path, source: sqlx::Error) -> StoreError {
    StoreError::Database {
        path: path.to_path_buf(),
        source,
    }
}

/// SQLite integers are signed; our ids, indexes and times stay far below
/// `i64::MAX`, so saturating is only a guard.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

/// Creates `dir` (and its parents) readable by its owner only, if it does
/// not exist. An existing directory is left as its owner set it.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| StoreError::Create {
        path: dir.to_path_buf(),
        source,
    })
}

/// Creates the database file with mode 0600 before SQLite opens it (SQLite
/// would create it with the umask's mode), and tightens an existing one.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let create = |source| StoreError::Create {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let file = options.open(path).map_err(create)?;
        let mode = file.metadata().map_err(create)?.permissions().mode() & 0o777;
        if mode != 0o600 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(create)?;
        }
    }
    #[cfg(not(unix))]
    options.open(path).map_err(create)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user_id: u64, name: &str, seed: u8) -> Session {
        Session {
            token: format!("token-of-{name}"),
            user_id,
            username: name.to_owned(),
            role: Role::User,
            expires_at_ms: now_ms() + 60_000,
            identity: SigningKey::from_bytes(&[seed; 32]),
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn creates_a_private_database() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("nested").join("peer");
        let store = PeerStore::open(&dir).await?;
        assert_eq!(store.path(), dir.join(DATABASE_FILE));
        store.save_session(&session(1, "alice", 1)).await?;
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(store.path()), 0o600);
            let wal = dir.join(format!("{DATABASE_FILE}-wal"));
            if wal.exists() {
                assert_eq!(mode(&wal), 0o600);
            }
        }
        store.close().await;
        Ok(())
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn tightens_an_existing_file() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join(DATABASE_FILE);
        std::fs::write(&path, b"")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let store = PeerStore::open(tmp.path()).await?;
        assert_eq!(mode(&path), 0o600);
        store.close().await;
        Ok(())
    }

    #[tokio::test]
    async fn keeps_one_session_across_reopening() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let store = PeerStore::open(tmp.path()).await?;
        assert!(store.session().await?.is_none());
        store.save_session(&session(1, "alice", 1)).await?;
        store.save_session(&session(2, "bob", 2)).await?;
        store.close().await;

        let store = PeerStore::open_existing(tmp.path())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the database exists"))?;
        let stored = store
            .session()
            .await?
            .ok_or_else(|| anyhow::anyhow!("a session is stored"))?;
        assert_eq!(stored.username, "bob");
        assert_eq!(stored.user_id, 2);
        assert_eq!(stored.token, "token-of-bob");
        assert_eq!(stored.identity.to_bytes(), [2; 32]);
        assert!(!stored.is_expired());

        assert!(store.clear_session().await?);
        assert!(store.session().await?.is_none());
        assert!(!store.clear_session().await?);
        store.close().await;
        Ok(())
    }

    #[tokio::test]
    async fn open_existing_creates_nothing() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("absent");
        assert!(PeerStore::open_existing(&dir).await?.is_none());
        assert!(!dir.exists());
        Ok(())
    }

    #[tokio::test]
    async fn max_seen_index_only_grows() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let store = PeerStore::open(tmp.path()).await?;
        assert_eq!(store.max_seen_index().await?, 0);
        assert_eq!(store.bump_max_seen_index(10).await?, 10);
        assert_eq!(store.bump_max_seen_index(9).await?, 10);
        assert_eq!(store.bump_max_seen_index(100).await?, 100);
        assert_eq!(store.max_seen_index().await?, 100);
        assert_eq!(store.leader_hint().await?, None);
        store.set_leader_hint(3).await?;
        assert_eq!(store.leader_hint().await?, Some(3));
        store.set_setting("colour", "blue").await?;
        assert_eq!(store.setting("colour").await?.as_deref(), Some("blue"));
        store.close().await;
        Ok(())
    }

    #[tokio::test]
    async fn remembers_listings() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let store = PeerStore::open(tmp.path()).await?;
        assert_eq!(store.listing(7).await?, None);
        let listing = LocalListing {
            listing_id: 7,
            seller_id: 1,
            path: PathBuf::from("/srv/files/earthsea.epub"),
            size: 5_000_000,
            chunk_size: 1 << 20,
            merkle_root: [9; 32],
            modified_ms: Some(1_700_000_000_000),
            published_at_ms: 1_700_000_001_000,
            active: true,
        };
        store.save_listing(&listing).await?;
        let other = LocalListing {
            listing_id: 8,
            seller_id: 2,
            modified_ms: None,
            ..listing.clone()
        };
        store.save_listing(&other).await?;
        assert_eq!(store.listing(7).await?.as_ref(), Some(&listing));
        assert_eq!(store.listings(1, false).await?, vec![listing.clone()]);
        assert_eq!(store.listings(2, false).await?, vec![other]);

        assert!(store.set_listing_active(7, false).await?);
        assert!(!store.set_listing_active(70, false).await?);
        assert!(store.listings(1, false).await?.is_empty());
        let all = store.listings(1, true).await?;
        assert_eq!(all.len(), 1);
        assert!(!all[0].active);
        store.close().await;
        Ok(())
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn keeps_paths_that_are_not_utf8() -> anyhow::Result<()> {
        use std::os::unix::ffi::OsStringExt as _;
        let tmp = tempfile::tempdir()?;
        let store = PeerStore::open(tmp.path()).await?;
        let path = PathBuf::from(std::ffi::OsString::from_vec(b"/tmp/caf\xe9".to_vec()));
        let listing = LocalListing {
            listing_id: 1,
            seller_id: 1,
            path: path.clone(),
            size: 1,
            chunk_size: 4096,
            merkle_root: [0; 32],
            modified_ms: None,
            published_at_ms: 0,
            active: true,
        };
        store.save_listing(&listing).await?;
        assert_eq!(store.listing(1).await?.map(|l| l.path), Some(path));
        store.close().await;
        Ok(())
    }

    #[test]
    fn data_dir_prefers_the_explicit_one() {
        assert_eq!(
            data_dir(Some(PathBuf::from("/tmp/peer-a")), PEER_DIR_NAME).ok(),
            Some(PathBuf::from("/tmp/peer-a"))
        );
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(
                data_dir(None, ADMIN_DIR_NAME).ok(),
                Some(PathBuf::from(home).join(ADMIN_DIR_NAME))
            );
        }
    }
}

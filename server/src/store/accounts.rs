//! Queries of accounts, sessions, cluster secrets and settings.

use agora_proto::auth::{KsfParams, Role};
use sqlx::{SqliteConnection, SqliteExecutor};

use super::{to_i64, to_u64};

/// Settings key of the Argon2id parameters.
pub const KSF_SETTING: &str = "ksf";

/// The bootstrap secrets, if the cluster has them yet.
///
/// # Errors
/// Storage errors.
pub async fn secrets(
    conn: impl SqliteExecutor<'_>,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("SELECT server_setup, token_seed FROM cluster_secrets WHERE id = 1")
        .fetch_optional(conn)
        .await
}

/// Stores the bootstrap secrets and first settings unless they exist.
/// Returns whether they were stored.
///
/// # Errors
/// Storage errors.
pub async fn init_secrets(
    conn: &mut SqliteConnection,
    server_setup: &[u8],
    token_seed: &[u8],
    ksf: &KsfParams,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT OR IGNORE INTO cluster_secrets (id, server_setup, token_seed) VALUES (1, ?1, ?2)",
    )
    .bind(server_setup)
    .bind(token_seed)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if done {
        set_ksf(conn, ksf).await?;
    }
    Ok(done)
}

/// Sets the Argon2id parameters.
///
/// # Errors
/// Storage errors.
pub async fn set_ksf(conn: &mut SqliteConnection, ksf: &KsfParams) -> Result<(), sqlx::Error> {
    let value = serde_json::to_string(ksf).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2")
        .bind(KSF_SETTING)
        .bind(value)
        .execute(conn)
        .await?;
    Ok(())
}

/// The Argon2id parameters (OWASP defaults until set).
///
/// # Errors
/// Storage errors.
pub async fn ksf(conn: impl SqliteExecutor<'_>) -> Result<KsfParams, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE key = ?1")
        .bind(KSF_SETTING)
        .fetch_optional(conn)
        .await?;
    Ok(row
        .and_then(|(v,)| serde_json::from_str(&v).ok())
        .unwrap_or(KsfParams::OWASP))
}

/// An account as stored.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// Account id.
    pub id: u64,
    /// Canonical name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Serialized OPAQUE `ServerRegistration`.
    pub password_file: Vec<u8>,
    /// ed25519 public key.
    pub identity_public_key: Vec<u8>,
    /// The sealed private key.
    pub encrypted_identity_key: Vec<u8>,
    /// Whether an admin suspended it.
    pub suspended: bool,
}

type UserTuple = (i64, String, String, Vec<u8>, Vec<u8>, Vec<u8>, i64);

fn user_row(t: UserTuple) -> UserRow {
    UserRow {
        id: to_u64(t.0),
        username: t.1,
        role: if t.2 == "admin" {
            Role::Admin
        } else {
            Role::User
        },
        password_file: t.3,
        identity_public_key: t.4,
        encrypted_identity_key: t.5,
        suspended: t.6 != 0,
    }
}

const USER_COLUMNS: &str =
    "id, username, role, password_file, identity_public_key, encrypted_identity_key, suspended";

/// Finds an account by canonical name.
///
/// # Errors
/// Storage errors.
pub async fn user_by_name(
    conn: impl SqliteExecutor<'_>,
    username: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    let row: Option<UserTuple> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE username = ?1"
    ))
    .bind(username)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(user_row))
}

/// Finds an account by id.
///
/// # Errors
/// Storage errors.
pub async fn user_by_id(
    conn: impl SqliteExecutor<'_>,
    id: u64,
) -> Result<Option<UserRow>, sqlx::Error> {
    let row: Option<UserTuple> =
        sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
            .bind(to_i64(id))
            .fetch_optional(conn)
            .await?;
    Ok(row.map(user_row))
}

/// A new account's fields.
pub struct NewUser<'a> {
    /// Canonical name.
    pub username: &'a str,
    /// Role.
    pub role: Role,
    /// Serialized OPAQUE `ServerRegistration`.
    pub password_file: &'a [u8],
    /// ed25519 public key.
    pub identity_public_key: &'a [u8],
    /// The sealed private key.
    pub encrypted_identity_key: &'a [u8],
}

/// Creates an account; `None` when the name is taken.
///
/// # Errors
/// Storage errors.
pub async fn insert_user(
    conn: &mut SqliteConnection,
    user: &NewUser<'_>,
    time_ms: u64,
) -> Result<Option<u64>, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        // The account keeps the Argon2id parameters in force when it is
        // created: its password file was made with them.
        "INSERT INTO users (username, role, password_file, identity_public_key, encrypted_identity_key, created_ms, ksf)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT value FROM settings WHERE key = 'ksf'))
         ON CONFLICT (username) DO NOTHING RETURNING id",
    )
    .bind(user.username)
    .bind(user.role.as_str())
    .bind(user.password_file)
    .bind(user.identity_public_key)
    .bind(user.encrypted_identity_key)
    .bind(to_i64(time_ms))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(id,)| to_u64(id)))
}

/// Records a revoked session (idempotent).
///
/// # Errors
/// Storage errors.
pub async fn revoke_session(
    conn: &mut SqliteConnection,
    session_id: &str,
    user_id: u64,
    expires_at_ms: u64,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT OR IGNORE INTO revoked_sessions (session_id, user_id, expires_at_ms, revoked_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(session_id)
    .bind(to_i64(user_id))
    .bind(to_i64(expires_at_ms))
    .bind(to_i64(time_ms))
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether a session was revoked, or its account deleted.
///
/// # Errors
/// Storage errors.
pub async fn is_revoked(
    conn: impl SqliteExecutor<'_>,
    session_id: &str,
    user_id: u64,
) -> Result<bool, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT 1 FROM revoked_sessions WHERE session_id = ?1 \
         UNION ALL SELECT 1 FROM users WHERE id = ?2 AND deleted_ms IS NOT NULL",
    )
    .bind(session_id)
    .bind(to_i64(user_id))
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// Forgets revocations of sessions that have expired anyway by `now_ms`.
///
/// # Errors
/// Storage errors.
pub async fn prune_revoked(conn: &mut SqliteConnection, now_ms: u64) -> Result<(), sqlx::Error> {
    // An hour of slack, for nodes whose clocks run behind the leader's.
    sqlx::query("DELETE FROM revoked_sessions WHERE expires_at_ms < ?1")
        .bind(to_i64(now_ms.saturating_sub(3600 * 1000)))
        .execute(conn)
        .await?;
    Ok(())
}

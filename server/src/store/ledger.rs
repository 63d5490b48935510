//! Queries of the ledger: accounts, journal, holds, commission.

use sqlx::{SqliteConnection, SqliteExecutor};

use super::{to_i64, to_u64};
use crate::domain::ledger::{Account, AccountId, Entry, Hold, HoldState, DEFAULT_BPS};

/// Settings key of the commission.
pub const COMMISSION_SETTING: &str = "commission_bps";

/// Opens the ledger account of a new user.
///
/// # Errors
/// Storage errors.
pub async fn open_user_account(
    conn: &mut SqliteConnection,
    user_id: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT OR IGNORE INTO ledger_accounts (kind, user_id) VALUES ('user', ?1)")
        .bind(to_i64(user_id))
        .execute(conn)
        .await?;
    Ok(())
}

/// A user's ledger account.
///
/// # Errors
/// Storage errors.
pub async fn user_account(
    conn: impl SqliteExecutor<'_>,
    user_id: u64,
) -> Result<Option<Account>, sqlx::Error> {
    let row: Option<(i64, i64, i64)> =
        sqlx::query_as("SELECT id, balance, held FROM ledger_accounts WHERE user_id = ?1")
            .bind(to_i64(user_id))
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(id, balance, held)| Account {
        id,
        balance,
        held: to_u64(held),
    }))
}

/// An account by ledger id.
///
/// # Errors
/// Storage errors; a missing system account is one.
pub async fn account(conn: impl SqliteExecutor<'_>, id: AccountId) -> Result<Account, sqlx::Error> {
    let (id, balance, held): (i64, i64, i64) =
        sqlx::query_as("SELECT id, balance, held FROM ledger_accounts WHERE id = ?1")
            .bind(id)
            .fetch_one(conn)
            .await?;
    Ok(Account {
        id,
        balance,
        held: to_u64(held),
    })
}

/// Stores accounts' new balances and held money.
///
/// # Errors
/// Storage errors.
pub async fn save_accounts(
    conn: &mut SqliteConnection,
    accounts: &[&Account],
) -> Result<(), sqlx::Error> {
    for a in accounts {
        sqlx::query("UPDATE ledger_accounts SET balance = ?2, held = ?3 WHERE id = ?1")
            .bind(a.id)
            .bind(a.balance)
            .bind(to_i64(a.held))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Where a journal entry came from.
#[derive(Debug, Clone, Copy)]
pub struct EntryContext<'a> {
    /// The hold it settles, if any.
    pub hold_id: Option<i64>,
    /// The purchase it belongs to, if any.
    pub purchase_id: Option<&'a str>,
    /// Log index of the command.
    pub log_index: u64,
    /// Leader's clock of the command.
    pub time_ms: u64,
}

/// Appends journal entries.
///
/// # Errors
/// Storage errors.
pub async fn journal(
    conn: &mut SqliteConnection,
    entries: &[Entry],
    ctx: EntryContext<'_>,
) -> Result<(), sqlx::Error> {
    for e in entries {
        sqlx::query(
            "INSERT INTO journal (debit, credit, amount, kind, hold_id, purchase_id, log_index, time_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(e.debit)
        .bind(e.credit)
        .bind(to_i64(e.amount))
        .bind(e.kind.as_str())
        .bind(ctx.hold_id)
        .bind(ctx.purchase_id)
        .bind(to_i64(ctx.log_index))
        .bind(to_i64(ctx.time_ms))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Creates an open hold and returns its id.
///
/// # Errors
/// Storage errors.
pub async fn insert_hold(
    conn: &mut SqliteConnection,
    hold: &Hold,
    purchase_id: Option<&str>,
    index: u64,
) -> Result<i64, sqlx::Error> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO holds (account, payee, amount, state, expires_at_ms, purchase_id, opened_index)
         VALUES (?1, ?2, ?3, 'open', ?4, ?5, ?6) RETURNING id",
    )
    .bind(hold.account)
    .bind(hold.payee)
    .bind(to_i64(hold.amount))
    .bind(to_i64(hold.expires_at_ms))
    .bind(purchase_id)
    .bind(to_i64(index))
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// A hold by id.
///
/// # Errors
/// Storage errors.
pub async fn hold(conn: impl SqliteExecutor<'_>, id: i64) -> Result<Option<Hold>, sqlx::Error> {
    let row: Option<(i64, i64, i64, i64, String, i64)> = sqlx::query_as(
        "SELECT id, account, payee, amount, state, expires_at_ms FROM holds WHERE id = ?1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(
        row.map(|(id, account, payee, amount, state, expires)| Hold {
            id,
            account,
            payee,
            amount: to_u64(amount),
            state: HoldState::parse(&state).unwrap_or(HoldState::Voided),
            expires_at_ms: to_u64(expires),
        }),
    )
}

/// Records a hold's new state.
///
/// # Errors
/// Storage errors.
pub async fn close_hold(
    conn: &mut SqliteConnection,
    hold: &Hold,
    index: u64,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE holds SET state = ?2, closed_index = ?3, closed_reason = ?4 WHERE id = ?1")
        .bind(hold.id)
        .bind(hold.state.as_str())
        .bind(to_i64(index))
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// Ids of open holds expired at `now_ms`, oldest first, at most `limit`.
///
/// # Errors
/// Storage errors.
pub async fn expired_holds(
    conn: impl SqliteExecutor<'_>,
    now_ms: u64,
    limit: u32,
) -> Result<Vec<i64>, sqlx::Error> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM holds WHERE state = 'open' AND expires_at_ms <= ?1 ORDER BY expires_at_ms, id LIMIT ?2",
    )
    .bind(to_i64(now_ms))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The commission in basis points.
///
/// # Errors
/// Storage errors.
pub async fn commission_bps(conn: impl SqliteExecutor<'_>) -> Result<u32, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE key = ?1")
        .bind(COMMISSION_SETTING)
        .fetch_optional(conn)
        .await?;
    Ok(row.and_then(|(v,)| v.parse().ok()).unwrap_or(DEFAULT_BPS))
}

/// Sets the commission.
///
/// # Errors
/// Storage errors.
pub async fn set_commission_bps(conn: &mut SqliteConnection, bps: u32) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2")
        .bind(COMMISSION_SETTING)
        .bind(bps.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// One journal entry as a user sees it.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Entry id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Signed cents for the user.
    pub amount: i64,
    /// The other side.
    pub counterparty: String,
    /// Leader's clock.
    pub time_ms: u64,
    /// Log index.
    pub log_index: u64,
    /// Hold settled, if any.
    pub hold_id: Option<i64>,
}

/// Filters of a cash-flow page.
#[derive(Debug, Clone, Default)]
pub struct FlowFilter {
    /// Only these kinds (empty = all).
    pub kinds: Vec<String>,
    /// At or after (Unix ms), if set.
    pub from_ms: Option<u64>,
    /// Before (Unix ms), if set.
    pub to_ms: Option<u64>,
    /// Entries older than this id, if set (the cursor).
    pub before_id: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// A page of an account's journal, newest first.
///
/// # Errors
/// Storage errors.
pub async fn flows(
    conn: impl SqliteExecutor<'_>,
    account: AccountId,
    filter: &FlowFilter,
) -> Result<Vec<Flow>, sqlx::Error> {
    let mut sql = String::from(
        "SELECT j.id, j.kind, j.amount, j.debit, j.credit, j.time_ms, j.log_index, j.hold_id,
                other.kind, u.username
         FROM journal j
         JOIN ledger_accounts other ON other.id = CASE WHEN j.debit = ?1 THEN j.credit ELSE j.debit END
         LEFT JOIN users u ON u.id = other.user_id
         WHERE (j.debit = ?1 OR j.credit = ?1)",
    );
    if filter.before_id.is_some() {
        sql.push_str(" AND j.id < ?2");
    }
    if filter.from_ms.is_some() {
        sql.push_str(" AND j.time_ms >= ?3");
    }
    if filter.to_ms.is_some() {
        sql.push_str(" AND j.time_ms < ?4");
    }
    if !filter.kinds.is_empty() {
        sql.push_str(" AND j.kind IN (SELECT value FROM json_each(?5))");
    }
    sql.push_str(" ORDER BY j.id DESC LIMIT ?6");
    let kinds = serde_json::to_string(&filter.kinds).unwrap_or_else(|_| "[]".into());
    type Row = (
        i64,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<i64>,
        String,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(account)
        .bind(filter.before_id.unwrap_or(i64::MAX))
        .bind(to_i64(filter.from_ms.unwrap_or(0)))
        .bind(to_i64(filter.to_ms.unwrap_or(u64::MAX)))
        .bind(kinds)
        .bind(i64::from(filter.limit))
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                kind,
                amount,
                debit,
                _credit,
                time_ms,
                log_index,
                hold_id,
                other_kind,
                username,
            )| Flow {
                id,
                kind,
                amount: if debit == account { -amount } else { amount },
                counterparty: match username {
                    Some(name) => format!("user:{name}"),
                    None => other_kind,
                },
                time_ms: to_u64(time_ms),
                log_index: to_u64(log_index),
                hold_id,
            },
        )
        .collect())
}

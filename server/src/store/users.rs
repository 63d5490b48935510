//! Queries behind the admin console's user commands: search, the full
//! picture of one account, and deletion of inactive accounts.

use agora_proto::auth::KsfParams;
use sqlx::{SqliteConnection, SqliteExecutor};

use super::{to_i64, to_u64};

/// One line of a user search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLine {
    /// Account id.
    pub id: u64,
    /// Canonical name.
    pub username: String,
    /// "user" or "admin".
    pub role: String,
    /// When it was created.
    pub created_ms: u64,
    /// Ledger balance, cents.
    pub balance: i64,
    /// Suspended by an admin.
    pub suspended: bool,
}

type LineTuple = (i64, String, String, i64, Option<i64>, i64);

/// Live (not deleted) users whose name contains `text` (already
/// lower-case: names are canonical), with an id above `after_id`, by id.
///
/// # Errors
/// Storage errors.
pub async fn find(
    conn: impl SqliteExecutor<'_>,
    text: &str,
    after_id: u64,
    limit: u32,
) -> Result<Vec<UserLine>, sqlx::Error> {
    // instr() rather than LIKE: the text needs no escaping of % and _.
    let rows: Vec<LineTuple> = sqlx::query_as(
        "SELECT u.id, u.username, u.role, u.created_ms, a.balance, u.suspended \
         FROM users u LEFT JOIN ledger_accounts a ON a.user_id = u.id \
         WHERE u.deleted_ms IS NULL AND u.id > ?1 AND instr(u.username, ?2) > 0 \
         ORDER BY u.id LIMIT ?3",
    )
    .bind(to_i64(after_id))
    .bind(text)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|t| UserLine {
            id: to_u64(t.0),
            username: t.1,
            role: t.2,
            created_ms: to_u64(t.3),
            balance: t.4.unwrap_or(0),
            suspended: t.5 != 0,
        })
        .collect())
}

/// What ties an account to the market: everything that must be zero
/// before it may be deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ties {
    /// Ledger balance, cents.
    pub balance: i64,
    /// Held cents.
    pub held: u64,
    /// Open holds on its money or in its favour.
    pub open_holds: u64,
    /// Sales whose proceeds are still held for disputes.
    pub pending_proceeds: u64,
    /// Active listings.
    pub active_listings: u64,
    /// Purchases still open or keyed, as buyer or seller.
    pub live_purchases: u64,
}

impl Ties {
    /// Why the account cannot be deleted, or `None` when it can. Pure, so
    /// the apply path and the read path give the same answer.
    #[must_use]
    pub fn delete_blocker(&self, username: &str, admin: bool) -> Option<String> {
        if admin {
            return Some(format!(
                "{username} is an admin; admin accounts cannot be deleted"
            ));
        }
        let mut reasons = Vec::new();
        if self.balance != 0 {
            reasons.push(format!(
                "its balance is {} (withdraw or move it first)",
                agora_proto::amount::format_signed(self.balance)
            ));
        }
        if self.open_holds > 0 {
            reasons.push(format!("it has {} open hold(s)", self.open_holds));
        }
        if self.pending_proceeds > 0 {
            reasons.push(format!(
                "{} sale(s) still have proceeds held for disputes",
                self.pending_proceeds
            ));
        }
        if self.active_listings > 0 {
            reasons.push(format!(
                "it has {} active listing(s) (unpublish them first)",
                self.active_listings
            ));
        }
        if self.live_purchases > 0 {
            reasons.push(format!(
                "{} purchase(s) are still in progress",
                self.live_purchases
            ));
        }
        if reasons.is_empty() {
            None
        } else {
            Some(format!(
                "{username} cannot be deleted: {}",
                reasons.join("; ")
            ))
        }
    }
}

/// The ties of account `user_id`.
///
/// # Errors
/// Storage errors.
pub async fn ties(conn: &mut SqliteConnection, user_id: u64) -> Result<Ties, sqlx::Error> {
    let id = to_i64(user_id);
    let account: Option<(i64, i64, i64)> =
        sqlx::query_as("SELECT id, balance, held FROM ledger_accounts WHERE user_id = ?1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let (account_id, balance, held) = account.unwrap_or((-1, 0, 0));
    let open_holds: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM holds WHERE state = 'open' AND (account = ?1 OR payee = ?1)",
    )
    .bind(account_id)
    .fetch_one(&mut *conn)
    .await?;
    let pending_proceeds: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM purchases WHERE seller_id = ?1 AND proceeds = 'pending'",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let active_listings: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM listings WHERE seller_id = ?1 AND active")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    let live_purchases: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM purchases WHERE (buyer_id = ?1 OR seller_id = ?1) \
         AND state IN ('open', 'keyed')",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Ties {
        balance,
        held: to_u64(held),
        open_holds: to_u64(open_holds),
        pending_proceeds: to_u64(pending_proceeds),
        active_listings: to_u64(active_listings),
        live_purchases: to_u64(live_purchases),
    })
}

/// When the account was created (Unix ms), if it exists.
///
/// # Errors
/// Storage errors.
pub async fn created_ms(
    conn: impl SqliteExecutor<'_>,
    user_id: u64,
) -> Result<Option<u64>, sqlx::Error> {
    let ms: Option<i64> = sqlx::query_scalar("SELECT created_ms FROM users WHERE id = ?1")
        .bind(to_i64(user_id))
        .fetch_optional(conn)
        .await?;
    Ok(ms.map(to_u64))
}

/// The name a deleted account's row carries: `~` is not allowed in a
/// canonical name, so it never collides with a registration.
#[must_use]
pub fn tombstone_name(user_id: u64) -> String {
    format!("~deleted-{user_id}")
}

/// Deletes an account: frees its name and drops its password file and
/// sealed identity key. The row stays for the history that refers to it.
///
/// # Errors
/// Storage errors.
pub async fn tombstone(
    conn: &mut SqliteConnection,
    user_id: u64,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET username = ?2, password_file = x'', encrypted_identity_key = x'', \
         deleted_ms = ?3 WHERE id = ?1",
    )
    .bind(to_i64(user_id))
    .bind(tombstone_name(user_id))
    .bind(to_i64(time_ms))
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether account `user_id` was deleted.
///
/// # Errors
/// Storage errors.
pub async fn is_deleted(conn: impl SqliteExecutor<'_>, user_id: u64) -> Result<bool, sqlx::Error> {
    let deleted: Option<Option<i64>> =
        sqlx::query_scalar("SELECT deleted_ms FROM users WHERE id = ?1")
            .bind(to_i64(user_id))
            .fetch_optional(conn)
            .await?;
    Ok(matches!(deleted, Some(Some(_))))
}

/// The Argon2id parameters account `username` registered with; `None`
/// for an unknown name or an account from before they were recorded.
///
/// # Errors
/// Storage errors.
pub async fn ksf_of(
    conn: impl SqliteExecutor<'_>,
    username: &str,
) -> Result<Option<KsfParams>, sqlx::Error> {
    let value: Option<Option<String>> =
        sqlx::query_scalar("SELECT ksf FROM users WHERE username = ?1")
            .bind(username)
            .fetch_optional(conn)
            .await?;
    Ok(value.flatten().and_then(|v| serde_json::from_str(&v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inactive_account_has_no_blocker() {
        assert_eq!(Ties::default().delete_blocker("ann", false), None);
    }

    #[test]
    fn every_tie_is_named() {
        let ties = Ties {
            balance: 150,
            held: 0,
            open_holds: 1,
            pending_proceeds: 2,
            active_listings: 3,
            live_purchases: 4,
        };
        let blocker = ties.delete_blocker("ann", false).expect("blocked");
        for part in [
            "balance is 1.50",
            "1 open hold",
            "2 sale",
            "3 active",
            "4 purchase",
        ] {
            assert!(blocker.contains(part), "{blocker} lacks {part}");
        }
    }

    #[test]
    fn admins_are_never_deleted() {
        assert!(Ties::default()
            .delete_blocker("root", true)
            .is_some_and(|b| b.contains("admin")));
    }

    #[test]
    fn tombstones_are_not_names() {
        assert!(agora_proto::auth::canonical_username(&tombstone_name(7)).is_err());
    }
}

//! The ledger audit: checks that must hold on every node at every applied
//! index. Run inside one read transaction so every check sees one moment.

use sqlx::SqliteConnection;

use super::{digest, meta, to_u64};
use crate::raft::typ::LogId;

/// The audit's findings.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    /// Each failed check, as a sentence.
    pub problems: Vec<String>,
    /// Applied index the audit saw.
    pub applied_index: u64,
    /// Digest of the ledger tables.
    pub ledger_digest: String,
    /// Sum of all balances.
    pub balance_sum: i64,
    /// Accounts checked.
    pub accounts: u64,
    /// Journal entries checked.
    pub journal_entries: u64,
    /// Open holds.
    pub open_holds: u64,
    /// Money on user accounts.
    pub user_money: u64,
    /// The operator's balance.
    pub operator_balance: i64,
}

/// The ledger tables, in digest order.
const LEDGER_TABLES: &[&str] = &["holds", "journal", "ledger_accounts", "purchases"];

/// Runs every check.
///
/// # Errors
/// Storage errors.
pub async fn audit(conn: &mut SqliteConnection) -> Result<AuditReport, sqlx::Error> {
    let mut report = AuditReport::default();
    let applied: Option<LogId> = meta::get(conn, meta::LAST_APPLIED).await?;
    report.applied_index = applied.map_or(0, |l| l.index);

    let (sum, accounts, operator): (Option<i64>, i64, Option<i64>) = sqlx::query_as(
        "SELECT SUM(balance), COUNT(*), (SELECT balance FROM ledger_accounts WHERE kind = 'operator') FROM ledger_accounts",
    )
    .fetch_one(&mut *conn)
    .await?;
    report.balance_sum = sum.unwrap_or(0);
    report.accounts = to_u64(accounts);
    report.operator_balance = operator.unwrap_or(0);
    if report.balance_sum != 0 {
        report.problems.push(format!(
            "the balances sum to {} cents instead of 0",
            report.balance_sum
        ));
    }

    // Every balance equals its journal: credits minus debits.
    let mismatched: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT a.id, a.balance,
                COALESCE((SELECT SUM(amount) FROM journal WHERE credit = a.id), 0)
              - COALESCE((SELECT SUM(amount) FROM journal WHERE debit = a.id), 0) AS from_journal
         FROM ledger_accounts a WHERE a.balance != from_journal",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (id, balance, journal) in mismatched {
        report.problems.push(format!(
            "account {id} has a balance of {balance} cents but its journal sums to {journal}"
        ));
    }

    // Held money equals the open holds plus the sale proceeds still in
    // their dispute window; no user account is overdrawn.
    let held_wrong: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT a.id, a.held,
                COALESCE((SELECT SUM(amount) FROM holds WHERE account = a.id AND state = 'open'), 0)
              + COALESCE((SELECT SUM(p.price - p.commission) FROM purchases p
                          WHERE p.seller_id = a.user_id AND p.proceeds = 'pending'), 0) AS open
         FROM ledger_accounts a WHERE a.held != open",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (id, held, open) in held_wrong {
        report.problems.push(format!(
            "account {id} holds {held} cents but its open holds and pending proceeds sum to {open}"
        ));
    }
    // A refunded sale paid the whole price back, nothing else did.
    let bad_refunds: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT p.id, p.price, COALESCE((SELECT SUM(amount) FROM journal j
                 WHERE j.kind = 'refund' AND j.purchase_id = CAST(p.id AS TEXT)), 0) AS refunded
         FROM purchases p
         WHERE (p.proceeds = 'refunded' AND refunded != p.price)
            OR (COALESCE(p.proceeds, '') != 'refunded' AND refunded != 0)",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (id, price, refunded) in bad_refunds {
        report.problems.push(format!(
            "purchase {id} (price {price} cents) has {refunded} cents of refunds in the journal"
        ));
    }
    let overdrawn: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT id, balance, held FROM ledger_accounts WHERE kind != 'external' AND balance - held < 0")
            .fetch_all(&mut *conn)
            .await?;
    for (id, balance, held) in overdrawn {
        report.problems.push(format!(
            "account {id} is overdrawn: balance {balance} cents, held {held}"
        ));
    }

    // A voided hold moved no money; a posted hold moved exactly its amount.
    let bad_holds: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT h.id, h.state, h.amount, COALESCE((SELECT SUM(amount) FROM journal WHERE hold_id = h.id), 0) AS moved
         FROM holds h
         WHERE (h.state IN ('open', 'voided') AND moved != 0) OR (h.state = 'posted' AND moved != h.amount)",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (id, state, amount, moved) in bad_holds {
        report.problems.push(format!(
            "hold {id} is {state} (amount {amount} cents) but the journal moved {moved} cents for it"
        ));
    }

    // Every purchase's money agrees with its state: a paid purchase has a
    // posted hold (and its commission is what the journal gave the
    // operator), a live one an open hold, a cancelled or expired one a voided
    // hold; a free purchase has no hold; the key exists once keyed.
    let bad_purchases: Vec<(i64, String, Option<String>)> = sqlx::query_as(
        "SELECT p.id, p.state, h.state FROM purchases p LEFT JOIN holds h ON h.id = p.hold_id
         WHERE (p.price > 0 AND (h.id IS NULL OR h.amount != p.price OR h.purchase_id != CAST(p.id AS TEXT)
                 OR (p.state = 'completed' AND h.state != 'posted')
                 OR (p.state IN ('open', 'keyed') AND h.state != 'open')
                 OR (p.state IN ('cancelled', 'expired') AND h.state != 'voided')
                 OR (p.state = 'completed' AND p.commission != COALESCE(
                     (SELECT SUM(amount) FROM journal WHERE hold_id = h.id AND kind = 'commission'), 0))))
            OR (p.price = 0 AND p.hold_id IS NOT NULL)
            OR (p.state IN ('keyed', 'completed') AND p.escrow_key IS NULL)",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (id, state, hold) in bad_purchases {
        report.problems.push(format!(
            "purchase {id} is {state} but its hold is {}",
            hold.as_deref()
                .unwrap_or("missing (or the purchase is inconsistent)")
        ));
    }

    let (entries, open_holds, user_money): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM journal), (SELECT COUNT(*) FROM holds WHERE state = 'open'),
                (SELECT SUM(balance) FROM ledger_accounts WHERE kind = 'user')",
    )
    .fetch_one(&mut *conn)
    .await?;
    report.journal_entries = to_u64(entries);
    report.open_holds = to_u64(open_holds);
    report.user_money = to_u64(user_money.unwrap_or(0));

    let tables: Vec<String> = LEDGER_TABLES.iter().map(|t| (*t).to_owned()).collect();
    report.ledger_digest = digest::tables_digest(conn, &tables).await?;
    Ok(report)
}

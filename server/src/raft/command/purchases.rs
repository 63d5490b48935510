//! Applying the purchase commands. The rules of a purchase's life are in
//! [`crate::domain::purchases`]; this is where they meet the ledger: the
//! hold opens with the purchase, is posted in the command that releases the
//! key, and is voided in the command that cancels or expires the purchase.

use sqlx::SqliteConnection;

use super::{close_hold, no_account, no_listing, no_user, Actor, ApplyContext, Outcome, Rejection};
use crate::domain::ledger;
use crate::domain::purchases::{Cancellation, Completion, Deposit, PurchaseError, PurchaseState};
use crate::store;
use crate::store::purchases::{DisputeRow, NewPurchase, Proceeds, PurchaseRow};

impl From<PurchaseError> for Rejection {
    fn from(e: PurchaseError) -> Self {
        match e {
            PurchaseError::NotYours(m) => Rejection::PermissionDenied(m),
            PurchaseError::WrongState(m) => Rejection::FailedPrecondition(m),
        }
    }
}

fn refused(message: String) -> Outcome {
    Outcome::Rejected(Rejection::FailedPrecondition(message))
}

fn no_purchase(purchase_id: u64) -> Outcome {
    Outcome::Rejected(Rejection::NotFound(format!(
        "there is no purchase {purchase_id}"
    )))
}

async fn load(
    conn: &mut SqliteConnection,
    purchase_id: u64,
) -> Result<Result<PurchaseRow, Outcome>, sqlx::Error> {
    Ok(store::purchases::get(&mut *conn, purchase_id)
        .await?
        .ok_or_else(|| no_purchase(purchase_id)))
}

/// `BeginPurchase`: checks the listing, the buyer, the seller and the
/// money, then opens the purchase and its hold together.
pub(super) async fn begin(
    conn: &mut SqliteConnection,
    ctx: ApplyContext,
    buyer_id: u64,
    listing_id: u64,
    ttl_ms: u64,
) -> Result<Outcome, sqlx::Error> {
    let Some(listing) = store::catalogue::listing(&mut *conn, listing_id).await? else {
        return Ok(no_listing(listing_id));
    };
    if !listing.active {
        return Ok(refused(format!(
            "listing {listing_id} is no longer on sale"
        )));
    }
    if listing.seller_id == buyer_id {
        return Ok(refused(format!(
            "listing {listing_id} is yours; you cannot buy your own listing"
        )));
    }
    let Some(buyer) = store::accounts::user_by_id(&mut *conn, buyer_id).await? else {
        return Ok(no_user(buyer_id));
    };
    if buyer.suspended {
        return Ok(refused("your account is suspended; you cannot buy".into()));
    }
    match store::catalogue::user_suspended(&mut *conn, listing.seller_id).await? {
        None => return Ok(no_user(listing.seller_id)),
        Some(true) => {
            return Ok(refused(format!(
                "the seller of listing {listing_id} is suspended; it cannot be bought"
            )))
        }
        Some(false) => {}
    }
    let online = store::catalogue::presence(&mut *conn, listing.seller_id)
        .await?
        .is_some_and(|p| p.online);
    if !online {
        return Ok(refused(format!(
            "the seller of listing {listing_id} is offline, so nobody can send you the file; nothing was charged. Try again when they are online (`agora search --online` shows listings whose sellers are)"
        )));
    }
    let expires_at_ms = ctx.time_ms.saturating_add(ttl_ms);
    // Check the money before writing anything: a refusal changes nothing.
    let mut hold_accounts = None;
    if listing.price > 0 {
        let Some(mut account) = store::ledger::user_account(&mut *conn, buyer_id).await? else {
            return Ok(no_account(buyer_id));
        };
        let Some(payee) = store::ledger::user_account(&mut *conn, listing.seller_id).await? else {
            return Ok(no_account(listing.seller_id));
        };
        if let Err(e) = ledger::open_hold(&mut account, listing.price) {
            return Ok(Outcome::Rejected(e.into()));
        }
        hold_accounts = Some((account, payee));
    }
    let purchase_id = store::purchases::insert(
        conn,
        &NewPurchase {
            listing_id,
            title: &listing.text.title,
            buyer_id,
            buyer_key: &buyer.identity_public_key,
            seller_id: listing.seller_id,
            price: listing.price,
            size: listing.facts.size,
            chunk_size: listing.facts.chunk_size,
            merkle_root: &listing.facts.merkle_root,
            expires_at_ms,
        },
        ctx.index,
        ctx.time_ms,
    )
    .await?;
    if let Some((account, payee)) = hold_accounts {
        let hold = ledger::Hold {
            id: 0,
            account: account.id,
            payee: payee.id,
            amount: listing.price,
            state: ledger::HoldState::Open,
            expires_at_ms,
        };
        let reference = purchase_id.to_string();
        let hold_id = store::ledger::insert_hold(conn, &hold, Some(&reference), ctx.index).await?;
        store::ledger::save_accounts(conn, &[&account]).await?;
        store::purchases::set_hold(conn, purchase_id, hold_id).await?;
    }
    Ok(Outcome::Purchase { purchase_id })
}

/// `DepositKey`: the seller's key and ciphertext root, once.
pub(super) async fn deposit(
    conn: &mut SqliteConnection,
    ctx: ApplyContext,
    purchase_id: u64,
    seller_id: u64,
    key: &[u8; 32],
    ciphertext_root: &[u8; 32],
) -> Result<Outcome, sqlx::Error> {
    let purchase = match load(conn, purchase_id).await? {
        Ok(p) => p,
        Err(outcome) => return Ok(outcome),
    };
    match purchase
        .facts()
        .deposit(seller_id, key, ciphertext_root, ctx.time_ms)
    {
        Err(e) => Ok(Outcome::Rejected(e.into())),
        Ok(Deposit::Again) => Ok(Outcome::Purchase { purchase_id }),
        Ok(Deposit::Record) => {
            store::purchases::set_keyed(conn, purchase_id, key, ciphertext_root).await?;
            Ok(Outcome::Purchase { purchase_id })
        }
    }
}

/// `CompletePurchase`: posts the hold and releases the key in this one
/// command, or changes nothing.
pub(super) async fn complete(
    conn: &mut SqliteConnection,
    ctx: ApplyContext,
    purchase_id: u64,
    buyer_id: u64,
    ciphertext_root: &[u8; 32],
) -> Result<Outcome, sqlx::Error> {
    let purchase = match load(conn, purchase_id).await? {
        Ok(p) => p,
        Err(outcome) => return Ok(outcome),
    };
    match purchase
        .facts()
        .complete(buyer_id, ciphertext_root, ctx.time_ms)
    {
        Err(e) => Ok(Outcome::Rejected(e.into())),
        Ok(Completion::Again) => Ok(Outcome::Purchase { purchase_id }),
        Ok(Completion::Settle) => {
            let mut commission = 0;
            let window = store::purchases::dispute_window_ms(&mut *conn).await?;
            if let Some(hold_id) = purchase.hold_id {
                let bps = store::ledger::commission_bps(&mut *conn).await?;
                commission = ledger::commission(purchase.price, bps).unwrap_or(0);
                // Check that the proceeds can be held before anything is
                // written: a refusal must change nothing.
                let net = purchase.price.saturating_sub(commission);
                let Some(mut seller) =
                    store::ledger::user_account(&mut *conn, purchase.seller_id).await?
                else {
                    return Ok(no_account(purchase.seller_id));
                };
                if window > 0 {
                    if let Err(e) = ledger::hold_proceeds(&mut seller, net) {
                        return Ok(Outcome::Rejected(e.into()));
                    }
                }
                let reference = purchase_id.to_string();
                let posted = close_hold(
                    conn,
                    ctx,
                    hold_id,
                    true,
                    "purchase completed",
                    Some(&reference),
                )
                .await?;
                if !matches!(posted, Outcome::Hold { .. }) {
                    // The hold refused before writing anything; so does the
                    // purchase.
                    return Ok(posted);
                }
            }
            store::purchases::close(
                conn,
                purchase_id,
                PurchaseState::Completed,
                commission,
                ctx.index,
                ctx.time_ms,
            )
            .await?;
            // The proceeds stay held on the seller's account for the dispute
            // window (available at once when the window is 0); checked above.
            let net = purchase.price.saturating_sub(commission);
            let release_at = ctx.time_ms.saturating_add(window);
            if window > 0 {
                if net > 0 {
                    let Some(mut seller) =
                        store::ledger::user_account(&mut *conn, purchase.seller_id).await?
                    else {
                        return Ok(no_account(purchase.seller_id));
                    };
                    if let Err(e) = ledger::hold_proceeds(&mut seller, net) {
                        return Ok(Outcome::Rejected(e.into()));
                    }
                    store::ledger::save_accounts(conn, &[&seller]).await?;
                }
                store::purchases::set_proceeds(
                    conn,
                    purchase_id,
                    Proceeds::Pending,
                    Some(release_at),
                )
                .await?;
            } else {
                store::purchases::set_proceeds(
                    conn,
                    purchase_id,
                    Proceeds::Released,
                    Some(release_at),
                )
                .await?;
            }
            store::purchases::count_for_seller(conn, purchase.seller_id, false).await?;
            Ok(Outcome::Purchase { purchase_id })
        }
    }
}

/// `CancelPurchase`: the buyer (or an admin) gives up; the hold is voided.
pub(super) async fn cancel(
    conn: &mut SqliteConnection,
    ctx: ApplyContext,
    purchase_id: u64,
    actor: Actor,
) -> Result<Outcome, sqlx::Error> {
    let purchase = match load(conn, purchase_id).await? {
        Ok(p) => p,
        Err(outcome) => return Ok(outcome),
    };
    match purchase.facts().cancel(actor.user_id, actor.admin) {
        Err(e) => Ok(Outcome::Rejected(e.into())),
        Ok(Cancellation::Again) => Ok(Outcome::Purchase { purchase_id }),
        Ok(Cancellation::Void) => {
            close_unpaid(conn, ctx, purchase_id, PurchaseState::Cancelled).await?;
            Ok(Outcome::Purchase { purchase_id })
        }
    }
}

/// Closes a live purchase without payment (`Cancelled` or `Expired`),
/// voiding its hold; false when it was not live.
pub(super) async fn close_unpaid(
    conn: &mut SqliteConnection,
    ctx: ApplyContext,
    purchase_id: u64,
    state: PurchaseState,
) -> Result<bool, sqlx::Error> {
    let Some(purchase) = store::purchases::get(&mut *conn, purchase_id).await? else {
        return Ok(false);
    };
    if !purchase.state.is_live() {
        return Ok(false);
    }
    if let Some(hold_id) = purchase.hold_id {
        close_hold(conn, ctx, hold_id, false, state.as_str(), None).await?;
    }
    store::purchases::close(conn, purchase_id, state, 0, ctx.index, ctx.time_ms).await?;
    Ok(true)
}

/// The dispute window of a completed purchase ended: its pending proceeds
/// become available to the seller. False when there was nothing to release.
pub(super) async fn release(
    conn: &mut SqliteConnection,
    purchase_id: u64,
) -> Result<bool, sqlx::Error> {
    let Some(purchase) = store::purchases::get(&mut *conn, purchase_id).await? else {
        return Ok(false);
    };
    if purchase.proceeds != Some(Proceeds::Pending) {
        return Ok(false);
    }
    let net = purchase.net();
    if net > 0 {
        let Some(mut seller) = store::ledger::user_account(&mut *conn, purchase.seller_id).await?
        else {
            return Ok(false);
        };
        if ledger::release_proceeds(&mut seller, net).is_err() {
            // The audit reports held money that does not add up.
            return Ok(false);
        }
        store::ledger::save_accounts(conn, &[&seller]).await?;
    }
    store::purchases::set_proceeds(conn, purchase_id, Proceeds::Released, None).await?;
    Ok(true)
}

/// `ReverseSale`: a proven dispute within the window. The buyer gets the
/// price back (the seller's held proceeds and the operator's commission),
/// and the seller gets a strike.
pub(super) async fn reverse(
    conn: &mut SqliteConnection,
    ctx: ApplyContext,
    dispute: &DisputeRow,
) -> Result<Outcome, sqlx::Error> {
    let purchase_id = dispute.purchase_id;
    let purchase = match load(conn, purchase_id).await? {
        Ok(p) => p,
        Err(outcome) => return Ok(outcome),
    };
    if purchase.buyer_id != dispute.buyer_id {
        return Ok(Outcome::Rejected(Rejection::PermissionDenied(format!(
            "purchase {purchase_id} is not yours; only its buyer disputes it"
        ))));
    }
    match (purchase.state, purchase.proceeds) {
        (PurchaseState::Completed, Some(Proceeds::Pending))
            if ctx.time_ms < purchase.release_at_ms.unwrap_or(0) => {}
        (PurchaseState::Completed, Some(Proceeds::Refunded)) => {
            return Ok(refused(format!(
                "purchase {purchase_id} was already refunded after a dispute"
            )))
        }
        (PurchaseState::Completed, _) => {
            return Ok(refused(format!(
                "the dispute window of purchase {purchase_id} has closed; the seller was paid"
            )))
        }
        _ => {
            return Ok(refused(format!(
                "purchase {purchase_id} is not completed; only a paid purchase can be disputed (cancel it instead)"
            )))
        }
    }
    let net = purchase.net();
    let Some(mut buyer) = store::ledger::user_account(&mut *conn, purchase.buyer_id).await? else {
        return Ok(no_account(purchase.buyer_id));
    };
    let Some(mut seller) = store::ledger::user_account(&mut *conn, purchase.seller_id).await?
    else {
        return Ok(no_account(purchase.seller_id));
    };
    let mut operator = store::ledger::account(&mut *conn, ledger::OPERATOR).await?;
    let entries = match ledger::reverse_sale(
        &mut buyer,
        &mut seller,
        &mut operator,
        net,
        purchase.commission,
    ) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::Rejected(e.into())),
    };
    store::ledger::save_accounts(conn, &[&buyer, &seller, &operator]).await?;
    let reference = purchase_id.to_string();
    // Not linked to the hold: the hold moved its amount once, when posted.
    let entry_ctx = store::ledger::EntryContext {
        hold_id: None,
        purchase_id: Some(&reference),
        log_index: ctx.index,
        time_ms: ctx.time_ms,
    };
    store::ledger::journal(conn, &entries, entry_ctx).await?;
    store::purchases::set_proceeds(conn, purchase_id, Proceeds::Refunded, None).await?;
    store::purchases::insert_dispute(
        conn,
        &DisputeRow {
            seller_id: purchase.seller_id,
            ..dispute.clone()
        },
        ctx.index,
        ctx.time_ms,
    )
    .await?;
    store::purchases::count_for_seller(conn, purchase.seller_id, true).await?;
    Ok(Outcome::Purchase { purchase_id })
}

//! The ledger's rules, as plain Rust on in-memory values: double-entry
//! transfers in integer cents, holds (pending transfers) posted or voided
//! exactly once, and the commission. TigerBeetle's two-phase transfers are
//! the model. The state machine loads the accounts and holds a command
//! touches, runs these functions, and stores the result, so the rules live
//! here once.
//!
//! Balances are signed (`i64`): the external account goes negative as money
//! comes in, so all balances always sum to zero. User balances never go
//! negative, and `available = balance - held` never drops below zero.

use agora_proto::amount::{format_amount, format_signed, MAX_AMOUNT};
use serde::{Deserialize, Serialize};

/// A ledger account id.
pub type AccountId = i64;
/// The account that balances money coming in and going out.
pub const EXTERNAL: AccountId = 1;
/// The operator's commission revenue.
pub const OPERATOR: AccountId = 2;
/// The largest commission, in basis points (100%).
pub const MAX_BPS: u32 = 10_000;
/// The commission until an admin sets one (1%).
pub const DEFAULT_BPS: u32 = 100;

/// An account's money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// Its id.
    pub id: AccountId,
    /// Balance in cents (negative only for the external account).
    pub balance: i64,
    /// Cents reserved by open holds.
    pub held: u64,
}

impl Account {
    /// `balance - held`, at least 0 for a user account.
    #[must_use]
    pub fn available(&self) -> i64 {
        self.balance
            .saturating_sub(i64::try_from(self.held).unwrap_or(i64::MAX))
    }
}

/// What kind of movement a journal entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// Money in from outside.
    Deposit,
    /// Money out to outside.
    Withdrawal,
    /// A posted hold: buyer to seller.
    Sale,
    /// A posted hold: buyer to operator.
    Commission,
    /// A sale reversed by a dispute: seller and operator pay the buyer back.
    Refund,
}

impl EntryKind {
    /// The name stored and shown.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Deposit => "deposit",
            EntryKind::Withdrawal => "withdrawal",
            EntryKind::Sale => "sale",
            EntryKind::Commission => "commission",
            EntryKind::Refund => "refund",
        }
    }
}

/// One movement: `amount` leaves `debit` and reaches `credit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Paying account.
    pub debit: AccountId,
    /// Receiving account.
    pub credit: AccountId,
    /// Cents, more than 0.
    pub amount: u64,
    /// Kind.
    pub kind: EntryKind,
}

/// Where a hold is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    /// Money reserved.
    Open,
    /// Money moved.
    Posted,
    /// Money released.
    Voided,
}

impl HoldState {
    /// The name stored and shown.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Open => "open",
            HoldState::Posted => "posted",
            HoldState::Voided => "voided",
        }
    }

    /// Parses a stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(HoldState::Open),
            "posted" => Some(HoldState::Posted),
            "voided" => Some(HoldState::Voided),
            _ => None,
        }
    }
}

/// A pending transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Its id.
    pub id: i64,
    /// Whose money is reserved.
    pub account: AccountId,
    /// Who gets it when posted.
    pub payee: AccountId,
    /// Cents.
    pub amount: u64,
    /// Where it is in its life.
    pub state: HoldState,
    /// When the timer voids it (leader's clock, Unix ms).
    pub expires_at_ms: u64,
}

/// Why the ledger refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Zero or above the maximum.
    #[error("the amount must be between 0.01 and 100000000000.00")]
    BadAmount,
    /// Not enough available money.
    #[error("not enough money: {} available, {} needed", format_signed(*available), format_amount(*wanted))]
    Insufficient {
        /// Available cents.
        available: i64,
        /// Cents asked for.
        wanted: u64,
    },
    /// The hold was posted or voided before.
    #[error("hold {id} is already {state}; a hold is posted or voided only once")]
    HoldClosed {
        /// The hold.
        id: i64,
        /// Its state.
        state: &'static str,
    },
    /// An arithmetic bound was hit.
    #[error("the amount would overflow an account")]
    Overflow,
    /// A commission outside 0..=10000 basis points.
    #[error("the commission must be 0 to 10000 basis points; {0} is not")]
    BadCommission(u32),
    /// An account paying itself.
    #[error("an account cannot pay itself")]
    SameAccount,
}

fn check_amount(amount: u64) -> Result<i64, LedgerError> {
    if amount == 0 || amount > MAX_AMOUNT {
        return Err(LedgerError::BadAmount);
    }
    i64::try_from(amount).map_err(|_| LedgerError::Overflow)
}

/// Moves `amount` from `from` to `to`: both balances change or neither.
///
/// # Errors
/// [`LedgerError::Overflow`] if a balance would leave `i64`.
fn transfer(
    from: &mut Account,
    to: &mut Account,
    amount: u64,
    kind: EntryKind,
) -> Result<Entry, LedgerError> {
    let signed = check_amount(amount)?;
    let new_from = from
        .balance
        .checked_sub(signed)
        .ok_or(LedgerError::Overflow)?;
    let new_to = to
        .balance
        .checked_add(signed)
        .ok_or(LedgerError::Overflow)?;
    from.balance = new_from;
    to.balance = new_to;
    Ok(Entry {
        debit: from.id,
        credit: to.id,
        amount,
        kind,
    })
}

/// Money in: `external` pays `user`.
///
/// # Errors
/// A bad amount or an overflow.
pub fn deposit(
    user: &mut Account,
    external: &mut Account,
    amount: u64,
) -> Result<Entry, LedgerError> {
    transfer(external, user, amount, EntryKind::Deposit)
}

/// Money out: `user` pays `external`, only from available money.
///
/// # Errors
/// A bad amount, [`LedgerError::Insufficient`], or an overflow.
pub fn withdraw(
    user: &mut Account,
    external: &mut Account,
    amount: u64,
) -> Result<Entry, LedgerError> {
    let signed = check_amount(amount)?;
    if user.available() < signed {
        return Err(LedgerError::Insufficient {
            available: user.available(),
            wanted: amount,
        });
    }
    transfer(user, external, amount, EntryKind::Withdrawal)
}

/// Reserves `amount` of `account`'s available money.
///
/// # Errors
/// A bad amount or [`LedgerError::Insufficient`].
pub fn open_hold(account: &mut Account, amount: u64) -> Result<(), LedgerError> {
    let signed = check_amount(amount)?;
    if account.available() < signed {
        return Err(LedgerError::Insufficient {
            available: account.available(),
            wanted: amount,
        });
    }
    account.held = account
        .held
        .checked_add(amount)
        .ok_or(LedgerError::Overflow)?;
    Ok(())
}

/// The operator's cut of `price`: `price * bps / 10_000`, rounded down.
///
/// # Errors
/// [`LedgerError::BadCommission`] above 100%.
pub fn commission(price: u64, bps: u32) -> Result<u64, LedgerError> {
    if bps > MAX_BPS {
        return Err(LedgerError::BadCommission(bps));
    }
    // u128: price * bps cannot overflow.
    let cut = u128::from(price) * u128::from(bps) / u128::from(MAX_BPS);
    u64::try_from(cut).map_err(|_| LedgerError::Overflow)
}

fn release(hold: &Hold, account: &mut Account) -> Result<(), LedgerError> {
    match hold.state {
        HoldState::Open => {}
        closed => {
            return Err(LedgerError::HoldClosed {
                id: hold.id,
                state: closed.as_str(),
            })
        }
    }
    account.held = account
        .held
        .checked_sub(hold.amount)
        .ok_or(LedgerError::Overflow)?;
    Ok(())
}

/// Settles an open hold: the holder pays the payee the amount less the
/// commission, and the operator the commission. Returns the entries (the
/// sale, and the commission when it is not zero).
///
/// # Errors
/// [`LedgerError::HoldClosed`] if it was posted or voided before; nothing
/// changes then.
pub fn post_hold(
    hold: &mut Hold,
    buyer: &mut Account,
    seller: &mut Account,
    operator: &mut Account,
    bps: u32,
) -> Result<Vec<Entry>, LedgerError> {
    if buyer.id == seller.id {
        return Err(LedgerError::SameAccount);
    }
    let cut = commission(hold.amount, bps)?;
    let net = hold.amount - cut;
    // Work on copies so a refusal half-way changes nothing.
    let (mut b, mut s, mut o) = (*buyer, *seller, *operator);
    release(hold, &mut b)?;
    let mut entries = Vec::with_capacity(2);
    if net > 0 {
        entries.push(transfer(&mut b, &mut s, net, EntryKind::Sale)?);
    }
    if cut > 0 {
        entries.push(transfer(&mut b, &mut o, cut, EntryKind::Commission)?);
    }
    (*buyer, *seller, *operator) = (b, s, o);
    hold.state = HoldState::Posted;
    Ok(entries)
}

/// Keeps a sale's proceeds (`net`, already on the seller's balance) held
/// on the seller's account for the dispute window: they count in the
/// balance but are not available.
///
/// # Errors
/// [`LedgerError::Overflow`].
pub fn hold_proceeds(seller: &mut Account, net: u64) -> Result<(), LedgerError> {
    seller.held = seller.held.checked_add(net).ok_or(LedgerError::Overflow)?;
    Ok(())
}

/// The dispute window ended: the proceeds become available.
///
/// # Errors
/// [`LedgerError::Overflow`] if less than `net` is held.
pub fn release_proceeds(seller: &mut Account, net: u64) -> Result<(), LedgerError> {
    seller.held = seller.held.checked_sub(net).ok_or(LedgerError::Overflow)?;
    Ok(())
}

/// Reverses a sale whose proceeds are still held: the seller pays back
/// `net` (from the held proceeds), the operator its `commission`, and the
/// buyer gets the whole price back. Returns the entries.
///
/// # Errors
/// [`LedgerError::Overflow`] if less than `net` is held or a balance would
/// leave its range; nothing changes then.
pub fn reverse_sale(
    buyer: &mut Account,
    seller: &mut Account,
    operator: &mut Account,
    net: u64,
    commission: u64,
) -> Result<Vec<Entry>, LedgerError> {
    let (mut b, mut s, mut o) = (*buyer, *seller, *operator);
    release_proceeds(&mut s, net)?;
    let mut entries = Vec::with_capacity(2);
    if net > 0 {
        entries.push(transfer(&mut s, &mut b, net, EntryKind::Refund)?);
    }
    if commission > 0 {
        entries.push(transfer(&mut o, &mut b, commission, EntryKind::Refund)?);
    }
    (*buyer, *seller, *operator) = (b, s, o);
    Ok(entries)
}

/// Releases an open hold; no money moves.
///
/// # Errors
/// [`LedgerError::HoldClosed`] if it was posted or voided before.
pub fn void_hold(hold: &mut Hold, account: &mut Account) -> Result<(), LedgerError> {
    release(hold, account)?;
    hold.state = HoldState::Voided;
    Ok(())
}

/// Longest a hold may last before it lapses (30 days): a hold is a
/// pending transfer, not a way to freeze someone's money for ever, and a
/// bound keeps its expiry time far from overflowing.
pub const MAX_HOLD_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// How long a hold asked to last `asked_ms` lasts: `default_ms` for 0.
///
/// # Errors
/// A sentence when `asked_ms` is above [`MAX_HOLD_TTL_MS`].
pub fn hold_ttl_ms(asked_ms: u64, default_ms: u64) -> Result<u64, String> {
    match asked_ms {
        0 => Ok(default_ms),
        ms if ms > MAX_HOLD_TTL_MS => Err(format!(
            "ttl_ms is at most {MAX_HOLD_TTL_MS} (30 days); 0 means the default"
        )),
        ms => Ok(ms),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_hold_lasts_the_default_or_at_most_thirty_days() {
        assert_eq!(hold_ttl_ms(0, 900_000), Ok(900_000));
        assert_eq!(hold_ttl_ms(1, 900_000), Ok(1));
        assert_eq!(hold_ttl_ms(MAX_HOLD_TTL_MS, 0), Ok(MAX_HOLD_TTL_MS));
        for too_long in [MAX_HOLD_TTL_MS + 1, u64::MAX] {
            let refusal = hold_ttl_ms(too_long, 0).err().unwrap_or_default();
            assert!(refusal.contains("ttl_ms is at most"), "{refusal}");
        }
    }

    fn account(id: AccountId) -> Account {
        Account {
            id,
            balance: 0,
            held: 0,
        }
    }

    #[test]
    fn a_reversed_sale_gives_the_whole_price_back_and_conserves_money() {
        let (mut buyer, mut seller, mut operator) = (account(10), account(11), account(OPERATOR));
        buyer.balance = 1_000;
        open_hold(&mut buyer, 500).expect("hold");
        let mut hold = Hold {
            id: 1,
            account: buyer.id,
            payee: seller.id,
            amount: 500,
            state: HoldState::Open,
            expires_at_ms: 0,
        };
        post_hold(&mut hold, &mut buyer, &mut seller, &mut operator, 100).expect("post");
        let net = seller.balance.unsigned_abs();
        hold_proceeds(&mut seller, net).expect("pending");
        assert_eq!(seller.available(), 0, "pending proceeds are not available");
        let before = buyer.balance + seller.balance + operator.balance;
        let entries =
            reverse_sale(&mut buyer, &mut seller, &mut operator, net, 5).expect("reverse");
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e.kind == EntryKind::Refund));
        assert_eq!(buyer.balance, 1_000);
        assert_eq!((seller.balance, seller.held), (0, 0));
        assert_eq!(operator.balance, 0);
        assert_eq!(buyer.balance + seller.balance + operator.balance, before);
        // Nothing is left to reverse twice.
        assert!(reverse_sale(&mut buyer, &mut seller, &mut operator, net, 5).is_err());
        assert_eq!(buyer.balance, 1_000);
    }

    #[test]
    fn released_proceeds_become_available() {
        let mut seller = account(11);
        seller.balance = 495;
        hold_proceeds(&mut seller, 495).expect("pending");
        assert_eq!(seller.available(), 0);
        release_proceeds(&mut seller, 495).expect("release");
        assert_eq!(seller.available(), 495);
        assert!(release_proceeds(&mut seller, 1).is_err());
    }

    #[test]
    fn commission_rounds_down() {
        assert_eq!(commission(1, 100), Ok(0));
        assert_eq!(commission(99, 100), Ok(0));
        assert_eq!(commission(100, 100), Ok(1));
        assert_eq!(commission(12_345, 100), Ok(123));
        assert_eq!(commission(12_345, 10_000), Ok(12_345));
        assert_eq!(commission(MAX_AMOUNT, 10_000), Ok(MAX_AMOUNT));
        assert_eq!(
            commission(1, 10_001),
            Err(LedgerError::BadCommission(10_001))
        );
    }

    #[test]
    fn post_moves_price_net_and_commission() {
        let (mut buyer, mut seller, mut operator, mut external) = (
            account(10),
            account(11),
            account(OPERATOR),
            account(EXTERNAL),
        );
        deposit(&mut buyer, &mut external, 20_000).expect("deposit");
        open_hold(&mut buyer, 12_345).expect("hold");
        let mut hold = Hold {
            id: 1,
            account: 10,
            payee: 11,
            amount: 12_345,
            state: HoldState::Open,
            expires_at_ms: 0,
        };
        let entries =
            post_hold(&mut hold, &mut buyer, &mut seller, &mut operator, 100).expect("post");
        assert_eq!(entries.len(), 2);
        assert_eq!((buyer.balance, buyer.held), (20_000 - 12_345, 0));
        assert_eq!(seller.balance, 12_345 - 123);
        assert_eq!(operator.balance, 123);
        assert_eq!(
            buyer.balance + seller.balance + operator.balance + external.balance,
            0
        );
        // A second post or a void afterwards changes nothing.
        let before = (buyer, seller, operator);
        assert!(matches!(
            post_hold(&mut hold, &mut buyer, &mut seller, &mut operator, 100),
            Err(LedgerError::HoldClosed { .. })
        ));
        assert!(matches!(
            void_hold(&mut hold, &mut buyer),
            Err(LedgerError::HoldClosed { .. })
        ));
        assert_eq!((buyer, seller, operator), before);
    }

    #[test]
    fn refusals_change_nothing() {
        let (mut user, mut external) = (account(10), account(EXTERNAL));
        assert_eq!(
            deposit(&mut user, &mut external, 0),
            Err(LedgerError::BadAmount)
        );
        assert_eq!(
            deposit(&mut user, &mut external, MAX_AMOUNT + 1),
            Err(LedgerError::BadAmount)
        );
        deposit(&mut user, &mut external, 500).expect("deposit");
        open_hold(&mut user, 300).expect("hold");
        assert!(matches!(
            withdraw(&mut user, &mut external, 201),
            Err(LedgerError::Insufficient { .. })
        ));
        assert_eq!((user.balance, user.held), (500, 300));
        withdraw(&mut user, &mut external, 200).expect("withdraw what is available");
        assert_eq!(user.available(), 0);
    }

    /// One step of a random ledger history.
    #[derive(Debug, Clone)]
    enum Step {
        Deposit(usize, u64),
        Withdraw(usize, u64),
        Hold(usize, usize, u64),
        Post(usize),
        Void(usize),
        Expire(u64),
        Commission(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..4usize, 0..5_000u64).prop_map(|(u, a)| Step::Deposit(u, a)),
            (0..4usize, 0..5_000u64).prop_map(|(u, a)| Step::Withdraw(u, a)),
            (0..4usize, 0..4usize, 0..3_000u64).prop_map(|(u, p, a)| Step::Hold(u, p, a)),
            (0..40usize).prop_map(Step::Post),
            (0..40usize).prop_map(Step::Void),
            (0..100u64).prop_map(Step::Expire),
            (0..=10_000u32).prop_map(Step::Commission),
        ]
    }

    proptest! {
        /// Whatever happens, the balances sum to zero, nothing available is
        /// negative, held money equals the open holds, and a closed hold
        /// cannot be closed again.
        #[test]
        fn money_is_conserved(steps in proptest::collection::vec(step(), 1..200)) {
            let mut accounts: HashMap<AccountId, Account> = HashMap::new();
            for id in [EXTERNAL, OPERATOR, 10, 11, 12, 13] {
                accounts.insert(id, account(id));
            }
            let users = [10, 11, 12, 13];
            let mut holds: Vec<Hold> = Vec::new();
            let mut bps = DEFAULT_BPS;
            let mut clock = 0u64;
            for step in steps {
                clock += 1;
                match step {
                    Step::Deposit(u, a) => {
                        let mut user = accounts[&users[u]];
                        let mut ext = accounts[&EXTERNAL];
                        if deposit(&mut user, &mut ext, a).is_ok() {
                            accounts.insert(user.id, user);
                            accounts.insert(EXTERNAL, ext);
                        } else {
                            prop_assert_eq!(a, 0);
                        }
                    }
                    Step::Withdraw(u, a) => {
                        let mut user = accounts[&users[u]];
                        let mut ext = accounts[&EXTERNAL];
                        let allowed = a > 0 && user.available() >= i64::try_from(a).unwrap_or(i64::MAX);
                        let result = withdraw(&mut user, &mut ext, a);
                        prop_assert_eq!(result.is_ok(), allowed);
                        if result.is_ok() {
                            accounts.insert(user.id, user);
                            accounts.insert(EXTERNAL, ext);
                        }
                    }
                    Step::Hold(u, p, a) => {
                        if u == p { continue; }
                        let mut user = accounts[&users[u]];
                        if open_hold(&mut user, a).is_ok() {
                            accounts.insert(user.id, user);
                            holds.push(Hold { id: i64::try_from(holds.len()).unwrap_or(0), account: users[u], payee: users[p], amount: a, state: HoldState::Open, expires_at_ms: clock + 20 });
                        }
                    }
                    Step::Post(i) => {
                        if let Some(hold) = holds.get_mut(i) {
                            let was_open = hold.state == HoldState::Open;
                            let (mut b, mut s, mut o) = (accounts[&hold.account], accounts[&hold.payee], accounts[&OPERATOR]);
                            let result = post_hold(hold, &mut b, &mut s, &mut o, bps);
                            prop_assert_eq!(result.is_ok(), was_open);
                            if result.is_ok() {
                                accounts.insert(b.id, b);
                                accounts.insert(s.id, s);
                                accounts.insert(o.id, o);
                            }
                        }
                    }
                    Step::Void(i) => {
                        if let Some(hold) = holds.get_mut(i) {
                            let was_open = hold.state == HoldState::Open;
                            let mut a = accounts[&hold.account];
                            prop_assert_eq!(void_hold(hold, &mut a).is_ok(), was_open);
                            accounts.insert(a.id, a);
                        }
                    }
                    Step::Expire(now) => {
                        for hold in holds.iter_mut().filter(|h| h.state == HoldState::Open && h.expires_at_ms <= now) {
                            let mut a = accounts[&hold.account];
                            prop_assert!(void_hold(hold, &mut a).is_ok());
                            accounts.insert(a.id, a);
                        }
                    }
                    Step::Commission(b) => bps = b,
                }
                let sum: i64 = accounts.values().map(|a| a.balance).sum();
                prop_assert_eq!(sum, 0);
                for id in users {
                    let a = accounts[&id];
                    prop_assert!(a.available() >= 0, "{a:?}");
                    let open: u64 = holds.iter().filter(|h| h.account == id && h.state == HoldState::Open).map(|h| h.amount).sum();
                    prop_assert_eq!(a.held, open);
                }
            }
        }
    }
}

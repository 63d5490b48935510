-- The ledger: double-entry bookkeeping in integer cents.
-- Invariant: the balances of all accounts sum to zero, and every balance
-- equals the credits minus the debits of its journal entries.

CREATE TABLE ledger_accounts (
    id      INTEGER PRIMARY KEY,
    kind    TEXT NOT NULL CHECK (kind IN ('external', 'operator', 'user')),
    user_id INTEGER UNIQUE,
    balance INTEGER NOT NULL DEFAULT 0,
    held    INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0)
);

-- The two system accounts: money from / to the outside world, and the
-- operator's commission revenue.
INSERT INTO ledger_accounts (id, kind) VALUES (1, 'external'), (2, 'operator');

-- Accounts of users that existed before the ledger.
INSERT INTO ledger_accounts (kind, user_id) SELECT 'user', id FROM users ORDER BY id;

-- One row per movement: `amount` leaves `debit` and reaches `credit`.
CREATE TABLE journal (
    id          INTEGER PRIMARY KEY,
    debit       INTEGER NOT NULL REFERENCES ledger_accounts (id),
    credit      INTEGER NOT NULL REFERENCES ledger_accounts (id),
    amount      INTEGER NOT NULL CHECK (amount > 0),
    kind        TEXT NOT NULL,
    hold_id     INTEGER,
    purchase_id TEXT,
    log_index   INTEGER NOT NULL,
    time_ms     INTEGER NOT NULL
);
CREATE INDEX journal_by_debit ON journal (debit, id);
CREATE INDEX journal_by_credit ON journal (credit, id);
CREATE INDEX journal_by_hold ON journal (hold_id) WHERE hold_id IS NOT NULL;

-- Pending transfers: money reserved on `account` for `payee`; posted
-- (money moves) or voided (released), exactly once.
CREATE TABLE holds (
    id            INTEGER PRIMARY KEY,
    account       INTEGER NOT NULL REFERENCES ledger_accounts (id),
    payee         INTEGER NOT NULL REFERENCES ledger_accounts (id),
    amount        INTEGER NOT NULL CHECK (amount > 0),
    state         TEXT NOT NULL CHECK (state IN ('open', 'posted', 'voided')),
    expires_at_ms INTEGER NOT NULL,
    purchase_id   TEXT,
    opened_index  INTEGER NOT NULL,
    closed_index  INTEGER,
    closed_reason TEXT
);
CREATE INDEX holds_open_by_expiry ON holds (expires_at_ms) WHERE state = 'open';

-- The admin console: the cluster's event log, deleted accounts, and the
-- Argon2id parameters each account registered with.

-- Things that happened to the cluster, recorded as replicated commands by
-- the node that saw them. `id` is a plain rowid: only the oldest rows are
-- ever pruned, so the next id is always the newest + 1 on every node (also
-- after a snapshot install, which does not copy sqlite_sequence).
CREATE TABLE events (
    id              INTEGER PRIMARY KEY,
    time_ms         INTEGER NOT NULL,
    node_id         INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    subject_node_id INTEGER NOT NULL DEFAULT 0,
    term            INTEGER NOT NULL DEFAULT 0,
    message         TEXT NOT NULL,
    log_index       INTEGER NOT NULL
);

-- A deleted account keeps its row (listings, purchases and the ledger
-- refer to it) under a tombstone name that no canonical name can equal;
-- its password file is gone, so it cannot log in, and its sessions are
-- refused.
ALTER TABLE users ADD COLUMN deleted_ms INTEGER;

-- The Argon2id parameters (JSON) the account registered with: logins hand
-- them out, so changing the cluster's parameters affects new registrations
-- only. Accounts from before this column get the parameters in force now.
ALTER TABLE users ADD COLUMN ksf TEXT;
UPDATE users SET ksf = (SELECT value FROM settings WHERE key = 'ksf');

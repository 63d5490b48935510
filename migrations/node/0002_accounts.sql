-- Accounts and sessions.

-- Secrets made once, when the cluster is bootstrapped, by the first leader,
-- and replicated: the OPAQUE ServerSetup and the seed of the ed25519 key
-- that signs session tokens. At most one row.
CREATE TABLE cluster_secrets (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    server_setup BLOB NOT NULL,
    token_seed   BLOB NOT NULL
);

-- Replicated cluster settings (JSON values), e.g. the Argon2id parameters.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per account. `username` is the canonical (lower-case) name.
CREATE TABLE users (
    id                     INTEGER PRIMARY KEY,
    username               TEXT NOT NULL UNIQUE,
    role                   TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    password_file          BLOB NOT NULL,
    identity_public_key    BLOB NOT NULL,
    encrypted_identity_key BLOB NOT NULL,
    created_ms             INTEGER NOT NULL,
    suspended              INTEGER NOT NULL DEFAULT 0
);

-- Sessions ended before their expiry (logout, revocation). Rows past their
-- expiry can be dropped: an expired token is refused anyway.
CREATE TABLE revoked_sessions (
    session_id    TEXT PRIMARY KEY,
    user_id       INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    revoked_ms    INTEGER NOT NULL
) WITHOUT ROWID;

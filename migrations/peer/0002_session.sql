-- Who this peer is signed in as.
--
-- A data directory holds one account at a time: logging in as someone else
-- replaces both rows, logging out deletes both. Everything here is secret
-- (a bearer token and a private key), which is why the database file is
-- created readable by its owner only.

-- The account's ed25519 identity key pair, as recovered at login from the
-- copy the cluster keeps sealed under OPAQUE's export_key. Peers use it to
-- authenticate to each other.
CREATE TABLE identity (
    user_id     INTEGER PRIMARY KEY,
    username    TEXT    NOT NULL,
    public_key  BLOB    NOT NULL CHECK (length(public_key) = 32),
    secret_key  BLOB    NOT NULL CHECK (length(secret_key) = 32)
);

-- The session the cluster issued at login. `slot` is always 1, so there is
-- never more than one.
CREATE TABLE session (
    slot            INTEGER PRIMARY KEY CHECK (slot = 1),
    -- Bearer token signed by the cluster key; sent as `authorization`.
    token           TEXT    NOT NULL,
    user_id         INTEGER NOT NULL REFERENCES identity (user_id) ON DELETE CASCADE,
    -- Canonical (lower-case) account name.
    username        TEXT    NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('user', 'admin')),
    -- When the cluster stops accepting the token (Unix ms).
    expires_at_ms   INTEGER NOT NULL,
    -- When this peer logged in (Unix ms, the peer's clock).
    logged_in_at_ms INTEGER NOT NULL
);

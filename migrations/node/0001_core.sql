-- The replicated state of one node. Every table here is written only by the
-- state machine, while applying committed log entries, and is copied whole
-- into snapshots.

-- Raft bookkeeping that must change atomically with the data: the last
-- applied log id and the membership (bincode values).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- The replicated key/value register used to exercise the core.
CREATE TABLE kv (
    key       TEXT PRIMARY KEY,
    value     BLOB NOT NULL,
    revision  INTEGER NOT NULL,
    log_index INTEGER NOT NULL
) WITHOUT ROWID;

-- Exactly-once: the outcome of every client request, by (client, request id).
CREATE TABLE requests (
    client     TEXT NOT NULL,
    request_id TEXT NOT NULL,
    body_hash  BLOB NOT NULL,
    outcome    BLOB NOT NULL,
    log_index  INTEGER NOT NULL,
    time_ms    INTEGER NOT NULL,
    PRIMARY KEY (client, request_id)
) WITHOUT ROWID;

CREATE INDEX requests_by_time ON requests (time_ms);

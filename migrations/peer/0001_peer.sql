-- A peer's local state.

-- Small settings and facts the peer remembers between runs (for example the
-- highest log index it has seen, for read-your-writes across processes).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

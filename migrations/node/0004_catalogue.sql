-- The catalogue: topics, listings and their full-text index, and sellers'
-- presence.

-- Topics a listing may be filed under; kept by admins.
CREATE TABLE topics (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_ms  INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO topics (name, description, created_ms)
VALUES ('general', 'Anything that fits no other topic', 0);

-- A file for sale. Never a local path: only what a buyer needs to find it
-- and to check what it receives (size, chunking, plaintext Merkle root).
-- `tags` is a JSON array of strings, `attributes` a JSON object of strings.
CREATE TABLE listings (
    id            INTEGER PRIMARY KEY,
    seller_id     INTEGER NOT NULL REFERENCES users (id),
    title         TEXT NOT NULL,
    description   TEXT NOT NULL,
    topic         TEXT NOT NULL REFERENCES topics (name),
    tags          TEXT NOT NULL DEFAULT '[]',
    attributes    TEXT NOT NULL DEFAULT '{}',
    size          INTEGER NOT NULL CHECK (size > 0),
    chunk_size    INTEGER NOT NULL CHECK (chunk_size > 0),
    merkle_root   BLOB NOT NULL CHECK (length(merkle_root) = 32),
    price         INTEGER NOT NULL CHECK (price >= 0),
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    updated_index INTEGER NOT NULL,
    active        INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX listings_by_seller ON listings (seller_id, id);
CREATE INDEX listings_active_by_price ON listings (price, id) WHERE active;
CREATE INDEX listings_active_by_topic ON listings (topic, id) WHERE active;

-- Full-text index over the active listings: title, description, tags and
-- attribute values. Contentless (the text lives in `listings`), kept in
-- step by the triggers below, so every node, a snapshot install included,
-- indexes exactly what its `listings` table holds. bm25 weights: a title
-- match counts most, then tags, attribute values, description.
CREATE VIRTUAL TABLE listings_fts USING fts5 (
    title, description, tags, attrs,
    content = '', contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO listings_fts (listings_fts, rank) VALUES ('rank', 'bm25(10.0, 1.0, 4.0, 2.0)');

CREATE TRIGGER listings_fts_insert AFTER INSERT ON listings WHEN new.active
BEGIN
    INSERT INTO listings_fts (rowid, title, description, tags, attrs)
    VALUES (new.id, new.title, new.description,
            (SELECT group_concat(value, ' ') FROM json_each(new.tags)),
            (SELECT group_concat(value, ' ') FROM json_each(new.attributes)));
END;

CREATE TRIGGER listings_fts_delete AFTER DELETE ON listings WHEN old.active
BEGIN
    DELETE FROM listings_fts WHERE rowid = old.id;
END;

CREATE TRIGGER listings_fts_update
AFTER UPDATE OF title, description, tags, attributes, active ON listings
BEGIN
    DELETE FROM listings_fts WHERE rowid = old.id AND old.active;
    INSERT INTO listings_fts (rowid, title, description, tags, attrs)
    SELECT new.id, new.title, new.description,
           (SELECT group_concat(value, ' ') FROM json_each(new.tags)),
           (SELECT group_concat(value, ' ') FROM json_each(new.attributes))
    WHERE new.active;
END;

-- Where a selling peer serves files. A row is written only when a seller
-- comes online, changes endpoint, goes offline or lets its lease lapse
-- (the leader keeps the renewals in memory), so presence costs no Raft
-- write per heartbeat.
CREATE TABLE presence (
    user_id       INTEGER PRIMARY KEY REFERENCES users (id),
    endpoint      TEXT NOT NULL,
    online        INTEGER NOT NULL,
    changed_ms    INTEGER NOT NULL,
    changed_index INTEGER NOT NULL
);
CREATE INDEX presence_online ON presence (user_id) WHERE online;

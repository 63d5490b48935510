-- The files this peer sells: which local file each of its listings is.
--
-- The cluster knows a listing only by its id and metadata, never by a local
-- path, so this is the only place that ties a listing to the bytes a buyer
-- will fetch. Rows are written when a publish succeeds; the size, chunk
-- size and Merkle root are those the cluster accepted, and the file's
-- modification time lets `agora serve` notice a file that changed since
-- (its chunks would no longer match the listing's root).
CREATE TABLE listings (
    -- The cluster's listing id.
    listing_id      INTEGER PRIMARY KEY,
    -- The seller's user id: one data directory may be logged in as another
    -- account later, and must then not serve the first account's files.
    seller_id       INTEGER NOT NULL,
    -- Absolute path of the file (raw bytes: a path need not be UTF-8).
    path            BLOB    NOT NULL,
    -- File size in bytes, as published.
    size            INTEGER NOT NULL CHECK (size > 0),
    -- Chunk size in bytes, as published.
    chunk_size      INTEGER NOT NULL CHECK (chunk_size > 0),
    -- BLAKE3 Merkle root over the plaintext chunks, as published.
    merkle_root     BLOB    NOT NULL CHECK (length(merkle_root) = 32),
    -- The file's modification time when it was hashed (Unix ms), if the
    -- file system reports one.
    modified_ms     INTEGER,
    -- When this peer published it (Unix ms, the peer's clock).
    published_at_ms INTEGER NOT NULL,
    -- 0 once this peer unpublished it; the row stays, so `agora listings
    -- --all` still shows which file an old listing was.
    active          INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1))
);

CREATE INDEX listings_by_seller ON listings (seller_id, listing_id);

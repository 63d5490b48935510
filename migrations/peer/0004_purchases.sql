-- Buying and selling: what this peer downloads, and the keys it made for
-- the purchases of its files.

-- A purchase this peer made (as buyer) and how far its download got. The
-- ciphertext itself lives beside the database (downloads/<purchase>.part,
-- with the leaf hashes of the chunks received in <purchase>.leaves), so a
-- broken transfer resumes from the next missing chunk.
CREATE TABLE downloads (
    purchase_id      INTEGER PRIMARY KEY,
    -- The buyer's user id: the data directory may change accounts later.
    buyer_id         INTEGER NOT NULL,
    listing_id       INTEGER NOT NULL,
    title            TEXT    NOT NULL,
    price            INTEGER NOT NULL,
    size             INTEGER NOT NULL CHECK (size > 0),
    chunk_size       INTEGER NOT NULL CHECK (chunk_size > 0),
    merkle_root      BLOB    NOT NULL CHECK (length(merkle_root) = 32),
    -- The ticket the cluster signed, shown to the seller on every fetch.
    ticket           BLOB    NOT NULL,
    seller           TEXT    NOT NULL,
    seller_endpoint  TEXT    NOT NULL,
    seller_key       BLOB    NOT NULL CHECK (length(seller_key) = 32),
    expires_at_ms    INTEGER NOT NULL,
    -- Where the file goes (raw bytes: a path need not be UTF-8).
    out_path         BLOB    NOT NULL,
    -- fetching: receiving ciphertext; paid: completed, key in hand, file
    -- not written yet; done: the file is in place; cancelled; expired.
    state            TEXT    NOT NULL
        CHECK (state IN ('fetching', 'paid', 'done', 'cancelled', 'expired')),
    -- The ciphertext root the seller sealed, once the last chunk arrived.
    ciphertext_root  BLOB,
    -- The request id of CompletePurchase, made once, so a retry from a new
    -- process after a crash is the same request and gets the same key.
    complete_request TEXT    NOT NULL,
    -- The released key, between completion and the file being written.
    escrow_key       BLOB,
    started_ms       INTEGER NOT NULL,
    finished_ms      INTEGER
);
CREATE INDEX downloads_by_listing ON downloads (buyer_id, listing_id);

-- A key this peer (as seller) made for a purchase of one of its files:
-- kept so a resumed fetch sends the very same ciphertext.
CREATE TABLE sale_keys (
    purchase_id      INTEGER PRIMARY KEY,
    seller_id        INTEGER NOT NULL,
    listing_id       INTEGER NOT NULL,
    buyer_id         INTEGER NOT NULL,
    escrow_key       BLOB    NOT NULL CHECK (length(escrow_key) = 32),
    -- Set once the key is deposited with the cluster.
    ciphertext_root  BLOB,
    -- The request id of DepositKey, made once.
    deposit_request  TEXT    NOT NULL,
    created_ms       INTEGER NOT NULL
);

-- The plaintext leaf hashes of a listing's file, as this peer (the seller)
-- last computed them from the file: sent to every buyer in the manifest.
-- Recomputed (and the file re-checked against the listing's root) when the
-- file's modification time changes.
CREATE TABLE listing_leaves (
    listing_id  INTEGER PRIMARY KEY,
    modified_ms INTEGER,
    leaves      BLOB    NOT NULL
);

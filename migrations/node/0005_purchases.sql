-- Purchases: a buyer's money held for a listing, the seller's escrowed key,
-- and the settlement that moves the money and releases the key at once.
--
-- The listing's file facts are copied when the purchase opens, so what the
-- buyer paid for stays fixed whatever happens to the listing later.
CREATE TABLE purchases (
    id              INTEGER PRIMARY KEY,
    listing_id      INTEGER NOT NULL REFERENCES listings (id),
    buyer_id        INTEGER NOT NULL REFERENCES users (id),
    seller_id       INTEGER NOT NULL REFERENCES users (id),
    -- The buyer's ed25519 identity key when the purchase opened (bound in
    -- the ticket).
    buyer_key       BLOB NOT NULL CHECK (length(buyer_key) = 32),
    title           TEXT NOT NULL,
    price           INTEGER NOT NULL CHECK (price >= 0),
    size            INTEGER NOT NULL CHECK (size > 0),
    chunk_size      INTEGER NOT NULL CHECK (chunk_size > 0),
    merkle_root     BLOB NOT NULL CHECK (length(merkle_root) = 32),
    -- The hold on the buyer's money; NULL for a free listing.
    hold_id         INTEGER REFERENCES holds (id),
    state           TEXT NOT NULL
        CHECK (state IN ('open', 'keyed', 'completed', 'cancelled', 'expired')),
    -- The seller's AES-256-GCM key and its ciphertext Merkle root, once
    -- deposited. The key leaves the cluster only to the buyer, on completion.
    escrow_key      BLOB CHECK (escrow_key IS NULL OR length(escrow_key) = 32),
    ciphertext_root BLOB CHECK (ciphertext_root IS NULL OR length(ciphertext_root) = 32),
    -- Cents the operator kept (set on completion).
    commission      INTEGER NOT NULL DEFAULT 0 CHECK (commission >= 0),
    created_ms      INTEGER NOT NULL,
    created_index   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    closed_ms       INTEGER,
    closed_index    INTEGER,
    -- Exactly one key per purchase, and only a keyed purchase completes.
    CHECK ((state IN ('open', 'cancelled', 'expired')) OR escrow_key IS NOT NULL),
    CHECK ((escrow_key IS NULL) = (ciphertext_root IS NULL))
);
CREATE INDEX purchases_by_buyer ON purchases (buyer_id, id);
CREATE INDEX purchases_by_seller ON purchases (seller_id, id);
CREATE INDEX purchases_live_by_expiry ON purchases (expires_at_ms)
    WHERE state IN ('open', 'keyed');
CREATE INDEX holds_by_purchase ON holds (purchase_id) WHERE purchase_id IS NOT NULL;

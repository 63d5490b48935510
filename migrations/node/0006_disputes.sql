-- Disputes: a sale's proceeds stay held on the seller's account for a
-- dispute window; a buyer who proves a bad chunk in that window gets the
-- sale reversed. Sellers carry their completed sales and strikes.

-- The proceeds of a completed purchase: 'pending' (held on the seller's
-- account until release_at_ms), 'released' (available), or 'refunded'
-- (the sale was reversed). NULL before completion.
ALTER TABLE purchases ADD COLUMN proceeds TEXT
    CHECK (proceeds IS NULL OR proceeds IN ('pending', 'released', 'refunded'));
ALTER TABLE purchases ADD COLUMN release_at_ms INTEGER;
-- Purchases completed before this migration had no window.
UPDATE purchases SET proceeds = 'released', release_at_ms = closed_ms WHERE state = 'completed';
CREATE INDEX purchases_pending_by_release ON purchases (release_at_ms)
    WHERE proceeds = 'pending';

-- A proven dispute: at most one per purchase.
CREATE TABLE disputes (
    purchase_id    INTEGER PRIMARY KEY REFERENCES purchases (id),
    buyer_id       INTEGER NOT NULL,
    seller_id      INTEGER NOT NULL,
    chunk_index    INTEGER NOT NULL,
    -- 'does not decrypt' or 'wrong content'.
    fault          TEXT NOT NULL,
    -- BLAKE3 of the evidence the buyer submitted.
    evidence_hash  BLOB NOT NULL CHECK (length(evidence_hash) = 32),
    created_ms     INTEGER NOT NULL,
    created_index  INTEGER NOT NULL
);
CREATE INDEX disputes_by_seller ON disputes (seller_id);
CREATE INDEX disputes_by_buyer ON disputes (buyer_id);

-- Reputation: sales completed and disputes lost, per seller.
ALTER TABLE users ADD COLUMN sales INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN strikes INTEGER NOT NULL DEFAULT 0;
UPDATE users SET sales = (SELECT COUNT(*) FROM purchases p WHERE p.seller_id = users.id AND p.state = 'completed');

-- Refunds by purchase, for the audit.
CREATE INDEX journal_refunds ON journal (purchase_id) WHERE kind = 'refund';

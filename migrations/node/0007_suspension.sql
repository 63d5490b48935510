-- Suspending a seller takes its listings off sale (and out of search)
-- until it is unsuspended; this marks the ones to put back.
ALTER TABLE listings ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0;

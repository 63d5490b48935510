-- A download whose chunk proved bad after payment: the buyer disputed it
-- and the cluster reversed the sale. Its files stay as evidence.
ALTER TABLE downloads ADD COLUMN disputed INTEGER NOT NULL DEFAULT 0;

-- A digest of each document's title and text, so that adding the same document again is
-- recognised (the command line skips it unless --force). NULL for documents added before.
ALTER TABLE documents ADD COLUMN digest bytea;
CREATE INDEX documents_user_id_digest_idx ON documents (user_id, digest);

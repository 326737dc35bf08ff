-- Incremental generation: a new run copies the questions of the user's latest completed
-- run for every chunk whose text that run covered, and asks the LLM only for the others.
-- Chunks are matched by a digest of their text (the same text re-added is the same chunk).
ALTER TABLE chunks ADD COLUMN text_md5 uuid GENERATED ALWAYS AS (md5(text)::uuid) STORED;
CREATE INDEX chunks_user_id_text_md5_idx ON chunks (user_id, text_md5);

ALTER TABLE training_runs
    ADD COLUMN reused_from   uuid REFERENCES training_runs (id) ON DELETE SET NULL,
    ADD COLUMN reused_chunks integer NOT NULL DEFAULT 0;

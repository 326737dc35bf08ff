-- What the checks of an LLM's questions did in each run: the questions turned down, by
-- reason ({"about_text": 3, ...}), the times a chunk was asked again, and the chunks that
-- kept fewer questions than asked for once the asking again ran out.
ALTER TABLE training_runs
    ADD COLUMN question_rejections jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN question_reasks     integer NOT NULL DEFAULT 0,
    ADD COLUMN short_chunks        integer NOT NULL DEFAULT 0;

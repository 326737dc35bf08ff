-- Chunk catalog, training runs and pairs, jobs and their events, per-user settings.

CREATE TABLE documents (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    title       text,
    chunk_count integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_user_id_idx ON documents (user_id);

-- Chunks are append-only: a run's snapshot is "this user's chunks with id <= chunk_id_max".
CREATE TABLE chunks (
    id          bigserial PRIMARY KEY,
    user_id     uuid NOT NULL,
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    position    integer NOT NULL,
    text        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chunks_user_id_id_idx ON chunks (user_id, id);

CREATE TABLE corpora (
    user_id      uuid PRIMARY KEY,
    total_chunks integer NOT NULL DEFAULT 0,
    embedder     text NOT NULL,
    dimension    integer NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE training_runs (
    id                  uuid PRIMARY KEY,
    user_id             uuid NOT NULL,
    status              text NOT NULL CHECK (status IN (
                            'generating', 'generated', 'training', 'completed',
                            'generating_failed', 'training_failed')),
    error_message       text,
    questions_per_chunk integer NOT NULL CHECK (questions_per_chunk > 0),
    auto_train          boolean NOT NULL DEFAULT false,
    chunk_id_max        bigint NOT NULL,
    total_chunks        integer NOT NULL,
    generated_chunks    integer NOT NULL DEFAULT 0,
    pair_count          integer NOT NULL DEFAULT 0,
    metrics             jsonb,
    lease_owner         text,
    lease_expires_at    timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz
);
-- The last guard of the one-unfinished-run rule, whatever the number of instances.
CREATE UNIQUE INDEX training_runs_one_unfinished_per_user
    ON training_runs (user_id) WHERE status <> 'completed';
CREATE INDEX training_runs_user_id_created_idx ON training_runs (user_id, created_at DESC);
CREATE INDEX training_runs_lease_idx
    ON training_runs (lease_expires_at) WHERE status IN ('generating', 'training');

CREATE TABLE training_pairs (
    id             bigserial PRIMARY KEY,
    run_id         uuid NOT NULL REFERENCES training_runs (id) ON DELETE CASCADE,
    chunk_id       bigint NOT NULL,
    question_index smallint NOT NULL,
    question       text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, chunk_id, question_index)
);

CREATE TABLE jobs (
    id          uuid PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES training_runs (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('generate', 'train')),
    status      text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'succeeded', 'failed')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX jobs_run_id_idx ON jobs (run_id);

CREATE TABLE job_events (
    id         bigserial PRIMARY KEY,
    job_id     uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event      text NOT NULL,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job_id_id_idx ON job_events (job_id, id);

CREATE TABLE deep_memory_settings (
    user_id              uuid PRIMARY KEY,
    enabled              boolean NOT NULL DEFAULT false,
    last_trained_at      timestamptz,
    last_training_run_id uuid REFERENCES training_runs (id) ON DELETE SET NULL,
    trained_chunk_count  integer NOT NULL DEFAULT 0,
    can_enable           boolean NOT NULL DEFAULT false,
    can_enable_reason    text,
    metrics              jsonb,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- The whole schema as the migrations leave it (tests/service/test_schema.py keeps the two equal).
-- Read this to know the database; change it only together with a new migration.


CREATE TABLE documents (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    title       text,
    chunk_count integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- sha256 of title and text: the same document added again is recognised
    digest      bytea
);
CREATE INDEX documents_user_id_idx ON documents (user_id);
CREATE INDEX documents_user_id_digest_idx ON documents (user_id, digest);

-- Chunks are append-only: a run's snapshot is "this user's chunks with id <= chunk_id_max".
CREATE TABLE chunks (
    id          bigserial PRIMARY KEY,
    user_id     uuid NOT NULL,
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    position    integer NOT NULL,
    text        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- a new run reuses an earlier run's questions for chunks of the same text
    text_md5    uuid GENERATED ALWAYS AS (md5(text)::uuid) STORED
);
CREATE INDEX chunks_user_id_id_idx ON chunks (user_id, id);
CREATE INDEX chunks_user_id_text_md5_idx ON chunks (user_id, text_md5);

-- store_version: the version of the user's vector store that holds exactly these chunks,
-- published in the transaction that adds them (NULL: a store from before versions).
CREATE TABLE corpora (
    user_id       uuid PRIMARY KEY,
    total_chunks  integer NOT NULL DEFAULT 0,
    embedder      text NOT NULL,
    dimension     integer NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    store_version text
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
    completed_at        timestamptz,
    -- what the run spent at the LLM, from every reply's `usage`
    llm_calls           integer NOT NULL DEFAULT 0,
    prompt_tokens       bigint NOT NULL DEFAULT 0,
    completion_tokens   bigint NOT NULL DEFAULT 0,
    -- the completed run whose questions this one copied for unchanged chunks, and how many
    reused_from         uuid REFERENCES training_runs (id) ON DELETE SET NULL,
    reused_chunks       integer NOT NULL DEFAULT 0,
    -- a user asked the running run to stop (cleared when it is resumed)
    cancel_requested_at timestamptz,
    -- the checks of an LLM's questions: those turned down by reason, the times a chunk was
    -- asked again, the chunks that kept fewer questions than asked for
    question_rejections jsonb NOT NULL DEFAULT '{}',
    question_reasks     integer NOT NULL DEFAULT 0,
    short_chunks        integer NOT NULL DEFAULT 0
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
    finished_at timestamptz,
    llm_calls         integer NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0
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

-- The LLM rate budget every instance shares, one row per provider key (a digest of its URL
-- and API key, never the key); times are epoch seconds of this server's clock. Unlogged:
-- it is rebuilt from nothing after a crash.
CREATE UNLOGGED TABLE llm_budgets (
    key          text PRIMARY KEY,
    factor       double precision NOT NULL DEFAULT 1.0,
    adjusted_at  double precision NOT NULL,
    hold_until   double precision NOT NULL DEFAULT 0,
    paused_until double precision NOT NULL DEFAULT 0,
    rate_limited bigint NOT NULL DEFAULT 0
);

-- What each user generating on each instance wants of a budget, refreshed while it waits.
CREATE UNLOGGED TABLE llm_budget_claims (
    key         text NOT NULL,
    instance_id text NOT NULL,
    user_id     uuid NOT NULL,
    demand      double precision NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, instance_id, user_id)
);

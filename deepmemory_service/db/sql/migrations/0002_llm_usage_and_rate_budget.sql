-- What each run and job spent at the LLM (from every reply's `usage`), and the rate budget
-- that every instance shares per provider key.

ALTER TABLE training_runs
    ADD COLUMN llm_calls         integer NOT NULL DEFAULT 0,
    ADD COLUMN prompt_tokens     bigint NOT NULL DEFAULT 0,
    ADD COLUMN completion_tokens bigint NOT NULL DEFAULT 0;

ALTER TABLE jobs
    ADD COLUMN llm_calls         integer NOT NULL DEFAULT 0,
    ADD COLUMN prompt_tokens     bigint NOT NULL DEFAULT 0,
    ADD COLUMN completion_tokens bigint NOT NULL DEFAULT 0;

-- One row per provider key (a digest of its URL and API key, never the key). Times are
-- epoch seconds of this server's clock. Unlogged: it is rebuilt from nothing after a crash.
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

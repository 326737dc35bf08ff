-- Named queries; each starts with a `-- name: <name>` line and a line saying what it does.
-- Loaded by database.py.

-- name: user_lock
-- Serialises a user's state-changing commands across every instance (released at commit).
SELECT pg_advisory_xact_lock(hashtextextended('deepmemory:' || ($1::uuid)::text, 0));

-- name: user_try_lock
-- The same lock if it is free now (true), else false at once: a request asks again rather than wait blind.
SELECT pg_try_advisory_xact_lock(hashtextextended('deepmemory:' || ($1::uuid)::text, 0));

-- name: blocking_run
-- The user's newest unfinished run (any status but completed): what blocks a new generate.
SELECT id, status FROM training_runs
WHERE user_id = $1 AND status <> 'completed'
ORDER BY created_at DESC LIMIT 1;

-- name: create_run
-- A new generating run, leased to this instance, with a snapshot of the user's chunks (their
-- count and highest id) and the completed run it may reuse questions from.
INSERT INTO training_runs (id, user_id, status, questions_per_chunk, auto_train,
                           chunk_id_max, total_chunks, lease_owner, lease_expires_at,
                           reused_from)
SELECT $1, $2, 'generating', $3, $4, coalesce(max(c.id), 0), count(*),
       $5, now() + make_interval(secs => $6), $7
FROM chunks c WHERE c.user_id = $2
RETURNING *;

-- name: reuse_source
-- The user's latest completed run, if it asked at least as many questions per chunk: a new
-- run copies its questions for the chunks whose text it covered.
SELECT id FROM (
    SELECT id, questions_per_chunk FROM training_runs
    WHERE user_id = $1 AND status = 'completed'
    ORDER BY created_at DESC LIMIT 1
) latest
WHERE questions_per_chunk >= $2;

-- name: reuse_pairs
-- Copies, for each of the run's snapshot chunks, the first $5 questions the source run has
-- for a chunk of the same text. A chunk's questions are copied together in one statement,
-- so a copied chunk is covered exactly like a generated one; a conflict adds nothing.
WITH source AS (
    SELECT DISTINCT ON (oc.text_md5, p.question_index) oc.text_md5, p.question_index,
           p.question
    FROM training_pairs p JOIN chunks oc ON oc.id = p.chunk_id
    WHERE p.run_id = $2 AND p.question_index < $5
    ORDER BY oc.text_md5, p.question_index, p.chunk_id
), ins AS (
    INSERT INTO training_pairs (run_id, chunk_id, question_index, question)
    SELECT $1, c.id, s.question_index, s.question
    FROM chunks c JOIN source s ON s.text_md5 = c.text_md5
    WHERE c.user_id = $3 AND c.id <= $4
    ON CONFLICT (run_id, chunk_id, question_index) DO NOTHING
    RETURNING chunk_id
)
UPDATE training_runs
SET generated_chunks = generated_chunks + (SELECT count(DISTINCT chunk_id) FROM ins),
    pair_count = pair_count + (SELECT count(*) FROM ins),
    reused_chunks = reused_chunks + (SELECT count(DISTINCT chunk_id) FROM ins),
    updated_at = now()
WHERE id = $1 AND status = 'generating' AND lease_owner = $6
RETURNING generated_chunks, pair_count, reused_chunks;

-- name: generation_estimate
-- What a generate would cover now: the user's chunks, those whose text the reuse source
-- covered (none without a source), and the length of the others' texts.
SELECT count(*) AS chunks,
       count(*) FILTER (WHERE r.text_md5 IS NOT NULL) AS reusable,
       coalesce(sum(length(c.text)) FILTER (WHERE r.text_md5 IS NULL), 0) AS new_chars
FROM chunks c
LEFT JOIN (
    SELECT DISTINCT oc.text_md5 FROM training_pairs p JOIN chunks oc ON oc.id = p.chunk_id
    WHERE p.run_id = $2
) r ON r.text_md5 = c.text_md5
WHERE c.user_id = $1;

-- name: generation_estimate_sample
-- The texts of at most $3 of the chunks a generate would send to the LLM (those whose text
-- the reuse source $2 did not cover; none is a source without pairs), spread over the
-- corpus by their digest: the sample the estimate counts in the model's own tokens.
SELECT c.text FROM chunks c
WHERE c.user_id = $1 AND NOT EXISTS (
    SELECT 1 FROM training_pairs p JOIN chunks oc ON oc.id = p.chunk_id
    WHERE p.run_id = $2 AND oc.text_md5 = c.text_md5
)
ORDER BY c.text_md5, c.id LIMIT $3;

-- name: calls_per_new_chunk
-- LLM calls per chunk asked for, in the user's latest run that asked for any (retries and
-- 429s included): what a new run may expect.
SELECT llm_calls::float8 / (generated_chunks - reused_chunks) FROM training_runs
WHERE user_id = $1 AND llm_calls > 0 AND generated_chunks > reused_chunks
ORDER BY created_at DESC LIMIT 1;

-- name: seconds_per_llm_call
-- Wall-clock seconds per LLM call of the user's latest generation jobs that made calls (five
-- at most, at the concurrency and latency they met): how long a new run's calls may take.
SELECT sum(extract(epoch FROM j.finished_at - j.created_at))::float8 / sum(j.llm_calls)
FROM (SELECT created_at, finished_at, llm_calls FROM jobs
      WHERE user_id = $1 AND kind = 'generate' AND finished_at IS NOT NULL AND llm_calls > 0
      ORDER BY finished_at DESC LIMIT 5) j;

-- name: get_run
-- One run of the user (another user's run is not found).
SELECT * FROM training_runs WHERE id = $1 AND user_id = $2;

-- name: get_run_for_update
-- One run of the user, locked until the transaction ends.
SELECT * FROM training_runs WHERE id = $1 AND user_id = $2 FOR UPDATE;

-- name: list_runs
-- The user's runs, newest first, each with the job that last worked on it.
SELECT r.*, (SELECT j.id FROM jobs j WHERE j.run_id = r.id
             ORDER BY j.created_at DESC LIMIT 1) AS latest_job_id
FROM training_runs r WHERE r.user_id = $1
ORDER BY r.created_at DESC LIMIT $2;

-- name: latest_job_id
-- The job that last worked on a run.
SELECT id FROM jobs WHERE run_id = $1 ORDER BY created_at DESC LIMIT 1;

-- name: resume_run
-- Back from a failed status to work: clears the error (and a past cancel) and takes the lease.
UPDATE training_runs
SET status = $3, error_message = NULL, cancel_requested_at = NULL, lease_owner = $4,
    lease_expires_at = now() + make_interval(secs => $5), updated_at = now()
WHERE id = $1 AND user_id = $2 AND status = $6
RETURNING *;

-- name: start_training
-- A generated run moves to training, leased to this instance.
UPDATE training_runs
SET status = 'training', error_message = NULL, cancel_requested_at = NULL, lease_owner = $3,
    lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
WHERE id = $1 AND user_id = $2 AND status = 'generated'
RETURNING *;

-- name: count_pairs
-- How many pairs a run has.
SELECT count(*) FROM training_pairs WHERE run_id = $1;

-- name: delete_run
-- Deletes one of the user's runs; its pairs, jobs and events go with it (ON DELETE CASCADE).
DELETE FROM training_runs WHERE id = $1 AND user_id = $2;

-- name: create_job
-- A new running job of a run.
INSERT INTO jobs (id, run_id, user_id, kind) VALUES ($1, $2, $3, $4) RETURNING *;

-- name: get_job
-- One job of the user (another user's job is not found).
SELECT * FROM jobs WHERE id = $1 AND user_id = $2;

-- name: finish_job
-- A running job ends, succeeded or failed.
UPDATE jobs SET status = $2, finished_at = now() WHERE id = $1 AND status = 'running';

-- name: insert_event
-- The NOTIFY payload stays small; listeners read the stored row, the source for replay too.
WITH e AS (
    INSERT INTO job_events (job_id, event, data) VALUES ($1, $2, $3) RETURNING id
)
SELECT e.id, pg_notify('deepmemory_events', json_build_object(
    'id', e.id, 'job_id', $1::uuid, 'origin', $4::text)::text)
FROM e;

-- name: events_after
-- A job's stored events after an id, in order (the replay of Last-Event-ID).
SELECT id, job_id, event, data FROM job_events
WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3;

-- name: get_events
-- Several stored events in one round trip, in id order (a job's events are in its order).
SELECT id, job_id, event, data FROM job_events WHERE id = ANY($1::bigint[]) ORDER BY id;

-- name: uncovered_chunks
-- The run's snapshot chunks that have no pair yet, in id order, one page after `$3`.
SELECT c.id, c.text FROM chunks c
WHERE c.user_id = $1 AND c.id <= $2 AND c.id > $3
  AND NOT EXISTS (SELECT 1 FROM training_pairs p WHERE p.run_id = $4 AND p.chunk_id = c.id)
ORDER BY c.id LIMIT $5;

-- name: chunk_position
-- A chunk's 1-based place among the user's chunks (a run's chunks go in id order).
SELECT count(*) FROM chunks WHERE user_id = $1 AND id <= $2;

-- name: insert_pairs
-- One round trip per batch. A chunk's questions always arrive together, so a chunk is
-- covered exactly when one of its pairs is stored; a conflict (a retry) adds nothing. The
-- LLM calls and tokens the job ($7-$9) and the run ($10-$12) have spent, and what the
-- question checks did in the run ($13-$15), are totals, so a retry sets them again.
WITH ins AS (
    INSERT INTO training_pairs (run_id, chunk_id, question_index, question)
    SELECT $1, u.chunk_id, u.question_index, u.question
    FROM unnest($2::bigint[], $3::smallint[], $4::text[]) AS u(chunk_id, question_index, question)
    ON CONFLICT (run_id, chunk_id, question_index) DO NOTHING
    RETURNING chunk_id
), job AS (
    UPDATE jobs SET llm_calls = $7, prompt_tokens = $8, completion_tokens = $9
    WHERE id = $6 AND (llm_calls, prompt_tokens, completion_tokens) <> ($7, $8, $9)
)
UPDATE training_runs
SET generated_chunks = generated_chunks + (SELECT count(DISTINCT chunk_id) FROM ins),
    pair_count = pair_count + (SELECT count(*) FROM ins),
    llm_calls = $10, prompt_tokens = $11, completion_tokens = $12,
    question_rejections = $13, question_reasks = $14, short_chunks = $15,
    updated_at = now()
WHERE id = $1 AND status = 'generating' AND lease_owner = $5
RETURNING generated_chunks, pair_count;

-- name: finish_generation
-- A generating run this instance holds becomes generated, once every chunk of its snapshot
-- has pairs.
UPDATE training_runs
SET status = 'generated', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND status = 'generating' AND lease_owner = $2
  AND generated_chunks >= total_chunks
RETURNING *;

-- name: fail_run
-- A running run this instance holds fails with a message (Proceed and Delete then apply).
UPDATE training_runs
SET status = $2, error_message = $3, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1 AND status = $4 AND lease_owner = $5
RETURNING *;

-- name: complete_run
-- A training run this instance holds completes, with its metrics.
UPDATE training_runs
SET status = 'completed', metrics = $3, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = now(), completed_at = now()
WHERE id = $1 AND status = 'training' AND lease_owner = $2
RETURNING *;

-- name: run_pairs
-- A run's pairs (chunk, question) in a stable order, for training.
SELECT chunk_id, question FROM training_pairs WHERE run_id = $1 ORDER BY chunk_id, question_index;

-- name: run_questions_page
-- A run's questions after (chunk $2, index $3), one page in (chunk, index) order by the
-- pairs' unique index: what a resumed generation checks new questions against.
SELECT chunk_id, question_index, question FROM training_pairs
WHERE run_id = $1 AND (chunk_id, question_index) > ($2, $3)
ORDER BY chunk_id, question_index LIMIT $4;

-- name: distinct_pair_chunks
-- How many chunks a run's pairs cover.
SELECT count(DISTINCT chunk_id) FROM training_pairs WHERE run_id = $1;

-- name: pairs_per_snapshot_chunk
-- How many pairs each chunk of the run's snapshot has, 0 for a chunk without any: a run
-- with one pair set per chunk has its questions per chunk for each (a check for tests and
-- benchmarks: none missing, none twice).
SELECT count(p.id) AS n FROM training_runs r
JOIN chunks c ON c.user_id = r.user_id AND c.id <= r.chunk_id_max
LEFT JOIN training_pairs p ON p.run_id = r.id AND p.chunk_id = c.id
WHERE r.id = $1 GROUP BY c.id;

-- name: renew_leases
-- Only runs with live work here: a run whose work died unrecorded must expire and be swept.
-- Says which of them a user asked to cancel (in case the NOTIFY was missed).
UPDATE training_runs SET lease_expires_at = now() + make_interval(secs => $2)
WHERE lease_owner = $1 AND id = ANY($3::uuid[]) AND status IN ('generating', 'training')
RETURNING id, cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: request_cancel
-- Marks a running run for cancelling and tells every instance (the one running it acts).
WITH r AS (
    UPDATE training_runs SET cancel_requested_at = now(), updated_at = now()
    WHERE id = $1 AND status IN ('generating', 'training')
    RETURNING id, lease_owner, lease_expires_at
)
SELECT r.lease_owner, coalesce(r.lease_expires_at < now(), true) AS lease_expired,
       pg_notify('deepmemory_events',
                 json_build_object('cancel_run', r.id, 'origin', $2::text)::text)
FROM r;

-- name: expire_leases
-- Runs whose owner stopped renewing: failed, so the user can Proceed.
UPDATE training_runs
SET status = CASE status WHEN 'generating' THEN 'generating_failed'
                         ELSE 'training_failed' END,
    error_message = $1, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE status IN ('generating', 'training') AND lease_expires_at < now()
RETURNING *;

-- name: release_leases
-- A graceful shutdown: this instance's running runs fail at once instead of waiting out the lease.
UPDATE training_runs
SET status = CASE status WHEN 'generating' THEN 'generating_failed'
                         ELSE 'training_failed' END,
    error_message = $2, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE lease_owner = $1 AND status IN ('generating', 'training')
RETURNING *;

-- name: running_jobs_of_run
-- The jobs of a run still running.
SELECT id FROM jobs WHERE run_id = $1 AND status = 'running';

-- name: get_settings
-- The user's Deep Memory settings, if any were recorded.
SELECT s.enabled, s.last_trained_at, s.last_training_run_id, s.can_enable,
       s.can_enable_reason, s.trained_chunk_count, s.metrics
FROM deep_memory_settings s WHERE s.user_id = $1;

-- name: total_chunks
-- How many chunks the user's catalog holds.
SELECT total_chunks FROM corpora WHERE user_id = $1;

-- name: record_training
-- A completed training recorded in the user's settings: when, which run, how many chunks,
-- whether its model may be enabled and why not.
INSERT INTO deep_memory_settings AS s (user_id, last_trained_at, last_training_run_id,
    trained_chunk_count, can_enable, can_enable_reason, metrics, enabled)
VALUES ($1, now(), $2, $3, $4, $5, $6, false)
ON CONFLICT (user_id) DO UPDATE
SET last_trained_at = now(), last_training_run_id = $2, trained_chunk_count = $3,
    can_enable = $4, can_enable_reason = $5, metrics = $6,
    -- a model that may not be enabled never stays enabled
    enabled = s.enabled AND $4, updated_at = now();

-- name: set_enabled
-- Turns the user's Deep Memory on or off.
INSERT INTO deep_memory_settings AS s (user_id, enabled) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET enabled = $2, updated_at = now();

-- name: get_corpus
-- The catalog's side of a user's vector store; `last_id` by the (user_id, id) index.
SELECT c.total_chunks, c.store_version, c.embedder, c.dimension,
       (SELECT max(k.id) FROM chunks k WHERE k.user_id = $1) AS last_id
FROM corpora c WHERE c.user_id = $1;

-- name: insert_documents
-- the clock, not the transaction's start: documents added together keep their order
INSERT INTO documents (id, user_id, title, chunk_count, digest, created_at)
SELECT u.id, $1, u.title, u.chunk_count, u.digest, clock_timestamp()
FROM unnest($2::uuid[], $3::text[], $4::integer[], $5::bytea[]) WITH ORDINALITY
     AS u(id, title, chunk_count, digest, n)
ORDER BY u.n;

-- name: documents_with_digests
-- Which of these document digests the user already has.
SELECT DISTINCT digest FROM documents WHERE user_id = $1 AND digest = ANY($2::bytea[]);

-- name: list_documents
-- The user's documents, newest first; titles cut to $3 characters, saying which were (stored before titles were bounded).
SELECT id, left(title, $3) AS title, length(title) > $3 AS cut, chunk_count, created_at
FROM documents
WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT $2;

-- name: document_count
-- How many documents the user has.
SELECT count(*) FROM documents WHERE user_id = $1;

-- name: next_chunk_ids
-- Ids for an upload's chunks, ascending, taken before the chunks are inserted: the store's
-- rows carry them, so the store's write need not wait for the insert.
SELECT nextval(pg_get_serial_sequence('chunks', 'id')) AS id FROM generate_series(1, $1::integer);

-- name: insert_chunks
-- One round trip for an upload's chunks, with the ids next_chunk_ids gave.
INSERT INTO chunks (id, user_id, document_id, position, text)
SELECT u.id, $1, u.document_id, u.position, u.text
FROM unnest($2::bigint[], $3::uuid[], $4::integer[], $5::text[]) AS u(id, document_id, position, text);

-- name: publish_corpus
-- The chunk count and the store version that holds them, changed together.
INSERT INTO corpora AS c (user_id, total_chunks, embedder, dimension, store_version)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (user_id) DO UPDATE SET total_chunks = $2, store_version = $5, updated_at = now();

-- name: chunk_page
-- The catalog's chunks after id `$2`, with what the store keeps beside each (a rebuild).
SELECT c.id, c.text, c.document_id, c.position, d.title
FROM chunks c JOIN documents d ON d.id = c.document_id
WHERE c.user_id = $1 AND c.id > $2 ORDER BY c.id LIMIT $3;

-- name: chunk_texts
-- The texts of a user's chunks `$2` (a search's results: the texts are not kept in memory).
SELECT id, text FROM chunks WHERE user_id = $1 AND id = ANY($2::bigint[]);

-- name: run_counts
-- How many runs there are of each status, over every user and instance (for /metrics).
SELECT status, count(*) FROM training_runs GROUP BY status;

-- name: budget_lock
-- A rate budget's shared state, locked until the exchange commits (made on first use),
-- with the server's clock that its times are in.
INSERT INTO llm_budgets AS b (key, adjusted_at)
VALUES ($1, extract(epoch FROM clock_timestamp()))
ON CONFLICT (key) DO UPDATE SET key = b.key
RETURNING factor, adjusted_at, hold_until, paused_until, rate_limited,
          extract(epoch FROM clock_timestamp()) AS now;

-- name: budget_save
-- Stores a rate budget's shared state after an exchange (its row is locked by budget_lock).
UPDATE llm_budgets
SET factor = $2, adjusted_at = $3, hold_until = $4, paused_until = $5, rate_limited = $6
WHERE key = $1;

-- name: budget_claim
-- Replaces this instance's claims on a budget (and drops claims nobody refreshed for a
-- minute); returns the live claims of the other instances.
WITH gone AS (
    DELETE FROM llm_budget_claims
    WHERE key = $1 AND ((instance_id = $2 AND user_id <> ALL($3::uuid[]))
                        OR updated_at < now() - interval '1 minute')
), put AS (
    INSERT INTO llm_budget_claims (key, instance_id, user_id, demand)
    SELECT $1, $2, u.user_id, u.demand
    FROM unnest($3::uuid[], $4::float8[]) AS u(user_id, demand)
    ON CONFLICT (key, instance_id, user_id)
    DO UPDATE SET demand = EXCLUDED.demand, updated_at = now()
)
SELECT instance_id, user_id, demand FROM llm_budget_claims
WHERE key = $1 AND instance_id <> $2 AND updated_at > now() - make_interval(secs => $5);

-- name: ping
-- Whether the database answers.
SELECT 1;

-- name: migration_lock
-- Held while migrating: instances that migrate at once take turns.
SELECT pg_advisory_lock($1);

-- name: migration_unlock
-- Releases the migration lock.
SELECT pg_advisory_unlock($1);

-- name: create_migrations_table
-- The table of applied migrations, made on first use.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());

-- name: applied_migrations
-- The versions of the migrations applied.
SELECT version FROM schema_migrations;

-- name: record_migration
-- Records a migration as applied (in its own transaction).
INSERT INTO schema_migrations (version, name) VALUES ($1, $2);

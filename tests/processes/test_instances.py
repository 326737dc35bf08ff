"""Several real `serve` processes on one PostgreSQL: the rules hold across instances, events
cross between them, and a process killed with SIGKILL leaves every run recoverable."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from deepmemory_service.testing.standin_llm import CONFIG, STATS
from tests.cluster import Instance, ingest, read_events, signal_while_writing
from tests.conftest import assert_one_pair_set_per_chunk, wait_generated

KILLS = int(os.environ.get("DEEPMEMORY_TEST_KILLS", "10"))


async def test_a_hundred_generates_over_two_instances_make_one_run(cluster: Any) -> None:
    start, db_url, _ = cluster
    a, b = await start(), await start()
    user = uuid.uuid4()
    await ingest(a, user, 5)
    replies = await asyncio.gather(
        *(
            (a if i % 2 else b).call("POST", "/deep-memory/generate", json={"user_id": str(user)})
            for i in range(100)
        )
    )
    accepted = [body for code, body in replies if code == 202]
    conflicts = [body for code, body in replies if code == 409]
    assert len(accepted) == 1
    assert len(conflicts) == 99
    run_id = accepted[0]["training_run_id"]
    assert all(
        c
        == {
            "detail": "Cannot start new generation: an unfinished training run exists",
            "blocking_run_id": run_id,
            "blocking_run_status": c["blocking_run_status"],
        }
        for c in conflicts
    )
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM training_runs") == 1
    finally:
        await conn.close()


async def test_subscribers_on_one_instance_see_a_job_running_on_another(cluster: Any) -> None:
    start, _, _ = cluster
    a, b = await start(), await start()
    user = uuid.uuid4()
    await ingest(a, user, 60)
    _, body = await a.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 1}
    )

    on_b, on_a = await asyncio.wait_for(
        asyncio.gather(read_events(b, user, body["job_id"]), read_events(a, user, body["job_id"])),
        60,
    )
    assert on_b[-1][1] == "done"
    assert [e[:2] for e in on_b] == [e[:2] for e in on_a]


async def test_kill_9_during_generation_leaves_every_run_recoverable(cluster: Any) -> None:
    start, db_url, standin = cluster
    rng = random.Random(int(os.environ.get("DEEPMEMORY_TEST_SEED", "7")))
    instance = await start()
    user = uuid.uuid4()
    await ingest(instance, user, 200)
    _, body = await instance.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 2}
    )
    run_id = body["training_run_id"]
    mid_run = 0
    for _ in range(KILLS):
        # somewhere in the middle of the run, including before any pair is written
        await asyncio.sleep(rng.uniform(0.0, 0.25))
        instance.kill()
        instance = await start()
        run = await instance.until(user, run_id, "generating_failed", "generated")
        if run["status"] == "generated":
            break
        assert "The worker running this run was lost" in run["error_message"]
        mid_run += 1
        code, reply = await instance.call(
            "POST", "/deep-memory/proceed", json={"user_id": str(user), "training_run_id": run_id}
        )
        assert code == 202, reply
        assert reply["message"].startswith("Resuming generation from chunk ")
    assert mid_run >= KILLS // 2, f"only {mid_run} kills landed during generation"
    standin.app[CONFIG].latency_ms = 0
    await instance.until(user, run_id, "generated")
    await assert_one_pair_set_per_chunk(db_url, run_id, 2)


async def test_proceed_and_delete_racing_on_one_failed_run(cluster: Any) -> None:
    start, db_url, standin = cluster
    a, b = await start(), await start()
    for _ in range(3):
        user = uuid.uuid4()
        await ingest(a, user, 12)
        standin.app[CONFIG].fail_after = standin.app[STATS].calls + 4
        _, body = await a.call("POST", "/deep-memory/generate", json={"user_id": str(user)})
        run_id = body["training_run_id"]
        await a.until(user, run_id, "generating_failed")
        standin.app[CONFIG].fail_after = None
        (p_code, _), (d_code, d_body) = await asyncio.gather(
            a.call(
                "POST",
                "/deep-memory/proceed",
                json={"user_id": str(user), "training_run_id": run_id},
            ),
            b.call("DELETE", f"/deep-memory/runs/{run_id}", params={"user_id": str(user)}),
        )
        if p_code == 202:
            # proceed won: the run is resuming, so the delete saw it unfailed or gone
            assert d_code == 400
            await a.until(user, run_id, "generated")
            await assert_one_pair_set_per_chunk(db_url, run_id, 3)
        else:
            assert d_code == 200, d_body
            assert p_code == 404
            conn = await asyncpg.connect(db_url)
            try:
                left = await conn.fetchval(
                    "SELECT count(*) FROM training_pairs WHERE run_id = $1", uuid.UUID(run_id)
                )
            finally:
                await conn.close()
            assert left == 0


async def sigterm_and_exit(instance: Any) -> None:
    """SIGTERM to `instance`, which must exit with 0: a 60 s deadline for a hang, not a
    speed target; on a hang the failure carries the instance's stacks."""
    os.killpg(instance.proc.pid, signal.SIGTERM)
    try:
        code = await asyncio.get_running_loop().run_in_executor(None, instance.proc.wait, 60)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"no exit 60 s after SIGTERM; its stacks:\n{instance.stacks()}"
        ) from None
    assert code == 0, f"exit code {code}\n{instance.log_tail()}"


async def test_sigterm_mid_run_fails_the_run_cleanly_and_exits(cluster: Any) -> None:
    start, db_url, standin = cluster
    a, b = await start(), await start()
    user = uuid.uuid4()
    await ingest(a, user, 200)
    standin.app[CONFIG].latency_ms = 100
    _, body = await a.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 2}
    )
    run_id = body["training_run_id"]
    on_a = asyncio.create_task(read_events(a, user, body["job_id"]))
    run = await wait_generated(a, user, run_id, 8)
    assert run["status"] == "generating"

    # that the shutdown did not wait for the run is `done < 200` below (the rest of the run
    # takes 5 s at the least)
    await sigterm_and_exit(a)

    # the stream on the stopped instance ended cleanly, with the run's failure as its last word
    events = await asyncio.wait_for(on_a, 30)
    _, last_event, last_data = events[-1]
    assert last_event == "failed"
    assert last_data["status"] == "generating_failed"
    _, run = await b.call("GET", f"/deep-memory/runs/{run_id}", params={"user_id": str(user)})
    assert run["status"] == "generating_failed"
    assert run["error_message"].startswith(
        "The worker running this run was lost (the service shut down)"
    )
    done = run["generated_chunks"]
    assert 8 <= done < 200
    assert run["pair_count"] == 2 * done, "written pairs were not kept"

    standin.app[CONFIG].latency_ms = 0
    code, reply = await b.call(
        "POST", "/deep-memory/proceed", json={"user_id": str(user), "training_run_id": run_id}
    )
    assert code == 202, reply
    assert reply["message"] == f"Resuming generation from chunk {done}/200"
    await b.until(user, run_id, "generated")
    await assert_one_pair_set_per_chunk(db_url, run_id, 2)


async def test_sigterm_while_answers_queue_behind_the_writer_exits(cluster: Any) -> None:
    """Instant answers from eight workers keep the run's writer behind, so the shutdown's
    cancel tends to land on it just as an answer reaches it: a writer that lost that cancel
    (asyncio.wait_for on Python 3.11) waited forever for answers, and the process with it
    (seven SIGTERMs in eight hung so before the fix)."""
    start, db_url, standin = cluster
    a = await start(DEEPMEMORY_CONCURRENCY="8")
    user = uuid.uuid4()
    await ingest(a, user, 1000)
    standin.app[CONFIG].latency_ms = 0
    _, body = await a.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 2}
    )
    run_id = body["training_run_id"]
    run = await wait_generated(a, user, run_id, 8)
    assert run["status"] == "generating"

    await sigterm_and_exit(a)

    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT status, error_message, generated_chunks FROM training_runs WHERE id = $1",
            uuid.UUID(run_id),
        )
    finally:
        await conn.close()
    assert row is not None
    assert row["status"] == "generating_failed"
    assert row["error_message"].startswith(
        "The worker running this run was lost (the service shut down)"
    )
    assert row["generated_chunks"] < 1000, "the shutdown waited for the run"


async def test_documents_added_on_any_instance_are_searched_on_every_one(cluster: Any) -> None:
    start, _, _ = cluster
    a, b = await start(), await start()
    user = uuid.uuid4()

    async def search(instance: Instance, q: str) -> list[str]:
        code, found = await instance.call(
            "GET", "/search", params={"user_id": str(user), "q": q, "k": "10"}
        )
        assert code == 200, found
        return [hit["text"] for hit in found["results"]]

    await ingest(a, user, 3)
    assert len(await search(a, "component1")) == 3  # A now holds the vectors in memory
    zebra = "Zebras and quokkas graze beside the narwhal lagoon."
    code, body = await b.call(
        "POST", "/documents", json={"user_id": str(user), "documents": [{"text": zebra}]}
    )
    assert code == 201, body
    assert body["total_chunks"] == 4
    assert (await search(a, "zebras quokkas narwhal"))[0] == zebra
    code, body = await a.call(
        "POST", "/documents", json={"user_id": str(user), "documents": [{"text": "Okapi."}]}
    )
    assert code == 201, body
    assert len(await search(b, "okapi")) == 5


async def test_an_upload_frozen_anywhere_on_one_instance_never_shows_on_another(
    cluster: Any, tmp_path: Path
) -> None:
    """Instance A is stopped (SIGSTOP) during uploads: at random points, and while it has a
    file of the vector store open for writing. While it stands still, searches on B answer 200 from
    the last whole state: only chunks the catalog has, each with its own text, and no
    server path in any reply."""
    start, db_url, _ = cluster
    rng = random.Random(int(os.environ.get("DEEPMEMORY_TEST_SEED", "5")))
    a, b = await start(), await start()
    user = uuid.uuid4()
    await ingest(a, user, 20)
    stores = tmp_path / "data" / "stores"

    def docs(n: int, count: int) -> list[dict[str, str]]:
        return [
            {"title": f"u{n}", "text": f"Upload {n} part {i}: zebra{n} quokka{i}. " * 30}
            for i in range(count)
        ]

    uploaded = 20

    async def upload(n: int, count: int = 150) -> None:
        nonlocal uploaded
        code, body = await a.call(
            "POST", "/documents", json={"user_id": str(user), "documents": docs(n, count)}
        )
        assert code == 201, body
        uploaded += count

    async def catalog() -> dict[int, str]:
        conn = await asyncpg.connect(db_url)
        try:
            return dict(await conn.fetch("SELECT id, text FROM chunks WHERE user_id = $1", user))
        finally:
            await conn.close()

    started = time.monotonic()
    await upload(0)
    upload_s = time.monotonic() - started
    stops = int(os.environ.get("DEEPMEMORY_TEST_STOPS", "8"))
    mid_write = 0
    n = 0
    # every other stop at a random moment, the others while a file of the store is open for
    # writing; a short write can finish between two looks at the process's files, so stops
    # go on (as many again at most, with larger uploads) until one has landed mid-write
    while n < stops or (mid_write == 0 and n < 2 * stops):
        n += 1
        sending = asyncio.create_task(upload(n, 150 if n <= stops else 600))
        if n % 2 and n <= stops:
            await asyncio.sleep(rng.uniform(0.05, 1.0) * upload_s)
            os.killpg(a.proc.pid, signal.SIGSTOP)
        elif await asyncio.to_thread(
            signal_while_writing, stores, a.proc.pid, signal.SIGSTOP, sending.done
        ):
            mid_write += 1
        else:
            await sending  # it wrote too fast to be caught: nothing to look at
            continue
        try:
            committed = await catalog()
            for q in ("zebra3 quokka7", f"zebra{n} quokka1"):
                code, body = await b.call(
                    "GET", "/search", params={"user_id": str(user), "q": q, "k": "20"}
                )
                assert code == 200, body
                assert str(tmp_path) not in str(body)
                hits = {hit["chunk_id"]: hit["text"] for hit in body["results"]}
                assert hits, "a search found nothing"
                assert set(hits) <= set(committed), "a search saw chunks the catalog has not"
                assert all(committed[i] == text for i, text in hits.items())
        finally:
            os.killpg(a.proc.pid, signal.SIGCONT)
        await sending
    assert mid_write >= 1, "no stop landed while the store was being written"
    assert len(await catalog()) == uploaded

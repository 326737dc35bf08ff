"""Leases: a lost worker's run becomes recoverable; shutdown releases runs at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import attrs

from deepmemory_service.api.keys import BACKEND, SUPERVISORS
from deepmemory_service.runs import leases
from deepmemory_service.testing.client import poll
from deepmemory_service.testing.fakes import ControlledGenerator
from tests.conftest import Api, read_stream


async def held_run(
    api_factory: Any, user_id: uuid.UUID, n_chunks: int, settings: Any = None
) -> tuple[Api, ControlledGenerator, dict[str, Any]]:
    """A generating run held in its first LLM call; the service, the generator to release,
    and the reply to the generate command."""
    gen = ControlledGenerator()
    gen.hold()
    api: Api = await api_factory(settings, generator=gen)
    await api.ingest(user_id, n_chunks)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    await asyncio.wait_for(gen.started.wait(), 10)
    return api, gen, body


async def test_sweeper_fails_runs_whose_lease_expired(api_factory: Any, user_id: uuid.UUID) -> None:
    api, gen, body = await held_run(api_factory, user_id, 5)
    stream = asyncio.create_task(read_stream(api, user_id, body["job_id"]))
    # as if the owner had died: its lease is in the past and nobody renews it
    async with api.services.db.conn() as conn:
        await conn.raw.execute(
            "UPDATE training_runs SET lease_owner = 'dead-instance', "
            "lease_expires_at = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(body["training_run_id"]),
        )

    swept = await leases.sweep_once(api.services)

    assert [str(r.id) for r in swept] == [body["training_run_id"]]
    run = await api.run(user_id, body["training_run_id"])
    assert run["status"] == "generating_failed"
    assert run["error_message"].startswith(
        "The worker running this run was lost (its lease expired)"
    )
    events = await stream
    assert events[-1].event == "failed"
    assert events[-1].data["status"] == "generating_failed"
    gen.release()
    await api.idle(user_id)
    # the live worker lost its lease: it can no longer write pairs into the swept run
    run = await api.run(user_id, body["training_run_id"])
    assert run["status"] == "generating_failed"
    async with api.services.db.conn() as conn:
        stored = await conn.raw.fetchval(
            "SELECT count(*) FROM training_pairs WHERE run_id = $1",
            uuid.UUID(body["training_run_id"]),
        )
    assert stored == run["pair_count"] == 0
    code, reply = await api.call(
        "POST",
        "/deep-memory/proceed",
        json={"user_id": str(user_id), "training_run_id": body["training_run_id"]},
    )
    assert code == 202, reply
    await api.wait_status(user_id, body["training_run_id"], "generated")


async def test_shutdown_releases_running_runs_at_once(
    api_factory: Any, settings: Any, user_id: uuid.UUID
) -> None:
    api, _, body = await held_run(api_factory, user_id, 5)

    await asyncio.wait_for(api.client.close(), 15)

    conn = await asyncpg.connect(settings.database.url)
    try:
        row = await conn.fetchrow(
            "SELECT status, error_message, lease_owner FROM training_runs WHERE id = $1",
            uuid.UUID(body["training_run_id"]),
        )
        job = await conn.fetchval(
            "SELECT status FROM jobs WHERE id = $1", uuid.UUID(body["job_id"])
        )
    finally:
        await conn.close()
    assert row["status"] == "generating_failed"
    assert "the service shut down" in row["error_message"]
    assert row["lease_owner"] is None
    assert job == "failed"


async def test_idle_supervisors_stop(api_factory: Any, settings: Any, user_id: uuid.UUID) -> None:
    quick = attrs.evolve(settings, supervisor=attrs.evolve(settings.supervisor, idle_s=0.05))
    api: Api = await api_factory(quick, generator=ControlledGenerator())
    await api.ingest(user_id, 2)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    await api.wait_status(user_id, body["training_run_id"], "generated")

    async def supervised() -> list[str]:
        return [s["user_id"] for s in (await api.debug())["supervisors"]]

    await poll(supervised, lambda users: users == [], lambda users: f"still supervised: {users}")
    # and a new command simply makes a new one
    code, _ = await api.call(
        "DELETE", f"/deep-memory/runs/{body['training_run_id']}", params={"user_id": str(user_id)}
    )
    assert code == 400


async def test_a_run_whose_work_died_unrecorded_is_not_kept_alive(
    api_factory: Any, settings: Any, user_id: uuid.UUID
) -> None:
    quick = attrs.evolve(
        settings, lease=attrs.evolve(settings.lease, ttl_s=0.4, heartbeat_s=0.05, sweep_s=0.1)
    )
    api, _, body = await held_run(api_factory, user_id, 4, quick)
    # the work vanishes without a word, as after a bug or a lost database at the wrong moment:
    # its task (named for its run) is cancelled from outside, so nothing records the run's end
    (work,) = [t for t in asyncio.all_tasks() if t.get_name() == f"run:{body['training_run_id']}"]
    work.cancel()
    await api.idle(user_id)
    assert (await api.debug())["working"] == 0

    run = await api.wait_status(user_id, body["training_run_id"], "generating_failed", timeout=10)
    assert "its lease expired" in run["error_message"]


async def test_a_live_run_whose_renewals_were_held_up_is_renewed_by_the_sweep(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    """The database did not answer for longer than a lease (frozen, say): this instance's
    running run missed its renewals, and its lease is in the past. The sweep renews what has
    live work here before it expires anything, so the run goes on; its expired lease would
    still fail it on an instance where it has no work."""
    api, gen, body = await held_run(api_factory, user_id, 5)
    run_id = uuid.UUID(body["training_run_id"])
    async with api.services.db.conn() as conn:
        await conn.raw.execute(
            "UPDATE training_runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            run_id,
        )
    supervisors = api.client.app[BACKEND][SUPERVISORS]
    assert await leases.sweep_once(api.services, supervisors.working_runs) == []
    assert (await api.run(user_id, str(run_id)))["status"] == "generating"
    gen.release()
    await api.wait_status(user_id, str(run_id), "generated")

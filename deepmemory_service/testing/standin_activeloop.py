"""A local stand-in for the Activeloop REST endpoints that deeplake 3.9's VectorStore and
Deep Memory client call, so the `activeloop` trainer runs end to end without the cloud.

deeplake asks the backend for a dataset's storage credentials and then opens whatever
path it is given; this stand-in answers with a local folder per `hub://org/name`, so the
real VectorStore, the real `deep_memory.train` (which writes the queries dataset) and the
real client calls all run. Training jobs are simulated: a job reads the queries dataset
deeplake wrote, checks every relevance id against the corpus `id` tensor, and moves
`pending → training → completed` (or `failed`) over a few status polls.

    python -m deepmemory_service.testing.standin_activeloop --port 7777 --root /tmp/hub
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import attrs
from aiohttp import web

from deepmemory_service.storage import deeplake_compat

JobOutcome = Literal["completed", "failed"]


@attrs.define
class StandinJob:
    id: str
    corpus: str
    queries: str
    organization: str
    polls: int = 0
    status: str = "pending"
    error: str | None = None
    submitted_queries: list[str] = attrs.field(factory=list)
    submitted_relevance: list[list[tuple[str, int]]] = attrs.field(factory=list)


@attrs.define
class ActiveloopStandin:
    """State and knobs. `outcome` decides how the next jobs end; `polls_to_finish` how many
    status calls a job takes; `deepmemory_available` what the feature check answers."""

    root: Path
    token: str
    user: str = "standin-user"
    outcome: JobOutcome = "completed"  # how the next jobs end
    failure_message: str = "Training crashed: out of memory on the training worker"
    polls_to_finish: int = 3
    deepmemory_available: bool = True
    # status calls never answer (a service that accepts connections and then stalls)
    hang_status: bool = False
    recall_with: float = 0.86
    recall_without: float = 0.71
    jobs: dict[str, StandinJob] = attrs.field(factory=dict)
    calls: list[str] = attrs.field(factory=list)

    def local_path(self, org: str, name: str) -> Path:
        return self.root / org / name

    def hub_to_local(self, hub_path: str) -> Path:
        org, name = hub_path.removeprefix("hub://").split("/", 1)
        return self.local_path(org, name)


STANDIN = web.AppKey("activeloop_standin", ActiveloopStandin)


def _error(status: int, description: str) -> web.Response:
    # deeplake's check_response_status reads `description`
    return web.json_response({"description": description}, status=status)


@web.middleware
async def _record_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STANDIN]
    state.calls.append(f"{request.method} {request.path}")
    if request.headers.get("Authorization", "") != f"Bearer {state.token}":
        return _error(401, "invalid token")
    response: web.StreamResponse = await handler(request)
    return response


async def _profile(request: web.Request) -> web.Response:
    state = request.app[STANDIN]
    return web.json_response(
        {"_id": state.user, "name": state.user, "organizations": [state.user, "standin-org"]}
    )


async def _creds(request: web.Request) -> web.Response:
    state = request.app[STANDIN]
    path = state.local_path(request.match_info["org"], request.match_info["ds"])
    # empty creds: deeplake opens `path` with its local storage provider
    return web.json_response({"path": str(path), "creds": {}, "mode": "w", "repository": None})


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({})


async def _feature(request: web.Request) -> web.Response:
    return web.json_response({"available": request.app[STANDIN].deepmemory_available})


def _read_submission(
    corpus: Path, queries: Path
) -> tuple[list[str], list[list[tuple[str, int]]], set[str]]:
    deeplake = deeplake_compat.load()
    qds = deeplake.load(str(queries), read_only=True, verbose=False)
    texts = [str(t) for t in qds.text.data()["value"]]
    relevance = [
        [(str(doc), int(score)) for doc, score in m["relevance"]]
        for m in qds.metadata.data()["value"]
    ]
    cds = deeplake.load(str(corpus), read_only=True, verbose=False)
    ids = {str(i) for i in cds.id.data()["value"]}
    return texts, relevance, ids


async def _train(request: web.Request) -> web.Response:
    state = request.app[STANDIN]
    body = await request.json()
    corpus, queries = body.get("corpus_dataset"), body.get("query_dataset")
    if not (isinstance(corpus, str) and isinstance(queries, str)):
        return _error(400, "corpus_dataset and query_dataset are required")
    loop = asyncio.get_running_loop()
    try:
        texts, relevance, ids = await loop.run_in_executor(
            None, _read_submission, state.hub_to_local(corpus), state.hub_to_local(queries)
        )
    except Exception as exc:
        return _error(400, f"cannot read the training datasets: {exc}")
    unknown = {doc for rel in relevance for doc, _ in rel} - ids
    if unknown:
        return _error(400, f"{len(unknown)} relevance ids are not in the corpus")
    job = StandinJob(
        id=uuid.uuid4().hex[:24],
        corpus=corpus,
        queries=queries,
        organization=corpus.removeprefix("hub://").split("/")[0],
        submitted_queries=texts,
        submitted_relevance=relevance,
    )
    state.jobs[job.id] = job
    return web.json_response({"job_id": job.id})


def _status_body(state: ActiveloopStandin, job: StandinJob) -> dict[str, Any]:
    progress: dict[str, Any] = {"eta": max(0, state.polls_to_finish - job.polls) * 10.0}
    if job.status == "completed":
        gain = (state.recall_with - state.recall_without) * 100
        progress["best_recall@10"] = f"{state.recall_with * 100:.2f}% (+{gain:.2f}%)"
    if job.status == "failed":
        progress["error"] = job.error
    return {
        "id": job.id,
        "dataset_id": job.corpus.removeprefix("hub://"),
        "organization_id": job.organization,
        "status": job.status,
        "progress": progress,
        "updated_at": time.time(),
    }


async def _status(request: web.Request) -> web.Response:
    state = request.app[STANDIN]
    job = state.jobs.get(request.match_info["job_id"])
    if state.hang_status:
        await asyncio.sleep(3600)
    if job is None:
        return _error(404, "job not found")
    job.polls += 1
    if job.status not in ("completed", "failed"):
        if job.polls >= state.polls_to_finish:
            job.status = state.outcome
            job.error = state.failure_message if state.outcome == "failed" else None
        else:
            job.status = "training"
    return web.json_response(_status_body(state, job))


async def _fallback(request: web.Request) -> web.Response:
    return _error(404, f"the stand-in does not serve {request.method} {request.path}")


def make_app(state: ActiveloopStandin) -> web.Application:
    app = web.Application(middlewares=[_record_and_auth])
    app[STANDIN] = state
    app.router.add_get("/api/user/profile", _profile)
    app.router.add_get("/api/org/{org}/ds/{ds}/creds", _creds)
    app.router.add_post("/api/dataset/create", _ok)
    app.router.add_post("/api/event", _ok)
    app.router.add_get("/api/organizations/{org}/features/deepmemory", _feature)
    app.router.add_post("/api/deepmemory/v1/train", _train)
    app.router.add_get("/api/deepmemory/v1/jobs/{job_id}/status", _status)
    app.router.add_route("*", "/{tail:.*}", _fallback)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7777)
    parser.add_argument("--root", type=Path, required=True, help="folder for hub:// datasets")
    parser.add_argument("--token", default="standin-token")
    parser.add_argument("--outcome", choices=["completed", "failed"], default="completed")
    args = parser.parse_args()
    state = ActiveloopStandin(root=args.root, token=args.token, outcome=args.outcome)
    web.run_app(make_app(state), host=args.host, port=args.port)


if __name__ == "__main__":
    main()

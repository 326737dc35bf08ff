"""Run by scripts/wheel_smoke with the fresh venv's Python, in a folder outside the checkout:
the installed `deepmemory-service` migrates, serves, streams one run to its end and stops.

Standard library only: what it checks is the installed package, not a client library.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent / "deepmemory-service"
TOKEN = "wheel-smoke-token"  # guards a throwaway loopback server
USER = str(uuid.uuid4())
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310  # a loopback http URL of our own
        f"{base}/v1/api{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_healthy(base: str, server: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve exited with {server.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{base}/v1/api/healthz", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"/v1/api/healthz did not answer within {within:g} s")


def stream_to_end(base: str, job_id: str) -> list[str]:
    """The job's SSE event names, read until the server ends the stream."""
    request = urllib.request.Request(  # noqa: S310
        f"{base}/v1/api/events/stream/{job_id}?user_id={USER}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    events = []
    with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310
        assert resp.headers["Content-Type"].startswith("text/event-stream"), resp.headers
        for raw in resp:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                events.append(line.partition(":")[2].strip())
    return events


def main() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPMEMORY_")}
    env |= {
        "DEEPMEMORY_DATA_DIR": os.environ["DEEPMEMORY_DATA_DIR"],
        "DEEPMEMORY_SERVICE_TOKEN": TOKEN,
        "DEEPMEMORY_LOG_FORMAT": "json",
    }

    migrated = subprocess.run(
        [BIN, "migrate"], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    say(f"migrate: {migrated.stdout.strip()}")

    log = Path("serve.log").open("wb")  # noqa: SIM115  # open for the server's whole life
    server = subprocess.Popen(
        [BIN, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_healthy(base, server, within=120)
        say("serve: /v1/api/healthz answers")

        text = " ".join(f"Sentence {i} says something about topic {i % 7}." for i in range(200))
        status, body = call(
            base, "POST", "/documents", {"user_id": USER, "documents": [{"text": text}]}
        )
        assert status == 201, (status, body)
        status, body = call(base, "POST", "/deep-memory/generate", {"user_id": USER})
        assert status == 202, (status, body)
        events = stream_to_end(base, body["job_id"])
        assert events[-1:] == ["done"], events
        say(f"a run of {body['training_run_id']} streamed to its end ({len(events)} events)")
    except BaseException:
        server.kill()
        server.wait()
        log.close()
        sys.stderr.write(Path("serve.log").read_text(errors="replace")[-5000:])
        raise

    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=60)
    log.close()
    assert code == 0, f"serve exited with {code} on SIGTERM"
    pid_file = Path(os.environ["DEEPMEMORY_DATA_DIR"]) / "postgres" / "postmaster.pid"
    assert not pid_file.exists(), "the embedded PostgreSQL was left running"
    say("serve stopped cleanly, and the embedded PostgreSQL with it")


if __name__ == "__main__":
    main()

"""A local S3-compatible server for the tests and benchmarks: moto in server mode, in a child
process on a free loopback port.

    python -m deepmemory_service.testing.object_store   # prints "PORT <n>" once it listens

`ObjectStoreServer` starts it, reads the port, makes buckets, and `pause()`s (SIGSTOP) and
`resume()`s (SIGCONT) it: a paused server still completes TCP connects into its listen
backlog but answers nothing, which is what an object store that has become unreachable
looks like to a client (each request waits for its read timeout).

Why a process of its own: moto handles each request in pure Python (about 4 ms of CPU), so
in the process under test it would compete for that process's GIL, and SIGSTOP must freeze
the server only. It keeps every object in its own memory: stopping it loses the buckets.
The child reads its stdin and exits at EOF, so it never outlives a parent that died.

moto is in the `test` extra only: it is imported in the child, never by this module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from typing import Any

import attrs

# any pair: moto does not check signatures unless told to
ACCESS_KEY_ID = "testing-key-id"
SECRET_ACCESS_KEY = "testing-secret"  # noqa: S105  # a throwaway key of a loopback stand-in
REGION = "us-east-1"


def _serve() -> None:
    import logging

    # werkzeug logs every request to stderr otherwise
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _host, port = server.get_host_and_port()
    print(f"PORT {port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        sys.stdin.read()  # EOF: the parent is gone
    finally:
        os._exit(0)


@attrs.define
class ObjectStoreServer:
    """`with ObjectStoreServer() as s3: s3.endpoint` -- moto on a free loopback port."""

    _proc: subprocess.Popen[str] | None = attrs.field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = attrs.field(default=None, init=False)
    port: int = attrs.field(default=0, init=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the server is not running"
        return self._proc.pid

    def environment(self) -> dict[str, str]:
        """What a client process needs to reach it through the AWS SDK's own settings."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            # off EC2, the credential chain's last step would ask 169.254.169.254 and wait
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> ObjectStoreServer:
        # objects over ~5 MiB go to temporary files: the server's own, removed with it
        self._tmp = tempfile.TemporaryDirectory(prefix="dm-s3-")
        self._proc = subprocess.Popen(  # noqa: S603  # this interpreter, this module
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "TMPDIR": self._tmp.name},
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # until it listens, or dies
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the S3 stand-in (moto) did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def client(self) -> Any:
        """A boto3 client of the server, with the stand-in's keys."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )

    def bucket(self, prefix: str = "t") -> str:
        """A new empty bucket; its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in `bucket` under `prefix`."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [o["Key"] for page in pages for o in page.get("Contents", ())]

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process does not act on SIGTERM
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ObjectStoreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    _serve()

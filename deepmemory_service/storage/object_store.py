"""The bucket of s3:// vector stores (`s3://bucket/prefix/{user_id}`), which every instance
reads and writes: one boto3 client per process, the datasets deeplake opens through it,
small objects beside a store, what a failure means, and the start-up check.

Credentials, region and endpoint come from the AWS SDK's own places (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and ~/.aws; AWS_DEFAULT_REGION; AWS_ENDPOINT_URL for an
S3-compatible service that is not AWS): none pass through the service's settings or logs.
What no AWS variable sets, the bounds of a request, comes from the `[store]` settings:
deeplake's own defaults wait 300 s per attempt and retry for many minutes, so an
unreachable bucket would hold a request for that long.

deeplake is opened on the bucket through `ObjectStoreProvider`, its S3 provider on this
process's client: a new provider otherwise builds two or three boto3 sessions (measured:
466 ms of CPU per load, against 50 ms), resolves credentials again, and retries a failed
request on its own loop (3 to 5 times) on top of botocore's. Through it, a failure keeps
its cause: `deeplake.exists` answers False and `deeplake.load` "does not exist" when the
bucket cannot be reached, so neither is called here.

A failure is one of three things (`failure`): the store cannot be reached (a timeout, a
refused connection, a 5xx or SlowDown, an operation without an answer for too long: 503
with Retry-After, never a rebuild), the store refuses this instance (credentials missing,
denied, expired, or no such bucket: a configuration problem, 503 and an error in the log),
or the store answered and the data is not what the catalog says (`StoreDamaged`: the
caller rebuilds from the catalog). A failure without a network cause counts as damage only
once a check request to the same store got an answer.

Every call runs in a daemon thread (`run`). One that has had no answer from the bucket for
`timeout_s` is answered 503 (one that gets answers goes on, however long a large store
takes), and the thread stops at its next request to the bucket, as it does when its caller
is cancelled.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
import structlog

from deepmemory_service.platform import daemon_threads
from deepmemory_service.platform.config import ConfigError, StoreSettings
from deepmemory_service.storage import deeplake_compat
from deepmemory_service.storage.dataset import StoreDamaged, StoreError

log = structlog.get_logger(__name__)

T = TypeVar("T")

UNREACHABLE = "This user's vector store cannot be reached; retry shortly"
REFUSED = "The vector store refused this service's access; retry later"
# the client retries after this; the bounds of one attempt are a few seconds
RETRY_AFTER_S = 5
# the memory deeplake may keep of one dataset while it reads or writes (the process's
# own; nothing is cached on disk)
DATASET_CACHE_BYTES = 256 * 2**20
# what a failure's check asks for: any answer, "not found" included, says the store answers
PROBE = "newest.json"

# error codes an S3-compatible service answers when it refuses the caller
_REFUSED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "NoSuchBucket",
        "403",
    }
)
# error codes of a service that is there but cannot answer now
_BUSY_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
)
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class StoreUnreachable(StoreError):
    """The object store did not answer in time (or answered that it cannot now)."""

    status = 503
    headers = MappingProxyType({"Retry-After": str(RETRY_AFTER_S)})


class StoreRefused(StoreError):
    """The object store refused this instance: its credentials, or a bucket that is not
    there. Logged as a configuration error; the client is told to come back later."""

    status = 503
    # someone has to mend a configuration: not a matter of seconds
    headers = MappingProxyType({"Retry-After": "60"})


class DeadlinePassed(Exception):
    """Raised inside botocore before a request is sent once its operation has had no answer
    for too long or its caller gave up (botocore retries no exception of a `before-send`
    handler)."""


def split(url: str) -> tuple[str, str]:
    """`s3://bucket/some/key` → ("bucket", "some/key")."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


@attrs.define
class _Watch:
    """One operation's contact with the bucket: when it last got an answer (any HTTP
    response, "not found" included), and whether its caller gave up on it."""

    limit_s: float
    last: float = attrs.field(factory=time.monotonic)
    stopped: bool = False

    def stalled(self) -> bool:
        return time.monotonic() - self.last > self.limit_s


# the operation the current thread runs for `ObjectStore.run`
_watching = threading.local()


def _before_send(**_kwargs: Any) -> None:
    watch: _Watch | None = getattr(_watching, "watch", None)
    if watch is not None and (watch.stopped or watch.stalled()):
        raise DeadlinePassed("the bucket has not answered in time, or the caller gave up")


def _answered(**_kwargs: Any) -> None:
    watch: _Watch | None = getattr(_watching, "watch", None)
    if watch is not None:
        watch.last = time.monotonic()


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    at: BaseException | None = exc
    while at is not None and len(seen) < 16 and at not in seen:
        seen.append(at)
        at = at.__cause__ or at.__context__
    return seen


def _code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code, status


def classify(exc: BaseException) -> StoreUnreachable | StoreRefused | None:
    """What `exc` says about reaching the object store, from its causes (deeplake wraps
    botocore's errors, and wraps its own around those): None when none of them is about
    reaching it."""
    import botocore.exceptions as bx

    for cause in _causes(exc):
        if isinstance(cause, StoreUnreachable | StoreRefused):
            return cause
        if isinstance(
            cause,
            DeadlinePassed
            | bx.ConnectionError  # refused, connect timeouts, connection closed
            | bx.ReadTimeoutError
            | bx.IncompleteReadError
            | bx.ResponseStreamingError
            | TimeoutError
            | ConnectionError,
        ):
            return StoreUnreachable(UNREACHABLE)
        if isinstance(
            cause,
            bx.NoCredentialsError
            | bx.PartialCredentialsError
            | bx.CredentialRetrievalError
            | bx.ProfileNotFound,
        ):
            return StoreRefused(REFUSED)
        if isinstance(cause, bx.ClientError):
            code, status = _code(cause)
            if code in _REFUSED_CODES:
                return StoreRefused(REFUSED)
            if code in _BUSY_CODES or status >= 500:
                return StoreUnreachable(UNREACHABLE)
    return None


def _root_cause(exc: BaseException) -> str:
    last = _causes(exc)[-1]
    return f"{type(last).__name__}: {last}"[:300]


@functools.cache
def _version_info_unlocked() -> None:
    """deeplake guards each commit's rewrite of `version_control_info.json` with a lock
    object of its own: a write, 0.5 s of sleep, a read (per commit), and after a crash a
    lock that makes the next commit fail for 10 s. The user's lock in PostgreSQL already
    lets one writer at a time into a store, so datasets opened here skip it."""
    deeplake_compat.load()
    import deeplake.util.version_control as version_control

    base: Any = version_control.Lock

    class VersionInfoLock(base):  # type: ignore[misc]  # deeplake is untyped
        def acquire(self, timeout: int | None = 0) -> None:
            if getattr(self.storage, "locks_elsewhere", False):
                self.acquired = True
                return
            super().acquire(timeout)

        def release(self) -> None:
            if getattr(self.storage, "locks_elsewhere", False):
                self.acquired = False
                return
            super().release()

    version_control.Lock = VersionInfoLock


# PUTs of one process in flight at once (a dataset's flush writes each file of a version:
# ~80 objects per upload, one after another in deeplake)
WRITERS = 16
_writers = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="object-store-put")


def _provider_class(client: Any) -> type[Any]:
    """deeplake's S3 provider on `client`: no credentials of its own, no client or session
    of its own, no retry loop of its own (each request is bounded by the client), and its
    writes made side by side.

    deeplake writes a version's files one at a time; here each write is handed to a pool
    and `flush()` waits for all of them (and raises the first failure), so an upload costs
    a few round trips to the bucket instead of ~80. A file being written is read from
    memory, and a second write of the same file waits for the first, so the last one wins.
    A write is never published before `flush()`: `BranchWriter.finish` flushes before it
    names the commit."""
    deeplake_compat.load()
    from deeplake.core.storage.s3 import S3Provider

    class ObjectStoreProvider(S3Provider):  # type: ignore[misc]  # deeplake is untyped
        locks_elsewhere = True

        def _locate_and_load_creds(self) -> None:
            return None  # the client's session resolves them (and refreshes them)

        def _set_s3_client_and_resource(self) -> None:
            self.client = client
            self.resource = None  # only deeplake's clear() uses it; nothing here calls that
            # (called again after a failed request: what is being written stays)
            if not hasattr(self, "_writing"):
                self._writing: dict[str, tuple[bytes, Future[None]]] = {}
                self._fresh: list[str] = []
                self._written: set[str] = set()

        def absent_under(self, prefix: str) -> None:
            """Nothing under `prefix` is in the bucket but what this provider writes (the
            folder of a commit or a generation just made, named at random): reads of
            anything else there are answered "absent" without asking the bucket. deeplake
            asks for ~20 optional files of a new commit one by one, each a 404."""
            self._fresh.append(prefix)

        def _is_fresh(self, path: str) -> bool:
            return any(path.startswith(prefix) for prefix in self._fresh)

        @property
        def num_tries(self) -> int:
            return 0

        def _get_object_size(self, path: str) -> int:
            size: int = client.head_object(Bucket=self.bucket, Key=path)["ContentLength"]
            return size

        def __setitem__(self, path: str, content: Any) -> None:
            self.check_readonly()
            data = bytes(memoryview(content))
            self._wait(path)
            if self._is_fresh(path):
                self._written.add(path)
            watch = getattr(_watching, "watch", None)
            put = super().__setitem__

            def write() -> None:
                _watching.watch = watch
                try:
                    put(path, data)
                finally:
                    _watching.watch = None

            self._writing[path] = (data, _writers.submit(write))

        def get_bytes(
            self, path: str, start_byte: int | None = None, end_byte: int | None = None
        ) -> bytes:
            writing = self._writing.get(path)
            if writing is not None and not writing[1].done():
                return writing[0][start_byte:end_byte]
            if path not in self._written and self._is_fresh(path):
                raise KeyError(path)
            self._wait(path)
            data: bytes = super().get_bytes(path, start_byte, end_byte)
            return data

        def __delitem__(self, path: str) -> None:
            self._wait(path)
            self._written.discard(path)
            super().__delitem__(path)

        def _wait(self, path: str) -> None:
            writing = self._writing.pop(path, None)
            if writing is not None:
                writing[1].result()

        def flush(self) -> None:
            writing, self._writing = self._writing, {}
            failed = [f.exception() for _, f in writing.values()]
            first = next((exc for exc in failed if exc is not None), None)
            if first is not None:
                raise first
            super().flush()

    return ObjectStoreProvider


@attrs.define
class ObjectStore:
    """The process's access to the bucket of its s3:// stores."""

    settings: StoreSettings
    _client: Any = attrs.field(default=None, init=False, repr=False)
    _provider: type[Any] | None = attrs.field(default=None, init=False, repr=False)
    _made: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)

    def _config(self) -> Any:
        from botocore.config import Config

        return Config(
            connect_timeout=self.settings.connect_timeout_s,
            read_timeout=self.settings.read_timeout_s,
            # `total_max_attempts` counts the first attempt (`max_attempts` does not)
            retries={"total_max_attempts": self.settings.attempts, "mode": "standard"},
            max_pool_connections=32,
        )

    @property
    def client(self) -> Any:
        """One boto3 client (thread-safe) for every store and thread of the process."""
        with self._made:
            if self._client is None:
                import boto3

                client = boto3.session.Session().client("s3", config=self._config())
                client.meta.events.register("before-send.s3", _before_send)
                client.meta.events.register("after-call.s3", _answered)
                self._client = client
            return self._client

    def _provider_for(self, url: str) -> Any:
        with self._made:
            provider = self._provider
        if provider is None:
            _version_info_unlocked()
            provider = _provider_class(self.client)
            with self._made:
                self._provider = self._provider or provider
                provider = self._provider
        return provider(url)

    # deeplake datasets (blocking)

    def dataset(self, url: str, *, read_only: bool, address: str | None = None) -> Any:
        """The dataset at `url`, at commit or branch `address` (its HEAD when None);
        `StoreDamaged` when there is none."""
        from deeplake.core.dataset import Dataset
        from deeplake.util.cache_chain import generate_chain

        storage = generate_chain(self._provider_for(url), DATASET_CACHE_BYTES, 0, url)
        try:
            # read through the cache, where opening it finds it again
            storage["dataset_meta.json"]
        except KeyError:
            raise StoreDamaged(f"no dataset at {url}") from None
        if read_only:
            storage.enable_readonly()
        return Dataset(
            storage=storage,
            path=url,
            read_only=read_only,
            address=address,
            verbose=False,
            lock_enabled=False,
        )

    def new_dataset(self, url: str) -> Any:
        """A new, empty dataset at `url`, where there is none (a name never used before)."""
        from deeplake.core.dataset import Dataset
        from deeplake.util.cache_chain import generate_chain

        provider = self._provider_for(url)
        provider.absent_under("")
        storage = generate_chain(provider, DATASET_CACHE_BYTES, 0, url)
        return Dataset(
            storage=storage, path=url, read_only=False, verbose=False, lock_enabled=False
        )

    # objects (blocking)

    def exists(self, url: str) -> bool:
        """Whether the object at `url` is there; `StoreUnreachable`/`StoreRefused` when the
        store does not say."""
        bucket, key = split(url)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _code(exc)[0] in _MISSING_CODES:
                return False
            raise self._unusable(exc, "checking the store") from exc
        return True

    def read(self, url: str) -> tuple[str, bytes] | None:
        """The object at `url` and its ETag, or None when there is none."""
        bucket, key = split(url)
        try:
            got = self.client.get_object(Bucket=bucket, Key=key)
            return str(got["ETag"]), got["Body"].read()
        except Exception as exc:
            if _code(exc)[0] in _MISSING_CODES:
                return None
            raise self._unusable(exc, f"reading {key}") from exc

    def stamp(self, url: str) -> str | None:
        """The ETag of the object at `url` (a new one for each write), or None."""
        bucket, key = split(url)
        try:
            return str(self.client.head_object(Bucket=bucket, Key=key)["ETag"])
        except Exception as exc:
            if _code(exc)[0] in _MISSING_CODES:
                return None
            raise self._unusable(exc, f"checking {key}") from exc

    def write(self, url: str, data: bytes) -> None:
        """The object at `url`, replaced whole (a reader gets the old one or the new one)."""
        bucket, key = split(url)
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:
            raise self._unusable(exc, f"writing {key}") from exc

    def folders(self, url: str) -> list[str]:
        """The names of the "folders" (common prefixes) directly under `url`."""
        bucket, key = split(url)
        names = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{key}/", Delimiter="/"
            )
            for page in pages:
                for prefix in page.get("CommonPrefixes", ()):
                    names.append(prefix["Prefix"].rstrip("/").rsplit("/", 1)[-1])
        except Exception as exc:
            raise self._unusable(exc, f"listing {key}/") from exc
        return names

    def delete_under(self, url: str) -> int:
        """Deletes every object under `url`/; how many."""
        bucket, key = split(url)
        deleted = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{key}/"
            )
            for page in pages:
                batch = [{"Key": o["Key"]} for o in page.get("Contents", ())]
                if batch:
                    self.client.delete_objects(
                        Bucket=bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                    deleted += len(batch)
        except Exception as exc:
            raise self._unusable(exc, f"deleting {key}/") from exc
        return deleted

    # failures

    def _unusable(self, exc: BaseException, doing: str) -> StoreError:
        found = classify(exc) or StoreUnreachable(UNREACHABLE)
        self._tell(found, doing, exc)
        return found

    def _tell(self, found: StoreError, doing: str, exc: BaseException) -> None:
        if isinstance(found, StoreRefused):
            log.error(
                "the object store refused this instance: check its credentials "
                "(AWS_ACCESS_KEY_ID/AWS_PROFILE), their permissions, and the bucket of "
                "DEEPMEMORY_STORE_PATH",
                doing=doing,
                error=_root_cause(exc),
            )
        else:
            log.warning("object store unreachable", doing=doing, error=_root_cause(exc))

    def failure(self, exc: BaseException, doing: str, probe: str | None) -> BaseException:
        """What to raise for `exc`, raised by an operation on a store: an unreachable store
        is never damage, and a failure with no network cause is damage only if a check of
        the object `probe` in that store (there or not) got an answer."""
        if isinstance(exc, StoreError) and not isinstance(exc, StoreUnreachable | StoreRefused):
            return exc  # the service's own verdict (an embedder mismatch, ...)
        found = classify(exc)
        if found is not None:
            self._tell(found, doing, exc)
            return found
        if probe is not None:
            try:
                self.exists(probe)
            except StoreError as unusable:
                return unusable
        if isinstance(exc, StoreDamaged):
            return exc
        return StoreDamaged(f"{doing}: {exc!r}")

    async def run(self, where: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, an operation on the store at `where`, in a daemon thread; its
        failure as `failure` names it. An operation that has had no answer from the bucket
        for `timeout_s` is `StoreUnreachable` (one that is getting answers goes on, however
        long a large store takes); past that, or when the caller is cancelled, the thread
        stops at its next request to the bucket."""
        watch = _Watch(self.settings.timeout_s)

        def enter() -> None:
            _watching.watch = watch

        def work() -> T:
            try:
                return fn(*args)
            except Exception as exc:
                doing = getattr(fn, "__name__", "an operation")
                failed = self.failure(exc, doing, f"{where}/{PROBE}")
                if failed is exc:
                    raise
                raise failed from exc
            finally:
                _watching.watch = None

        name = f"object-store:{getattr(fn, '__name__', 'call')}"
        future = daemon_threads.start(work, name=name, enter=enter)
        try:
            while True:
                wait_s = max(0.05, watch.last + watch.limit_s - time.monotonic())
                done, _ = await asyncio.wait({future}, timeout=wait_s)
                if done:
                    return future.result()
                if watch.stalled():
                    log.warning("object store operation stalled", doing=name, limit_s=watch.limit_s)
                    raise StoreUnreachable(UNREACHABLE)
        finally:
            watch.stopped = True
            if not future.done():
                future.cancel()  # the caller is gone: what the thread ends with goes nowhere

    # start-up

    def check(self, bucket: str) -> str:
        """Refuses (ConfigError, one line naming what to set) a process that could not use
        the bucket at all: no credentials anywhere, a profile that is not there, or a
        bucket that refuses them or does not exist. A bucket that does not answer now is
        only logged: it may answer later, and the instance serves what needs no store.
        Returns how the credentials were found, for the log (never the keys)."""
        import boto3
        import botocore.exceptions as bx

        try:
            credentials = boto3.session.Session().get_credentials()
        except bx.ProfileNotFound as exc:
            raise ConfigError(
                f"DEEPMEMORY_STORE_PATH is an s3:// store, but AWS_PROFILE names no profile: {exc}"
            ) from None
        except bx.BotoCoreError as exc:
            raise ConfigError(
                f"DEEPMEMORY_STORE_PATH is an s3:// store, but its AWS credentials are "
                f"incomplete: {exc}"
            ) from None
        if credentials is None:
            raise ConfigError(
                "DEEPMEMORY_STORE_PATH is an s3:// store, but no AWS credentials were found: "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            )
        method = str(credentials.method)
        try:
            self.client.head_bucket(Bucket=bucket)
        except Exception as exc:
            found = classify(exc)
            code, status = _code(exc)
            if isinstance(found, StoreRefused) or status in (403, 404):
                what = (
                    "does not exist"
                    if status == 404 or code == "NoSuchBucket"
                    else ("refused this instance's credentials")
                )
                raise ConfigError(
                    f"DEEPMEMORY_STORE_PATH: the bucket {bucket} {what} "
                    f"({_root_cause(exc)}; credentials from {method})"
                ) from None
            log.warning(
                "object store not reachable at start-up; serving on, and trying it per request",
                bucket=bucket,
                error=_root_cause(exc),
            )
        return method

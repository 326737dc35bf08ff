"""Configuration: the packaged `default.toml` (or the file named by `DEEPMEMORY_CONFIG`),
overridden by `DEEPMEMORY_*` environment variables.

A top-level key `k` is overridden by `DEEPMEMORY_K`; key `k` of section `[s]` by
`DEEPMEMORY_S_K`. Values are structured into frozen attrs classes with cattrs, so a bad
value stops start-up with a message that names the setting.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import platformdirs
from attrs import frozen

from deepmemory_service.platform.validation import problems

ENV_PREFIX = "DEEPMEMORY_"
# shipped inside the package, as `sql/` is: an installed wheel has it, not only a checkout
# (the checkout's `config/default.toml` is a link to it, for operators to copy)
DEFAULT_CONFIG: Traversable = resources.files("deepmemory_service").joinpath("default.toml")

GeneratorName = Literal["offline", "llm"]
EmbedderName = Literal["hashing", "minilm", "openai"]
TrainerName = Literal["local", "activeloop"]
Role = Literal["all", "backend", "gateway"]
# where a user's vector store lives: a folder on this machine, Activeloop's cloud (hub://),
# or a bucket every instance reaches (s3://)
StoreKind = Literal["local", "hub", "s3"]

# what deeplake itself would take for a URL (it takes any other for a local path)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_KINDS: dict[str, StoreKind] = {"hub": "hub", "s3": "s3"}
# schemes deeplake knows for storage this service does not keep stores in (yet)
_UNSUPPORTED = frozenset({"gcs", "gs", "az"})


def is_cloud_path(path: str) -> bool:
    """The spec's definition: a vector store path that starts with hub:// is in the cloud."""
    return path.startswith("hub://")


def store_kind(path: str) -> StoreKind:
    """Which kind of storage a store path names; `ValueError` (the reason) for a URL of any
    other scheme, which must never become a local folder named after it."""
    found = _SCHEME.match(path)
    if found is None:
        return "local"
    scheme = found.group(1)
    if scheme in _KINDS:
        return _KINDS[scheme]
    if scheme in _UNSUPPORTED:
        raise ValueError(
            f"{scheme}:// stores are not supported (a local path, s3://bucket/prefix/{{user_id}} "
            "or hub://org/name_{user_id})"
        )
    raise ValueError(
        f"unknown scheme {scheme}:// (a local path, s3://bucket/prefix/{{user_id}} or "
        "hub://org/name_{user_id}; schemes are lower case)"
    )


class ConfigError(Exception):
    """A setting is missing or has a bad value; the message names it."""


@frozen
class DatabaseSettings:
    url: str
    pool_min: int
    pool_max: int
    # a request's waits (a run's work waits an outage out): for a free connection, for each
    # statement (and for a read with its retries in all), for the user's lock
    acquire_timeout_s: float
    statement_timeout_s: float
    lock_wait_s: float


@frozen
class HttpSettings:
    host: str
    port: int
    max_body_bytes: int
    role: Role
    backend_url: str
    allowed_origins: tuple[str, ...]
    sse_send_timeout_s: float
    # the gateway's bounds per user: event streams open, other calls in flight
    sse_streams_per_user: int
    calls_per_user: int
    # addresses or networks of the proxies whose X-Forwarded-*/Forwarded headers count
    trusted_proxies: tuple[str, ...]


@frozen
class StoreSettings:
    path: str
    chunk_chars: int
    chunk_overlap: int
    # an s3:// store's requests (no AWS variable sets these; deeplake's defaults wait 300 s
    # per attempt): bounds per attempt, attempts per request, and how long an operation may
    # go without an answer from the bucket
    connect_timeout_s: float
    read_timeout_s: float
    attempts: int
    timeout_s: float


@frozen
class UploadSettings:
    max_documents: int
    per_user: int
    # the largest file POST /documents/file takes (its body: the file's bytes)
    max_file_bytes: int


@frozen
class SearchSettings:
    # users' search data (ids and vectors of the version searched) kept in memory, in all
    memory_budget_mb: int
    # stores of more chunks keep their vectors as float16, scanned with SIMD
    compact_above: int
    # threads of one compact scan
    threads: int

    @property
    def memory_budget_bytes(self) -> int:
        return self.memory_budget_mb * 2**20


@frozen
class GenerationSettings:
    questions_per_chunk: int
    max_questions_per_chunk: int
    batch_size: int
    progress_hz: float


@frozen
class SupervisorSettings:
    idle_s: float
    inbox_size: int
    subscriber_queue: int


@frozen
class LeaseSettings:
    ttl_s: float
    heartbeat_s: float
    sweep_s: float


@frozen
class LLMSettings:
    base_url: str
    model: str
    api_key: str = attrs.field(repr=False)
    timeout_s: float
    # calls in flight to the server from this instance; 0: as many as it says it works on at
    # once (a llama-server's slots), else no limit
    max_in_flight: int
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    rpm: float
    tpm: float
    price_input_per_mtok: float
    price_output_per_mtok: float


@frozen
class TrainSettings:
    timeout_s: float
    poll_s: float
    holdout: float
    epochs: int
    blas_threads: int
    seed: int
    members: int


@frozen
class QuestionSettings:
    """The checks of an LLM's questions (`llm/question_checks.py`) and the asking again."""

    checks: bool
    # times a chunk left short of questions is asked again
    reasks: int
    # questions asked for beyond what a chunk lacks, so that one turned down leaves it short
    # less often (those that pass beyond the count are not kept)
    spare: int
    # times a chunk is asked again, on average, before a run of the user's has shown it
    # (the estimate's allowance)
    expected_reasks: float
    # the round trip: a question is kept when the embedder ranks its chunk in the top k of
    # the user's chunks (0: no round trip)
    round_trip_k: int


@frozen
class ActiveloopSettings:
    token: str = attrs.field(repr=False)
    endpoint: str


@frozen
class OpenAIEmbeddingSettings:
    base_url: str
    model: str
    api_key: str = attrs.field(repr=False)
    dimension: int
    timeout_s: float


@frozen
class Settings:
    data_dir: str
    concurrency: int
    generator: GeneratorName
    embedder: EmbedderName
    trainer: TrainerName
    service_token: str = attrs.field(repr=False)
    admin_token: str = attrs.field(repr=False)
    metrics_token: str = attrs.field(repr=False)
    secret_key: str = attrs.field(repr=False)
    instance_id: str
    log_level: str
    log_format: Literal["auto", "console", "json"]
    database: DatabaseSettings
    http: HttpSettings
    store: StoreSettings
    uploads: UploadSettings
    search: SearchSettings
    generation: GenerationSettings
    questions: QuestionSettings
    supervisor: SupervisorSettings
    lease: LeaseSettings
    llm: LLMSettings
    train: TrainSettings
    activeloop: ActiveloopSettings
    openai_embeddings: OpenAIEmbeddingSettings

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def store_path(self, user_id: object) -> str:
        """A user's vector store: the configured template, filled in."""
        return self.store.path.format(data_dir=self.data_dir, user_id=user_id)

    @property
    def is_cloud(self) -> bool:
        return is_cloud_path(self.store.path)

    @property
    def store_kind(self) -> StoreKind:
        """Checked when the settings were loaded."""
        return store_kind(self.store.path)


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def strict_int(value: Any, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None

    def strict_float(value: Any, _: type) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None

    def strict_bool(value: Any, _: type) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"expected true or false, got {value!r}")

    def strict_str(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value

    def origins(value: Any, _: type) -> tuple[str, ...]:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(strict_str(v, str) for v in value)

    conv.register_structure_hook(int, strict_int)
    conv.register_structure_hook(float, strict_float)
    conv.register_structure_hook(bool, strict_bool)
    conv.register_structure_hook(str, strict_str)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], origins)
    return conv


_CONVERTER = _converter()


def env_names() -> dict[str, tuple[str, ...]]:
    """Every environment variable name → its path in the settings tree."""
    names: dict[str, tuple[str, ...]] = {}
    for field in attrs.fields(attrs.resolve_types(Settings)):
        # a section is a field whose type is a settings class of its own
        sub = field.type if isinstance(field.type, type) and attrs.has(field.type) else None
        if sub is None:
            names[ENV_PREFIX + field.name.upper()] = (field.name,)
        else:
            for inner in attrs.fields(sub):
                names[f"{ENV_PREFIX}{field.name.upper()}_{inner.name.upper()}"] = (
                    field.name,
                    inner.name,
                )
    return names


def _setting_name(parts: list[str]) -> str:
    """`["llm", "timeout_s"]` → `DEEPMEMORY_LLM_TIMEOUT_S (llm.timeout_s)`."""
    return f"{ENV_PREFIX}{'_'.join(parts).upper()} ({'.'.join(parts)})"


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML defaults, apply the environment, then `overrides` (dotted keys)."""
    env = os.environ if environ is None else environ
    configured = env.get("DEEPMEMORY_CONFIG")
    source: Path | Traversable = Path(configured) if configured else DEFAULT_CONFIG
    try:
        raw: dict[str, Any] = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {source}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {source} is not valid TOML: {exc}") from exc

    for name, where in env_names().items():
        if name in env:
            _put(raw, where, env[name])
    for dotted, value in (overrides or {}).items():
        _put(raw, tuple(dotted.split(".")), value)

    try:
        settings = _CONVERTER.structure(raw, Settings)
    except cattrs.ClassValidationError as exc:
        messages = [
            f"{_setting_name([p for p in path.split('.') if p])}: {text}"
            for path, text in problems(exc)
        ]
        raise ConfigError("bad configuration: " + "; ".join(messages)) from None
    return _complete(settings)


def _store_problems(store: StoreSettings) -> list[str]:
    try:
        kind = store_kind(store.path)
    except ValueError as exc:
        return [f"DEEPMEMORY_STORE_PATH: {exc}"]
    problems = []
    if kind == "s3":
        bucket, _, key = store.path.removeprefix("s3://").partition("/")
        if not bucket or "{" in bucket or not key.strip("/"):
            problems.append(
                "DEEPMEMORY_STORE_PATH: an s3:// path names a bucket and a prefix with "
                "{user_id} in it: s3://bucket/stores/{user_id}"
            )
        if "{data_dir}" in store.path:
            problems.append(
                "DEEPMEMORY_STORE_PATH: an s3:// path cannot hold {data_dir} (a folder of "
                "this machine)"
            )
    for name in ("connect_timeout_s", "read_timeout_s", "timeout_s"):
        if getattr(store, name) <= 0:
            problems.append(f"DEEPMEMORY_STORE_{name.upper()} must be positive")
    if store.attempts < 1:
        problems.append("DEEPMEMORY_STORE_ATTEMPTS must be at least 1")
    return problems


def _put(raw: dict[str, Any], where: tuple[str, ...], value: Any) -> None:
    node = raw
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = value


def _complete(settings: Settings) -> Settings:
    """Fill in the derived defaults and check what types alone cannot."""
    problems = []
    if settings.concurrency < 1:
        problems.append("DEEPMEMORY_CONCURRENCY must be at least 1")
    if not 1 <= settings.http.port <= 65535:
        problems.append("DEEPMEMORY_HTTP_PORT must be between 1 and 65535")
    gen = settings.generation
    if not 1 <= gen.questions_per_chunk <= gen.max_questions_per_chunk:
        problems.append(
            "DEEPMEMORY_GENERATION_QUESTIONS_PER_CHUNK must be between 1 and "
            f"DEEPMEMORY_GENERATION_MAX_QUESTIONS_PER_CHUNK ({gen.max_questions_per_chunk})"
        )
    for name in ("reasks", "spare", "round_trip_k", "expected_reasks"):
        if getattr(settings.questions, name) < 0:
            problems.append(f"DEEPMEMORY_QUESTIONS_{name.upper()} must not be negative")
    if settings.http.sse_send_timeout_s <= 0:
        problems.append("DEEPMEMORY_HTTP_SSE_SEND_TIMEOUT_S must be positive")
    for entry in settings.http.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            problems.append(
                f"DEEPMEMORY_HTTP_TRUSTED_PROXIES: {entry!r} is not an IP address or network"
            )
    for name in ("sse_streams_per_user", "calls_per_user"):
        if getattr(settings.http, name) < 1:
            problems.append(f"DEEPMEMORY_HTTP_{name.upper()} must be at least 1")
    for name in ("acquire_timeout_s", "statement_timeout_s", "lock_wait_s"):
        if getattr(settings.database, name) <= 0:
            problems.append(f"DEEPMEMORY_DATABASE_{name.upper()} must be positive")
    if not 0.0 < settings.train.holdout < 1.0:
        problems.append("DEEPMEMORY_TRAIN_HOLDOUT must be between 0 and 1")
    if settings.train.seed < 0:
        problems.append("DEEPMEMORY_TRAIN_SEED must not be negative (0: each run's own)")
    if settings.train.members < 1:
        problems.append("DEEPMEMORY_TRAIN_MEMBERS must be at least 1")
    if settings.train.blas_threads < 0:
        problems.append("DEEPMEMORY_TRAIN_BLAS_THREADS must not be negative (0: automatic)")
    if settings.llm.max_retries < 0:
        problems.append("DEEPMEMORY_LLM_MAX_RETRIES must not be negative")
    for name in ("rpm", "tpm", "price_input_per_mtok", "price_output_per_mtok"):
        if getattr(settings.llm, name) < 0:
            problems.append(f"DEEPMEMORY_LLM_{name.upper()} must not be negative")
    if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append("DEEPMEMORY_LOG_LEVEL must be debug, info, warning or error")
    if settings.secret_key and len(settings.secret_key.encode()) < 32:
        # HS256 keys shorter than the hash are guessable (RFC 7518 §3.2)
        problems.append("DEEPMEMORY_SECRET_KEY must be at least 32 bytes long")
    if settings.uploads.max_documents < 1:
        problems.append("DEEPMEMORY_UPLOADS_MAX_DOCUMENTS must be at least 1")
    if settings.uploads.per_user < 1:
        problems.append("DEEPMEMORY_UPLOADS_PER_USER must be at least 1")
    if settings.uploads.max_file_bytes < 1:
        problems.append("DEEPMEMORY_UPLOADS_MAX_FILE_BYTES must be at least 1")
    if settings.search.memory_budget_mb < 0:
        problems.append("DEEPMEMORY_SEARCH_MEMORY_BUDGET_MB must not be negative")
    if settings.search.compact_above < 0:
        problems.append("DEEPMEMORY_SEARCH_COMPACT_ABOVE must not be negative")
    if settings.search.threads < 1:
        problems.append("DEEPMEMORY_SEARCH_THREADS must be at least 1")
    if "{user_id}" not in settings.store.path:
        problems.append("DEEPMEMORY_STORE_PATH must contain {user_id}")
    problems += _store_problems(settings.store)
    if settings.http.role == "gateway" and not settings.http.backend_url:
        problems.append("DEEPMEMORY_HTTP_BACKEND_URL is required with role gateway")
    if problems:
        raise ConfigError("bad configuration: " + "; ".join(problems))

    data_dir = Path(settings.data_dir).expanduser() if settings.data_dir else default_data_dir()
    instance = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
    return attrs.evolve(
        settings,
        data_dir=str(data_dir),
        instance_id=instance,
        secret_key=settings.secret_key or stored_secret_key(data_dir),
    )


# a source checkout (the package beside its pyproject.toml): what scripts/serve uses
CHECKOUT = Path(__file__).resolve().parents[2]
SECRET_KEY_FILE = "secret_key"  # noqa: S105  # a file name, not a secret


def default_data_dir() -> Path:
    """The checkout's `var/` when running from a source checkout, so every command (serve,
    ingest, migrate, token) works on the instance `scripts/serve` runs; else a per-user dir."""
    if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "deepmemory_service").is_dir():
        return CHECKOUT / "var"
    return Path(platformdirs.user_data_dir("deepmemory-service"))


def stored_secret_key(data_dir: Path) -> str:
    """The token key kept in the data dir (`scripts/serve` writes it), or "" when there is
    none: then a process makes a random one that dies with it."""
    path = data_dir / SECRET_KEY_FILE
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token key in {path}: {exc}") from None
    if len(key.encode()) < 32:
        raise ConfigError(
            f"the token key in {path} must be at least 32 bytes long; delete the file to "
            "have scripts/serve make a new one (tokens signed with the old key stop working)"
        )
    return key

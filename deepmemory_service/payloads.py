"""Request bodies and parameters: structured with cattrs, or a 4xx naming the problem."""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar

import attrs
import cattrs
from aiohttp import web
from attrs import frozen
from cattrs.errors import IterableValidationError, IterableValidationNote

from deepmemory_service.errors import BadRequest, InvalidInput
from deepmemory_service.validation import problems

T = TypeVar("T")


@frozen
class GenerateIn:
    user_id: uuid.UUID
    questions_per_chunk: int | None = None
    auto_train: bool = False


@frozen
class ProceedIn:
    training_run_id: uuid.UUID
    user_id: uuid.UUID


@frozen
class TrainIn:
    user_id: uuid.UUID
    training_run_id: uuid.UUID


@frozen
class SettingsIn:
    user_id: uuid.UUID
    enabled: bool


@frozen
class DocumentIn:
    text: str
    title: str | None = None


@frozen
class DocumentsIn:
    user_id: uuid.UUID
    documents: list[DocumentIn]


def clean_text(value: str) -> str:
    """PostgreSQL text holds neither NUL nor unpaired surrogates (JSON allows both)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (an unpaired surrogate)") from None
    return value


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def to_uuid(value: Any, _: type) -> uuid.UUID:
        if not isinstance(value, str):
            raise ValueError(f"must be a UUID string, got {type(value).__name__}")
        try:
            return uuid.UUID(value)
        except ValueError:
            raise ValueError(f"not a valid UUID: {value[:64]!r}") from None

    def to_int(value: Any, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {json.dumps(value)[:64]}")
        return value

    def to_bool(value: Any, _: type) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {json.dumps(value)[:64]}")
        return value

    def to_str(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {json.dumps(value)[:64]}")
        return clean_text(value)

    def to_list(value: Any, type_: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(f"must be a list, got {type(value).__name__}")
        (item_type,) = type_.__args__
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(conv.structure(item, item_type))
            except Exception as exc:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    IterableValidationNote(
                        f"Structuring {type_} @ index {index}", index, item_type
                    ),
                ]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {type_}", errors, type_)
        return items

    conv.register_structure_hook(uuid.UUID, to_uuid)
    conv.register_structure_hook(int, to_int)
    conv.register_structure_hook(bool, to_bool)
    conv.register_structure_hook(str, to_str)
    conv.register_structure_hook_func(lambda t: getattr(t, "__origin__", None) is list, to_list)
    return conv


_CONVERTER = _converter()


def structure(data: Any, cls: type[T]) -> T:
    if not isinstance(data, dict):
        raise InvalidInput("body: must be a JSON object")
    missing = [
        f.name
        for f in attrs.fields(cls)  # type: ignore[arg-type]  # cls is an attrs class
        if f.default is attrs.NOTHING and f.name not in data
    ]
    if missing:
        raise InvalidInput("; ".join(f"{name}: field required" for name in missing))
    try:
        return _CONVERTER.structure(data, cls)
    except cattrs.ClassValidationError as exc:
        raise InvalidInput(
            "; ".join(f"{'.'.join(path) or 'body'}: {text}" for path, text in problems(exc))
        ) from None


async def read_json(request: web.Request, cls: type[T]) -> T:
    if not request.can_read_body:
        raise BadRequest("body: a JSON object is required")
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body: not valid JSON") from None
    return structure(data, cls)


def parse_uuid(name: str, value: str | None) -> uuid.UUID:
    if value is None or value == "":
        raise InvalidInput(f"{name}: field required")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput(f"{name}: not a valid UUID: {value[:64]!r}") from None


def query_uuid(request: web.Request, name: str) -> uuid.UUID:
    return parse_uuid(name, request.query.get(name))


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    return parse_uuid(name, request.match_info.get(name))


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name}: must be an integer, got {raw[:32]!r}") from None
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be between {low} and {high}, got {value}")
    return value


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in {"true", "1", "yes"}:
        return True
    if raw.lower() in {"false", "0", "no"}:
        return False
    raise InvalidInput(f"{name}: must be true or false, got {raw[:32]!r}")

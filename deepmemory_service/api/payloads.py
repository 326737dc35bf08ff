"""Request bodies and parameters: structured with cattrs, or a 4xx naming the problem.

Bodies are read here for the backend and the gateway alike: decoded (aiohttp's own decoding
is off, see `app.create_app`, so that a bad body is a JSON 4xx from here rather than a
plain-text reply from the HTTP parser), bounded, and parsed.
"""

from __future__ import annotations

import json
import re
import uuid
import zlib
from collections.abc import Callable
from typing import Any, NewType, TypeVar

import attrs
import cattrs
from aiohttp import web
from attrs import frozen
from cattrs.errors import IterableValidationError, IterableValidationNote

from deepmemory_service.api.keys import SETTINGS
from deepmemory_service.errors import BadRequest, InvalidInput, TooLarge, UnsupportedEncoding
from deepmemory_service.models import TITLE_MAX_CHARS, text_problem
from deepmemory_service.platform.validation import problems

T = TypeVar("T")

# Python's whitespace (what str.strip removes), spelled out so that the pattern means the same
# here as in the OpenAPI document, where it is an ECMA regex: a text must hold something else
NOT_BLANK = r"[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NOT_BLANK = re.compile(NOT_BLANK)
Text = NewType("Text", str)
"""A string with something in it besides whitespace."""
Title = NewType("Title", str)
"""A document's title: at most `TITLE_MAX_CHARS` characters."""

# the canonical form only, as the OpenAPI document's `format: uuid` says (uuid.UUID also
# takes braces, a urn: prefix and no hyphens)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# ASCII digits only (int() also takes " 5", "+5" and "٣")
_INT = re.compile(r"-?[0-9]{1,18}")

# no body of this API nests deeper; json.loads itself fails near 1,000 (a RecursionError)
MAX_JSON_DEPTH = 32
# an upload is read from the connection in pieces of this size
UPLOAD_PIECE = 1 << 16
# wbits for zlib: gzip's header, or zlib's (RFC 9110's "deflate")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@frozen
class GenerateIn:
    user_id: uuid.UUID
    questions_per_chunk: int | None = None
    auto_train: bool = False
    # ask the LLM for every chunk, reusing nothing of the last completed run
    regenerate: bool = False


@frozen
class ProceedIn:
    training_run_id: uuid.UUID
    user_id: uuid.UUID


@frozen
class CancelIn:
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
    text: Text
    title: Title | None = None


@frozen
class DocumentsIn:
    user_id: uuid.UUID
    documents: list[DocumentIn]
    # leave out documents the user already has with the same title and text
    skip_unchanged: bool = False


def clean_text(value: str) -> str:
    """PostgreSQL text holds neither NUL nor unpaired surrogates (JSON allows both)."""
    problem = text_problem(value)
    if problem == "a NUL character":
        raise ValueError("must not contain NUL characters")
    if problem is not None:
        raise ValueError("must be valid Unicode text (an unpaired surrogate)")
    return value


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def to_uuid(value: Any, _: type) -> uuid.UUID:
        if not isinstance(value, str):
            raise ValueError(f"must be a UUID string, got {type(value).__name__}")
        if not _UUID.fullmatch(value):
            raise ValueError(f"not a valid UUID: {value[:64]!r}")
        return uuid.UUID(value)

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

    def to_text(value: Any, _: type) -> Text:
        text = to_str(value, str)
        if not _NOT_BLANK.search(text):
            raise ValueError("must contain some text")
        return Text(text)

    def to_title(value: Any, _: type) -> Title:
        text = to_str(value, str)
        if len(text) > TITLE_MAX_CHARS:
            raise ValueError(f"at most {TITLE_MAX_CHARS} characters, got {len(text)}")
        return Title(text)

    conv.register_structure_hook(uuid.UUID, to_uuid)
    conv.register_structure_hook(Text, to_text)
    conv.register_structure_hook(Title, to_title)
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
            "; ".join(f"{path or 'body'}: {text}" for path, text in problems(exc))
        ) from None


async def read_body(request: web.Request) -> bytes:
    """The body as sent before any Content-Encoding, within the size limit before and after
    decoding (a small gzip body may inflate to gigabytes)."""
    raw = await request.read()
    limit = request.config_dict[SETTINGS].http.max_body_bytes

    def too_large(size: int) -> Exception:
        return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)

    return _decoded(request, raw, limit, too_large)


async def read_upload(request: web.Request, limit: int) -> bytes:
    """The body of an upload (a file's bytes), within its own `limit` before and after
    decoding: larger than other bodies may be, so it is read here rather than by aiohttp,
    which holds every body to `http.max_body_bytes`."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(limit)
    pieces: list[bytes] = []
    size = 0
    async for piece in request.content.iter_chunked(UPLOAD_PIECE):
        size += len(piece)
        if size > limit:
            raise TooLarge(limit)
        pieces.append(piece)
    return _decoded(request, b"".join(pieces), limit, lambda _: TooLarge(limit))


def _decoded(
    request: web.Request, raw: bytes, limit: int, too_large: Callable[[int], Exception]
) -> bytes:
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return raw
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise UnsupportedEncoding(
            f"Content-Encoding {coding[:32]!r} is not supported: send gzip, deflate or "
            "an unencoded body"
        )
    decoder = zlib.decompressobj(wbits)
    try:
        body = decoder.decompress(raw, limit + 1)
    except zlib.error:
        raise BadRequest(f"body: not valid {coding} data (Content-Encoding: {coding})") from None
    if len(body) > limit or decoder.unconsumed_tail:
        raise too_large(len(body))
    if not decoder.eof:
        raise BadRequest(f"body: {coding} data ends early (Content-Encoding: {coding})")
    return body


def parse_json(raw: bytes) -> Any:
    """JSON of this API's shape: parsed, and no deeper than `MAX_JSON_DEPTH`."""
    too_deep = BadRequest(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body: not valid JSON") from None
    # breadth first over the containers only: after k steps, those at depth k + 1
    level: list[Any] = [data] if isinstance(data, dict | list) else []
    for _ in range(MAX_JSON_DEPTH):
        if not level:
            return data
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    if level:
        raise too_deep
    return data


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object."""
    raw = await read_body(request)
    if not raw:
        return {}
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidInput("body: must be a JSON object")
    return data


async def read_json(request: web.Request, cls: type[T]) -> T:
    if not request.can_read_body:
        raise BadRequest("body: a JSON object is required")
    raw = await read_body(request)
    return structure(parse_json(raw), cls)


def parse_uuid(name: str, value: str | None) -> uuid.UUID:
    if value is None or value == "":
        raise InvalidInput(f"{name}: field required")
    if not _UUID.fullmatch(value):
        raise InvalidInput(f"{name}: not a valid UUID: {value[:64]!r}")
    return uuid.UUID(value)


def query_uuid(request: web.Request, name: str) -> uuid.UUID:
    return parse_uuid(name, request.query.get(name))


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    return parse_uuid(name, request.match_info.get(name))


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not _INT.fullmatch(raw):
        raise InvalidInput(f"{name}: must be an integer, got {raw[:32]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be between {low} and {high}, got {value}")
    return value


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise InvalidInput(f"{name}: must be true or false, got {raw[:32]!r}")


# an event id is a PostgreSQL bigint; ASCII digits only (str.isdigit also takes "²")
_EVENT_ID = re.compile(r"[0-9]{1,19}")
MAX_EVENT_ID = 2**63 - 1


def last_event_id(request: web.Request) -> int:
    """The `Last-Event-ID` header: the id of the last event the client has; 0 without one."""
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return 0
    if not _EVENT_ID.fullmatch(raw) or int(raw) > MAX_EVENT_ID:
        raise BadRequest(
            f"Last-Event-ID: must be an event id (an integer from 0 to {MAX_EVENT_ID}), "
            f"got {raw[:32]!r}"
        )
    return int(raw)

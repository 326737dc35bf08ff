"""cattrs structuring errors as `(field path, message)` in words a person can act on."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import cattrs
from cattrs.v import format_exception


def _describe(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown field(s): {', '.join(sorted(exc.extra_fields))}"
    # the service's own hooks raise ValueError with the words a client needs
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    if isinstance(exc, KeyError):
        return "field required"
    if get_origin(type_) is Literal:
        choices = ", ".join(repr(c) for c in get_args(type_))
        return f"must be one of {choices}"
    return format_exception(exc, type_)


def problems(exc: cattrs.ClassValidationError) -> list[tuple[str, str]]:
    """Each problem: the path to the field (`documents[0].text`) and what is wrong."""
    out = []
    for line in cattrs.transform_error(exc, path="$", format_exception=_describe):
        text, _, where = line.rpartition(" @ ")
        out.append((where.removeprefix("$").removeprefix("."), text))
    return out

"""Process counters, and the cached count of runs by status, rendered in the Prometheus
text format by `/metrics`."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import attrs

RUN_COUNTS_TTL_S = 15.0


@attrs.define
class Cached:
    """A count that costs a query (runs by status, over every instance's runs): read at most
    once per `ttl_s`, however often it is scraped; scrapes that arrive together share one
    read."""

    read: Callable[[], Awaitable[dict[str, int]]]
    ttl_s: float
    reads: int = 0
    _value: dict[str, int] | None = None
    _read_at: float = 0.0
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    async def get(self) -> dict[str, int]:
        async with self._lock:
            if self._value is None or time.monotonic() - self._read_at >= self.ttl_s:
                self._value = await self.read()
                self._read_at = time.monotonic()
                self.reads += 1
            return self._value


@attrs.define
class Metrics:
    # runs by status is a GROUP BY over every run: read once per scrape interval at most
    run_counts: Cached
    chunks_generated: int = 0
    pairs_written: int = 0
    generation_failures: int = 0
    training_runs: int = 0
    training_failures: int = 0
    # an LLM's questions turned down by the checks, by reason, and the chunks asked again
    questions_rejected: Counter[str] = attrs.field(factory=Counter)
    question_reasks: int = 0
    # spare questions that passed but were not needed
    question_spares_unused: int = 0


def render(samples: list[tuple[str, str, dict[str, str], float]]) -> str:
    """`samples` are (name, type, labels, value); one HELP-less TYPE line per name."""
    lines: list[str] = []
    typed: set[str] = set()
    for name, kind, labels, value in samples:
        if name not in typed:
            lines.append(f"# TYPE {name} {kind}")
            typed.add(name)
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
    return "\n".join(lines) + "\n"

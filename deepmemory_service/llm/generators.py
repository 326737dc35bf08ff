"""Question generators: one interface and the offline default.

A generator turns one chunk's text into `count` questions that the chunk answers.
It raises `GenerationError` when it cannot, after any retries of its own; the run
then fails with that message and can be resumed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from deepmemory_service.models import Chunk
from deepmemory_service.text.queries import key_terms, text_queries

if TYPE_CHECKING:
    from deepmemory_service.llm.question_checks import Feedback
    from deepmemory_service.llm.rate_budget import Lane


class GenerationError(Exception):
    """Questions for a chunk could not be produced (retries, if any, are exhausted)."""


class QuestionGenerator(Protocol):
    name: str

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        """Exactly `count` distinct, non-empty questions about `chunk`. A generator that
        calls a paid API waits for its turn in `lane` and counts its calls and tokens there."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class CheckedGenerator(Protocol):
    """A generator whose questions a run checks (`llm/question_checks.py`): it can be asked
    again for a chunk, told what was wrong with its last questions. The offline generator is
    not one: its queries are the chunk's own sentences and key terms on purpose, the checks
    would turn them down, and asking again would give the same."""

    name: str
    checks_questions: bool
    # the questions its prompt shows as examples: a small model copies them into chunks
    # they do not fit, so a run holds them as asked already
    examples: tuple[str, ...]

    async def generate(
        self,
        chunk: Chunk,
        count: int,
        lane: Lane | None = None,
        feedback: Feedback | None = None,
        spare: int = 0,
    ) -> list[str]:
        """At least `count` questions and up to `spare` more (asked for all of them)."""
        ...


class OfflineQuestionGenerator:
    """Queries people would type, cut from the chunk's own text (`text_queries`): no model,
    no network, the same for the same chunk text. When a short chunk has fewer distinct
    queries than asked for, its key terms fill the rest.

    `fail_after` makes every call after the Nth raise, to exercise failure and resume.
    """

    name = "offline"

    def __init__(self, *, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.calls = 0

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise GenerationError(f"offline generator fault switch: call {self.calls}")
        queries = text_queries(chunk.text, count)
        terms = key_terms(chunk.text, count) or ["passage"]
        n = 1
        while len(queries) < count:
            filler = (
                f"{' '.join(terms[:n])} {len(queries) + 1}"
                if n > len(terms)
                else " ".join(terms[:n])
            )
            if filler not in queries:
                queries.append(filler)
            n += 1
        return queries

    async def aclose(self) -> None:
        return None

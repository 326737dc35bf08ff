"""Question generators: one interface, an offline default, and a factory.

A generator turns one chunk's text into `count` questions that the chunk answers.
It raises `GenerationError` when it cannot, after any retries of its own; the run
then fails with that message and can be resumed.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from deepmemory_service.models import Chunk

if TYPE_CHECKING:
    from deepmemory_service.rate_budget import Lane


class GenerationError(Exception):
    """Questions for a chunk could not be produced (retries, if any, are exhausted)."""


class QuestionGenerator(Protocol):
    name: str

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        """Exactly `count` distinct, non-empty questions about `chunk`. A generator that
        calls a paid API waits for its turn in `lane` and counts its calls and tokens there."""
        ...

    async def aclose(self) -> None: ...


_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{2,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "either",
        "else",
        "every",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "however",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "let",
        "like",
        "made",
        "make",
        "many",
        "may",
        "me",
        "might",
        "more",
        "most",
        "much",
        "must",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "often",
        "on",
        "once",
        "one",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "see",
        "she",
        "should",
        "since",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "thus",
        "to",
        "too",
        "under",
        "until",
        "up",
        "upon",
        "us",
        "use",
        "used",
        "uses",
        "using",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "within",
        "without",
        "would",
        "you",
        "your",
        "yours",
        "one",
        "two",
        "three",
        "first",
        "second",
        "new",
        "way",
        "ways",
        "get",
        "gets",
    ]
)

_TEMPLATES = (
    "What does the text say about {a}?",
    "How is {a} related to {b}?",
    "What is the role of {a} in {b}?",
    "Why does {a} matter when working with {b}?",
    "What should someone know about {a}?",
    "How does {a} work?",
    "When is {a} used together with {b}?",
    "What is described about {a} and {b}?",
    "Which details are given about {a}?",
    "What happens with {a} according to the passage on {b}?",
)


def key_terms(text: str, limit: int) -> list[str]:
    """The chunk's most telling words: frequent here, not stop words, earliest first on ties."""
    words = [w.lower() for w in _WORD.findall(text)]
    counts = Counter(w for w in words if w not in STOPWORDS)
    first_seen = {w: i for i, w in reversed(list(enumerate(words)))}
    ranked = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
    return ranked[:limit]


class OfflineQuestionGenerator:
    """Deterministic questions from the chunk's own terms: no model, no network.

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
        terms = key_terms(chunk.text, max(2, count + 1)) or ["this passage"]
        questions: list[str] = []
        for i in range(count):
            a = terms[i % len(terms)]
            b = terms[(i + 1) % len(terms)] if len(terms) > 1 else "the passage"
            question = _TEMPLATES[i % len(_TEMPLATES)].format(a=a, b=b)
            if question in questions:
                question = f"{question[:-1]} (detail {i + 1})?"
            questions.append(question)
        return questions

    async def aclose(self) -> None:
        return None

"""Search queries cut from a chunk's own text, the kinds people type.

Measured on 1,110 questions people wrote (seven FAQs): a model trained on a chunk's topic
sentences (the first sentence of each paragraph), other sentences of it (inverse cloze)
and two or three of its key terms, as typed into a search box, did better on people's
questions than one trained on fixed question templates ("What does the text say about
X?"), which taught MiniLM's adapter the templates' style and lost recall. The offline
generator writes these (`text_queries`); the local trainer also judges a model on such
queries that it did not train on (`held_out_queries`), because they predict people's
experience better than held-out generated questions alone.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{2,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_PARAGRAPH = re.compile(r"\n\s*\n")
_MARKUP = (
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),  # [text](link) -> text
    (re.compile(r"^\s{0,3}(#{1,6}|[-*+>]|\d+[.)])\s+", re.MULTILINE), ""),  # heading, item
    (re.compile(r"[*_`]{1,3}"), ""),  # emphasis, code marks
    (re.compile(r"^\s*([*=~^\-])\1{2,}\s*$", re.MULTILINE), ""),  # underlines
)
MIN_WORDS = 2
MAX_WORDS = 24
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


def plain(text: str) -> str:
    """The text without markdown or reStructuredText markup."""
    for pattern, replacement in _MARKUP:
        text = pattern.sub(replacement, text)
    return text


def _query(sentence: str) -> str | None:
    """A sentence as a query: one line, at most MAX_WORDS words, or None when too short."""
    words = sentence.split()
    if len(words) < MIN_WORDS:
        return None
    return " ".join(words[:MAX_WORDS])


def _sentences(plain_text: str) -> tuple[list[str], list[str]]:
    """(topic sentences, other sentences) of text already without markup, as queries: a
    topic sentence opens a paragraph, where writers say what the paragraph is about."""
    topics: list[str] = []
    others: list[str] = []
    for paragraph in _PARAGRAPH.split(plain_text):
        sentences = [s for s in _SENTENCE_END.split(paragraph.strip()) if s.strip()]
        for i, sentence in enumerate(sentences):
            query = _query(sentence)
            if query:
                (others if i else topics).append(query)
    return list(dict.fromkeys(topics)), list(dict.fromkeys(others))


def _key_terms(plain_text: str, limit: int) -> list[str]:
    words = [w.lower() for w in _WORD.findall(plain_text)]
    counts = Counter(w for w in words if w not in STOPWORDS)
    first_seen = {w: i for i, w in reversed(list(enumerate(words)))}
    ranked = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
    return ranked[:limit]


def key_terms(text: str, limit: int) -> list[str]:
    """The chunk's most telling words: frequent here, not stop words, earliest first on ties."""
    return _key_terms(plain(text), limit)


def _key_term_queries(plain_text: str, rng: random.Random, count: int) -> list[str]:
    """Up to `count` distinct search-box queries of two or three of the chunk's key terms,
    the most telling first."""
    terms = _key_terms(plain_text, 6)
    if len(terms) < 2:
        return terms[:count]
    queries: list[str] = [" ".join(terms[:3])]
    tries = 0
    while len(queries) < count and tries < 20 * count:
        tries += 1
        picked = sorted(rng.sample(range(len(terms)), rng.choice((2, 3)) if len(terms) > 2 else 2))
        query = " ".join(terms[i] for i in picked)
        if query not in queries:
            queries.append(query)
    return queries


def chunk_seed(text: str) -> int:
    """A seed from the text itself: a chunk's queries never depend on the process or run."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def text_queries(text: str, count: int) -> list[str]:
    """Up to `count` distinct queries about `text`, deterministic per text: topic
    sentences, other sentences (in a seeded order) and key-term queries taken in turn,
    so any count gets the best kind first and a mix of them."""
    rng = random.Random(chunk_seed(text))  # noqa: S311  (reproducible, not a secret)
    plain_text = plain(text)
    topics, others = _sentences(plain_text)
    rng.shuffle(others)
    kinds = [topics, others, _key_term_queries(plain_text, rng, count)]
    queries: list[str] = []
    while len(queries) < count and any(kinds):
        for kind in kinds:
            while kind and len(queries) < count:
                query = kind.pop(0)
                if query not in queries:
                    queries.append(query)
                    break
    return queries


def held_out_queries(text: str, rng: random.Random, exclude: set[str]) -> list[str]:
    """Queries about `text` that are none of `exclude` (the questions trained on): each of
    its sentences, and two key-term queries chosen by `rng`."""
    plain_text = plain(text)
    topics, others = _sentences(plain_text)
    sentences = [q for q in topics + others if q not in exclude]
    terms = [q for q in _key_term_queries(plain_text, rng, 6) if q not in exclude]
    return list(dict.fromkeys(sentences + rng.sample(terms, min(2, len(terms)))))

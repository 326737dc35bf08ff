"""Checks of an LLM's questions: would a person type this into a search box to find the
chunk? Pure functions, no I/O, so a run, a benchmark and a judge apply the same ones.

A small model asked for search questions writes many that are not: questions about the
text itself ("What are the three main directory trees mentioned in the passage?", "What is
the name of the author?"), a sentence of the chunk with a question mark stuck on, the same
generic question for many chunks ("What is the purpose of curl?"), statements. Each check
names one such fault (`Reason`); `check_question` applies the checks that need only the
question, its chunk and the questions already kept, in order, and says why a question is
turned down (or None), and `check_answer` applies it to one answer, claiming each passing
question's key. The round-trip check (InPars, Promptagator: keep a question only when
retrieval with the base embedder finds its chunk) needs vectors: `ranks_within`, and
`after_round_trip` applies its verdicts.

Measured on the cached answers of Qwen2.5-Coder-1.5B for 284 FAQ chunks (852 questions) and
on the 221 questions people wrote for the same FAQs (the patterns below turn down none of
those people's questions for being about the text, copied or not a question).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

import numpy as np
from attrs import frozen

from deepmemory_service.text.queries import STOPWORDS
from deepmemory_service.vectors import Matrix


class Reason(enum.StrEnum):
    """Why a question was turned down (the keys of a run's `question_rejections`)."""

    NOT_QUESTION = "not_question"
    ABOUT_TEXT = "about_text"
    COPIED = "copied"
    DUPLICATE = "duplicate"
    ROUND_TRIP = "round_trip"


# what the model is told when it is asked again (in the re-ask's prompt)
ADVICE: dict[Reason, str] = {
    Reason.NOT_QUESTION: "it is not a question a person would type",
    Reason.ABOUT_TEXT: (
        "it asks about the piece itself; ask about its subject, naming it, as someone would "
        "who has never seen the piece"
    ),
    Reason.COPIED: "it copies a sentence of the piece; ask in your own words",
    Reason.DUPLICATE: "it was already asked; ask about what is particular to this piece",
    Reason.ROUND_TRIP: (
        "it is too vague to find this piece among the others; name the specific thing it is about"
    ),
}

# words a question opens with (an imperative "explain …" is a request, not a search)
_OPENERS = frozenset(
    [
        "what",
        "what's",
        "whats",
        "how",
        "how's",
        "why",
        "when",
        "where",
        "where's",
        "who",
        "who's",
        "whom",
        "whose",
        "which",
        "is",
        "are",
        "am",
        "was",
        "were",
        "do",
        "does",
        "did",
        "can",
        "could",
        "should",
        "shall",
        "will",
        "would",
        "may",
        "might",
        "must",
        "has",
        "have",
        "had",
        "isn't",
        "aren't",
        "doesn't",
        "don't",
        "didn't",
        "can't",
        "cannot",
        "won't",
        "wouldn't",
        "shouldn't",
    ]
)
_WORD = re.compile(r"[a-z0-9]+(?:['._/+\-][a-z0-9]+)*")
# a question shorter than this is a fragment ("curl?"), longer is a paragraph
MIN_WORDS = 2
MAX_WORDS = 60

# nouns that only ever mean the writing in front of the model
_WRITING = r"passage|excerpt|paragraph|snippet|extract|text\s+above|above\s+text"
_ABOUT_TEXT = [
    # "the passage", "this excerpt", "in the paragraph"
    re.compile(rf"\b(?:the|this|that|these|given|above|following|provided)\s+(?:{_WRITING})s?\b"),
    # "mentioned", and other words that point back into a text
    re.compile(r"\b(?:mentioned|aforementioned|discussed|outlined)\b"),
    re.compile(
        r"\b(?:described|referred\s+to|stated|listed|presented|shown|given)\s+(?:in|above)\b"
    ),
    # the writer rather than the subject: "the author", "the writer" (not "the author of X")
    re.compile(r"\b(?:the|this)\s+(?:author|writer)s?\b(?!\s+of\b)"),
    # "according to the text", "in this document", "the article says"; "in the context" but
    # not "in the context of curl", which names the subject
    re.compile(
        r"\b(?:according\s+to|in|from|within|throughout)\s+(?:the|this)\s+"
        r"(?:text|document|article|context(?!\s+of\b)|section|chapter|faq)\b"
    ),
    re.compile(r"\bthis\s+(?:text|document|article|section|chapter|faq|material)\b"),
    # "what does it say about …": the piece as "it" (none of 1,110 people's FAQ questions)
    re.compile(r"\b(?:does|do|did)\s+it\s+(?:say|state|mention|describe|suggest)\b"),
    re.compile(
        r"\b(?:text|document|article|section|faq)\s+(?:say|says|said|state|states|describe|"
        r"describes|suggest|suggests|discuss|discusses|mention|mentions|explain|explains|"
        r"imply|implies|advise|advises|talk|talks)\b"
    ),
    # "what are the main points", "the main idea of the …"
    re.compile(r"\bmain\s+(?:points?|ideas?|topics?|themes?|takeaways?|message)\b"),
    # pointing at something only the text shows: "the given functionality", "the second
    # step", "the easiest way to do this?"
    re.compile(r"\bthe\s+(?:given|above|aforesaid|preceding)\s+[a-z]"),
    re.compile(
        r"\bthe\s+(?:first|second|third|fourth|fifth)\s+(?:step|example|method|point|item|"
        r"case|part|sentence|paragraph|command|approach|option|solution)s?\b"
    ),
    re.compile(r"\b(?:summari[sz]e|summary\s+of)\b"),
]
# a one-sentence question ending in "this?" points into the text ("What is the easiest way
# to do this?"); after a sentence saying what "this" is, people ask so too
_DEICTIC_END = re.compile(r"\b(?:this|that|these|those)\s*\?*$")
_TWO_SENTENCES = re.compile(r"[.!?:;,]\s+\S")
# a run of this many words shared with the chunk is a copy whatever the question's length;
# a shorter run of at least `_COPY_SHORTEST` words is one when it is most of the question
COPY_WORDS = 10
_COPY_SHORTEST = 6
_COPY_SHARE = 0.8
# the words of such a run that are not stop words, at least (one fewer for a short one)
_COPY_TELLING = 4
# words left out of a question's duplicate key: the stop words, and the filler of
# questions ("what is the purpose of X" and "what is X used for" ask the same)
_FILLER = frozenset(
    [
        "purpose",
        "main",
        "use",
        "used",
        "using",
        "uses",
        "mean",
        "means",
        "meaning",
        "role",
        "function",
        "way",
        "ways",
        "difference",
        "different",
        "kind",
        "kinds",
        "type",
        "types",
        "example",
        "examples",
        "name",
        "named",
        "called",
        "specific",
        "particular",
        "some",
        "certain",
        "thing",
        "things",
        "work",
        "works",
        "working",
        "does",
        "please",
    ]
)


@frozen
class Rejection:
    """A question turned down, and why."""

    question: str
    reason: Reason


# the order in which a chunk that passed nothing keeps a question turned down: the one
# that failed the softest check (a real question too vague for the round trip) first; a
# copy of the chunk's own sentence before a question asked of another chunk, which as a
# training pair points a question at two chunks (on the real model, such a fallback was
# 3 of 46 stored questions in one run)
SOFTEST_FIRST = (
    Reason.ROUND_TRIP,
    Reason.COPIED,
    Reason.DUPLICATE,
    Reason.ABOUT_TEXT,
    Reason.NOT_QUESTION,
)


@frozen
class Feedback:
    """What asking a chunk again tells the model: why its questions were turned down."""

    turned_down: tuple[Rejection, ...]


def words(text: str) -> list[str]:
    """The text's words, lowercased (a word keeps its inner dots, dashes and slashes:
    `curl_easy_setopt`, `-Q/--quote`, `.emacs`)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def is_question(question: str) -> bool:
    """A question as people type one into a search box: between `MIN_WORDS` and `MAX_WORDS`
    words, ending in a question mark or opening with a question word."""
    found = words(question)
    if not MIN_WORDS <= len(found) <= MAX_WORDS:
        return False
    return question.rstrip().endswith("?") or found[0] in _OPENERS


def about_the_text(question: str) -> bool:
    """Whether the question asks about the writing in front of the model (the passage, its
    author, what it mentions) instead of its subject: nobody searching has that text."""
    lowered = " ".join(question.lower().split())
    if any(p.search(lowered) for p in _ABOUT_TEXT):
        return True
    return bool(_DEICTIC_END.search(lowered)) and not _TWO_SENTENCES.search(lowered)


def copied_words(question: str, chunk_text: str) -> tuple[int, int]:
    """The longest run of the question's words that the chunk holds word for word: its
    length, and how many of its words are not stop words (the most among runs as long)."""
    asked, text = words(question), words(chunk_text)
    longest, telling = 0, 0
    # runs of the question still found in the chunk, grown one word at a time
    runs = [(i, i + 1) for i in range(len(asked))]
    while runs:
        n = longest + 1
        grams = {tuple(text[i : i + n]) for i in range(len(text) - n + 1)}
        matched = [(s, e) for s, e in runs if tuple(asked[s:e]) in grams]
        if not matched:
            break
        longest = n
        telling = max(sum(w not in STOPWORDS for w in asked[s:e]) for s, e in matched)
        runs = [(s, e + 1) for s, e in matched if e < len(asked)]
    return longest, telling


def copied(question: str, chunk_text: str) -> bool:
    """Whether the question is a stretch of the chunk's text: `COPY_WORDS` words or more
    word for word, or most of the question when it is short (runs of stop words alone,
    "what is the name of the", do not count)."""
    run, telling = copied_words(question, chunk_text)
    if run >= COPY_WORDS and telling >= _COPY_TELLING:
        return True
    short = run >= _COPY_SHORTEST and telling >= _COPY_TELLING - 1
    return short and run >= _COPY_SHARE * len(words(question))


def _stem(word: str) -> str:
    word = word.removesuffix("'s")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def duplicate_key(question: str) -> str:
    """What two questions that ask the same share: their telling words, stemmed, in
    order of first use ("What is the purpose of curl?" and "What is curl used for?" both
    `curl`). Empty for a question with no telling word."""
    seen: dict[str, None] = {}
    for word in words(question):
        stem = _stem(word)
        if stem not in STOPWORDS and stem not in _FILLER and word not in STOPWORDS:
            seen.setdefault(stem, None)
    return " ".join(sorted(seen))


def check_question(question: str, chunk_text: str, kept_keys: Iterable[str] = ()) -> Reason | None:
    """Why `question` about `chunk_text` is turned down, or None: the first of not a
    question, about the text itself, copied from the chunk, and a duplicate of a question
    whose key (`duplicate_key`) is among `kept_keys` (those kept so far, of this chunk and
    of the run's others). A container with fast membership (a set) keeps it cheap."""
    if not is_question(question):
        return Reason.NOT_QUESTION
    if about_the_text(question):
        return Reason.ABOUT_TEXT
    if copied(question, chunk_text):
        return Reason.COPIED
    if duplicate_key(question) in kept_keys:
        return Reason.DUPLICATE
    return None


def check_answer(
    answer: Iterable[str], chunk_text: str, keys: set[str]
) -> tuple[list[str], list[Rejection]]:
    """One answer's questions (stripped) that pass `check_question`, in order, and those
    turned down. A passing question's key is claimed in `keys` at once: a later question of
    the answer, or of a chunk asked meanwhile, may not keep the same question."""
    passing: list[str] = []
    rejected: list[Rejection] = []
    for raw in answer:
        question = raw.strip()
        reason = check_question(question, chunk_text, keys)
        if reason is not None:
            rejected.append(Rejection(question, reason))
            continue
        keys.add(duplicate_key(question))
        passing.append(question)
    return passing, rejected


def after_round_trip(
    passing: list[str], found: Iterable[bool], keys: set[str]
) -> tuple[list[str], list[Rejection]]:
    """The questions of `passing` (from `check_answer`) whose chunk the round trip found
    (`found`, one verdict each), and those it turned down, whose keys go back to `keys`:
    another chunk may still ask such a question and keep it."""
    kept: list[str] = []
    rejected: list[Rejection] = []
    for question, ok in zip(passing, found, strict=True):
        if ok:
            kept.append(question)
        else:
            keys.discard(duplicate_key(question))
            rejected.append(Rejection(question, Reason.ROUND_TRIP))
    return kept, rejected


def ranks_within(questions: Matrix, chunks: Matrix, rows: Iterable[int], k: int) -> list[bool]:
    """The round-trip check: for each question vector (normalised rows of `questions`),
    whether its chunk (row `rows[i]` of `chunks`, the user's chunk vectors) is among the
    `k` chunks nearest to it by cosine similarity (ties counted in the chunk's favour)."""
    wanted = np.fromiter(rows, dtype=np.int64, count=len(questions))
    if len(questions) == 0:
        return []
    scores = questions @ chunks.T
    own = scores[np.arange(len(questions)), wanted]
    better = (scores > own[:, None]).sum(axis=1)
    return [bool(b < k) for b in better]

"""What the checks of an LLM's questions turn down, measured on questions a model wrote:
`scripts/bench_questions CACHED.json [--faq DIR]`.

CACHED.json maps each chunk's text to the questions a model wrote for it (in the order the
chunks were asked). The checks are applied as a run applies them, chunk after chunk
(`llm/question_checks.py`; the round trip with the hashing embedder when `--faq DIR` gives
the collections the chunks came from: each `*.json` file of `{question, answer}` records is
one user's corpus, its answers chunked as the service chunks them). Nobody is asked again
here: "after" is what the checks keep of the cached answers, and the chunks left short are
those a run would ask again.

It prints, before and after, the share of questions that are about the text itself (by the
checks' own patterns, and by a plain list of words that point at a text, which also counts
"text files"), repeated across chunks (the same words, case and punctuation aside; and the
same duplicate key), not questions, and copied from the chunk.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from deepmemory_service.llm.question_checks import (
    Reason,
    about_the_text,
    check_question,
    copied,
    duplicate_key,
    is_question,
    ranks_within,
    words,
)
from deepmemory_service.platform.config import load_settings
from deepmemory_service.storage.embedders import HashingEmbedder
from deepmemory_service.text import chunking

# words that point at a text, with no judgement of their use (an upper bound)
_TEXT_WORDS = re.compile(
    r"\b(?:passage|text|author|document|article|excerpt|paragraph|mentioned|according to)\b",
    re.IGNORECASE,
)


def plain_about_text(question: str) -> bool:
    return bool(_TEXT_WORDS.search(question))


def repeated(asked: Sequence[tuple[int, str]], key: object) -> int:
    """How many questions repeat one asked of an earlier chunk (by `key(question)`)."""
    first_chunk: dict[object, int] = {}
    count = 0
    for chunk, question in asked:
        k = key(question)  # type: ignore[operator]
        if first_chunk.setdefault(k, chunk) != chunk:
            count += 1
    return count


def exact(question: str) -> str:
    return " ".join(words(question))


def shares(asked: Sequence[tuple[int, str]], texts: Sequence[str]) -> dict[str, float]:
    n = max(1, len(asked))
    return {
        "questions": len(asked),
        "about the text (checks)": sum(about_the_text(q) for _, q in asked) / n,
        "about the text (plain words)": sum(plain_about_text(q) for _, q in asked) / n,
        "repeated across chunks (same words)": repeated(asked, exact) / n,
        "repeated across chunks (same key)": repeated(asked, duplicate_key) / n,
        "not a question": sum(not is_question(q) for _, q in asked) / n,
        "copied from the chunk": sum(copied(q, texts[c]) for c, q in asked) / n,
    }


def corpora(faq: Path | None, texts: Sequence[str]) -> list[tuple[list[int], list[str]]]:
    """Each collection's chunks as (the cached chunks among them, all its chunk texts)."""
    if faq is None:
        return []
    settings = load_settings({})
    where = {t: i for i, t in enumerate(texts)}
    found = []
    for path in sorted(faq.glob("*.json")):
        chunks: list[str] = []
        for record in json.loads(path.read_text()):
            pieces = chunking.split(
                record["answer"], settings.store.chunk_chars, settings.store.chunk_overlap
            )
            chunks += [p for p in pieces if p not in chunks]
        mine = [where[c] for c in chunks if c in where]
        if mine:
            found.append((mine, chunks))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cached", type=Path, help="chunk text -> questions (JSON)")
    parser.add_argument("--faq", type=Path, help="the collections the chunks came from")
    parser.add_argument("--k", type=int, default=10, help="the round trip's k (0: none)")
    args = parser.parse_args()
    cached: dict[str, list[str]] = json.loads(args.cached.read_text())
    texts = list(cached)
    asked = [(i, q) for i, t in enumerate(texts) for q in cached[t]]

    # the round trip: each question's chunk among the k nearest of its collection's
    round_trip: dict[tuple[int, str], bool] = {}
    if args.k > 0:
        embedder = HashingEmbedder()
        for mine, chunks in corpora(args.faq, texts):
            vectors = embedder.embed_sync(chunks)
            rows = {t: r for r, t in enumerate(chunks)}
            for i in mine:
                qs = cached[texts[i]]
                ok = ranks_within(
                    embedder.embed_sync(qs), vectors, [rows[texts[i]]] * len(qs), args.k
                )
                round_trip.update({(i, q): v for q, v in zip(qs, ok, strict=True)})

    keys: set[str] = set()
    kept: list[tuple[int, str]] = []
    reasons: Counter[str] = Counter()
    short = 0
    per_chunk = Counter(i for i, _ in asked)
    for i, text in enumerate(texts):
        mine = 0
        for question in cached[text]:
            reason = check_question(question, text, keys)
            if reason is None and not round_trip.get((i, question), True):
                reason = Reason.ROUND_TRIP
            if reason is None:
                keys.add(duplicate_key(question))
                kept.append((i, question))
                mine += 1
            else:
                reasons[reason.value] += 1
        short += mine < per_chunk[i]

    before, after = shares(asked, texts), shares(kept, texts)
    print(f"{len(texts)} chunks, {len(asked)} questions; round trip k={args.k}", end="")
    print(f" over {len({c for c, _ in round_trip})} chunks" if round_trip else " (off)")
    print(f"{'':40} {'before':>8} {'after':>8}")
    for name in before:
        b, a = before[name], after[name]
        fmt = "{:>8}" if name == "questions" else "{:>8.1%}"
        print(f"{name:40} {fmt.format(b)} {fmt.format(a)}")
    print("turned down:", ", ".join(f"{r.value} {reasons[r.value]}" for r in Reason))
    print(
        f"chunks left short (a run asks them again): {short}/{len(texts)}; "
        f"kept per chunk {len(kept) / max(1, len(texts)):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Splitting documents into chunks: paragraphs packed up to a size, long ones split by
sentence, with a little overlap so an answer on a boundary stays findable. A markdown
heading starts a new section, and chunks never span two sections."""

from __future__ import annotations

import re

from attrs import frozen

# the files read as documents when a folder is given (a file named on its own, or chosen
# on the page, is read whatever its name: its bytes decide, text/decoding.py)
TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".text"})

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_SPACE = re.compile(r"[ \t]+")
_HEADING = re.compile(r"^(?=#{1,6} )", re.MULTILINE)


@frozen
class _Piece:
    text: str
    # the first piece of a paragraph joins with a blank line, the others with a space
    opens_paragraph: bool


def _pieces(text: str, size: int) -> list[_Piece]:
    out: list[_Piece] = []
    for para in _PARAGRAPH.split(text):
        if "  " in para or "\t" in para:  # most text has neither: the regex costs more
            para = _SPACE.sub(" ", para)
        para = para.strip()
        if not para:
            continue
        if len(para) <= size:
            out.append(_Piece(para, True))
            continue
        first = True
        for sentence in _SENTENCE.split(para):
            while len(sentence) > size:
                cut = sentence.rfind(" ", 0, size)
                cut = cut if cut > size // 2 else size
                out.append(_Piece(sentence[:cut].strip(), first))
                first = False
                sentence = sentence[cut:].strip()
            if sentence:
                out.append(_Piece(sentence, first))
                first = False
    return out


def _tail(text: str, overlap: int) -> str:
    """The last `overlap` characters, starting on a word boundary."""
    if overlap <= 0 or len(text) <= overlap:
        return ""
    tail = text[-overlap:]
    boundary = re.search(r"\s", tail)
    return tail[boundary.end() :].strip() if boundary else ""


def _split_section(text: str, size: int, overlap: int) -> list[str]:
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, size):
        joiner = "\n\n" if piece.opens_paragraph else " "
        if current and len(current) + len(joiner) + len(piece.text) > size:
            chunks.append(current)
            tail = _tail(current, overlap)
            fits = tail and len(tail) + 1 + len(piece.text) <= size
            current = f"{tail} {piece.text}" if fits else piece.text
        else:
            current = f"{current}{joiner}{piece.text}" if current else piece.text
    if current:
        chunks.append(current)
    return chunks


def split(text: str, size: int = 1200, overlap: int = 150) -> list[str]:
    chunks: list[str] = []
    # a heading needs "# ": most texts have none, and the regex's scan of every line's
    # start cost as much as the rest of the split (3.5 of 7.5 ms for an upload of 1,000)
    sections = _HEADING.split(text) if "# " in text else [text]
    for section in sections:
        chunks += _split_section(section, size, overlap)
    return chunks

"""A file's bytes as the text its author wrote, or a refusal that says why: never a guess
that stores mojibake or U+FFFD the author did not write.

What is decoded, in this order:

1. a byte-order mark (UTF-8, UTF-16 or UTF-32, either byte order) decides the encoding,
   and the rest must be valid in it;
2. valid UTF-8 (ASCII included) is UTF-8: other encodings almost never pass its checks;
3. bytes with NUL in them are not text (a binary file, or UTF-16 without a byte-order mark,
   which cannot be told apart from binary with certainty);
4. otherwise the candidates of charset-normalizer (a detector kept up to date with
   Python's codecs) are read strictly, one text per different reading, and a reading counts
   as plausible when its letters fit one language's alphabet and no word mixes scripts
   ("Crème brûlée" is French in cp1252; cp1250 reads the same bytes as "Crčme brűlée",
   whose č and ű belong to no single language). One plausible reading, clearly better than
   every other, is decoded; none, or two that are close, is a refusal naming the readings.

Strict decoding never makes U+FFFD: a decoded text holds it only when the file's bytes
encode it.
"""

from __future__ import annotations

import codecs
import functools
import random
import re
import unicodedata
from collections import Counter

from attrs import frozen

# the byte-order marks, longest first (UTF-32 LE's begins with UTF-16 LE's)
BOMS: tuple[tuple[bytes, str, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"),
)
# control characters a text file may hold: tab, line feed, vertical tab, form feed, return
TEXT_CONTROLS = frozenset("\t\n\v\f\r")
# the letters beyond a-z of languages written in the Latin and Cyrillic scripts that legacy
# 8-bit encodings (ISO 8859, Windows and DOS code pages, KOI8, Mac) were made for; a letter
# of another script (Greek, Hebrew, Arabic, Thai, Chinese, …) fits its script
ALPHABETS: dict[str, str] = {
    "French": "àâæçéèêëîïôœùûüÿ",
    "German": "äöüß",
    "Spanish": "áéíñóúü",
    "Portuguese": "àáâãçéêíóôõúü",
    "Italian": "àèéìíîòóùú",
    "Catalan": "àçèéíïòóúüŀ",
    "Dutch": "áäéëíïóöúüĳ",
    "Danish and Norwegian": "åæøéáóô",
    "Swedish": "åäöé",
    "Finnish": "åäöšž",
    "Icelandic": "áæðéíóöúýþ",
    "Faroese": "áæðíóøúý",
    "Irish and Welsh": "áàâäéèêëíìîïóòôöúùûüŵýỳŷÿ",
    "Basque and Galician": "áéíñóúü",
    "Albanian": "çë",
    "Czech": "áčďéěíňóřšťúůýž",
    "Slovak": "áäčďéíĺľňóôŕšťúýž",
    "Polish": "ąćęłńóśźż",
    "Hungarian": "áéíóöőúüű",
    "Romanian": "ăâîșțşţ",
    "Croatian, Bosnian and Serbian": "čćđšž",
    "Slovene": "čšž",
    "Turkish": "âçğıîöşûü",
    "Lithuanian": "ąčęėįšųūž",
    "Latvian": "āčēģīķļņšūž",
    "Estonian": "äöõüšž",
    "Maltese": "àċèġħìòùż",
    "Esperanto": "ĉĝĥĵŝŭ",
    "Russian": "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    "Ukrainian": "абвгґдеєжзиіїйклмнопрстуфхцчшщьюя",
    "Belarusian": "абвгдеёжзійклмнопрстуўфхцчшыьэюя",
    "Bulgarian": "абвгдежзийклмнопрстуфхцчшщъьюя",
    "Serbian": "абвгдђежзијклљмнњопрстћуфхцчџш",
    "Macedonian": "абвгдѓежзѕијклљмнњопрстќуфхцчџш",
}
_ALPHABETS = {name: frozenset(letters) for name, letters in ALPHABETS.items()}
# scripts whose texts mix in one run of letters (Japanese kanji and kana, say)
_EAST_ASIAN = frozenset(
    {"CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA", "HANGUL", "FULLWIDTH", "IDEOGRAPHIC"}
)
# marks that may stand inside a word: apostrophes, hyphens, Catalan's middle dot
_IN_WORD = frozenset("\u2019\u2018\u02bc\u00b7\u2010\u2011\u2013'-")
# a reading is decoded only when at most this share of its letters is out of place, and
# every other reading has clearly more (this many times, and at least `_CLEARLY_WORSE`)
_MOST_ODD = 0.005
_TIMES_WORSE = 4.0
_CLEARLY_WORSE = 0.01
# or, as clean as another, its letters follow a language's frequencies this much better
_MORE_COHERENT = 0.15
# ASCII punctuation and digits around a word
_ASCII_MARKS = "".join(chr(c) for c in range(33, 127) if not chr(c).isalpha())
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
# the most words a reading is judged on: enough for any file's verdict, quick for a large one
_MOST_WORDS = 2_000
# a large file is judged on this many slices of it, each about this long
_EXCERPTS = 4
_EXCERPT_BYTES = 1 << 16
# what a refusal shows of each reading
_SAMPLE_CHARS = 24


NUL = "it holds NUL bytes: a binary file, or UTF-16 without a byte-order mark"
# legacy encodings every file is also read in, besides the detector's candidates: the most
# used of each script, so that a reading the detector missed is not left out
COMMON = (
    "cp1252",
    "iso8859_15",
    "cp1250",
    "cp1251",
    "koi8_r",
    "koi8_u",
    "cp1253",
    "cp1254",
    "cp1257",
    "cp866",
)


class NotText(ValueError):
    """The bytes are not text that can be decoded with certainty; the message says why."""


@frozen
class Decoded:
    """A file's text and the encoding it was read in (a Python codec name)."""

    text: str
    encoding: str


def decode(data: bytes) -> Decoded:
    """`data` as text, or `NotText` saying why not (see the module's rules)."""
    for bom, codec, name in BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(codec)
            except UnicodeDecodeError as exc:
                raise NotText(
                    f"it starts with a {name} byte-order mark but is not valid {name} "
                    f"(byte {exc.start + len(bom)})"
                ) from None
            return _checked(Decoded(text, codec))
    try:
        return _checked(Decoded(data.decode("utf-8"), "utf-8"))
    except UnicodeDecodeError:
        pass
    if b"\x00" in data:
        raise NotText(NUL)
    return _checked(_detect(data))


def _checked(decoded: Decoded) -> Decoded:
    if "\x00" in decoded.text:
        raise NotText(NUL)
    return decoded


@frozen
class _Reading:
    """One way to read the bytes: its text, the encodings that read it so, how odd it is
    (`oddness` plus the detector's own measure of mess), and how well its letters follow
    some language's frequencies (the detector's coherence, 0 to 1)."""

    text: str
    encodings: tuple[str, ...]
    odd: float
    coherence: float

    @classmethod
    def of(cls, text: str, encodings: list[str], words: list[str], odd: float) -> _Reading:
        """The reading with the detector's measures added to its `oddness` (`odd`)."""
        from charset_normalizer.cd import coherence_ratio
        from charset_normalizer.md import mess_ratio

        sample = " ".join(words)
        languages = coherence_ratio(sample) if sample else []
        return cls(
            text,
            tuple(encodings),
            odd + mess_ratio(sample),
            max((ratio for _, ratio in languages), default=0.0),
        )

    def clearly_odder(self, odd: float) -> bool:
        """A reading this odd (or odder) is clearly worse than this one."""
        return odd >= max(_CLEARLY_WORSE, _TIMES_WORSE * self.odd)

    def clearly_better_than(self, other: _Reading) -> bool:
        """Clean, where `other` is clearly odder, or as clean but much less coherent."""
        if self.odd > _MOST_ODD:
            return False
        if self.clearly_odder(other.odd):
            return True
        return self.coherence >= other.coherence + _MORE_COHERENT


def _detect(data: bytes) -> Decoded:
    from charset_normalizer import from_bytes

    readings: dict[str, list[str]] = {}
    for encoding in [m.encoding for m in from_bytes(data)] + list(COMMON):
        # UTF-16 and UTF-32 without a byte-order mark cannot be told from other bytes
        if encoding.startswith(("utf_16", "utf_32", "utf_7")):
            continue
        try:
            text = data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
        readings.setdefault(text, []).append(encoding)
    for encodings in readings.values():
        # a reading is named by its most used encoding (German in cp1252, not cp1250)
        encodings.sort(key=lambda e: COMMON.index(e) if e in COMMON else len(COMMON))
    if not readings:
        raise NotText("not UTF-8, and no text encoding reads it: not a text file")
    # each reading is judged on the same excerpt of a large file (its words are a sample
    # anyway); the cheap measure first, the detector's slower ones (which only add to it)
    # for the readings close to the best: one clearly odder already is clearly worse
    excerpt = _excerpt(data)
    texts = list(readings)
    cheap: list[tuple[float, int, str, list[str]]] = []
    for i, text in enumerate(texts):
        judged = text if excerpt is data else excerpt.decode(readings[text][0])
        words = _in_words(judged)
        cheap.append((oddness(judged, words), i, judged, words))
    cheap.sort(key=lambda c: (c[0], c[1]))
    least = cheap[0][0]
    close = max(_CLEARLY_WORSE, _TIMES_WORSE * least)

    def reading(odd: float, i: int, words: list[str]) -> _Reading:
        return _Reading.of(texts[i], readings[texts[i]], words, odd)

    ranked = sorted(
        (reading(odd, i, words) for odd, i, _, words in cheap if odd < close or odd == least),
        key=lambda r: (r.odd, -r.coherence),
    )
    best = ranked[0]
    others = ranked[1:] + [
        reading(odd, i, words)
        for odd, i, _, words in cheap
        if odd >= close and odd != least and not best.clearly_odder(odd)
    ]
    if all(best.clearly_better_than(other) for other in others):
        return Decoded(best.text, best.encodings[0])
    if best.odd > _MOST_ODD:
        raise NotText(
            f"not UTF-8, and no encoding reads it as the text of one language (the closest, "
            f"{_describe(best)}); save it as UTF-8 and add it again"
        )
    rival = next(other for other in others if not best.clearly_better_than(other))
    raise NotText(
        f"not UTF-8, and its encoding cannot be told for certain: it reads as "
        f"{_describe(best, rival)} or as {_describe(rival, best)}; save it as UTF-8 "
        "and add it again"
    )


def _excerpt(data: bytes) -> bytes:
    """`data`, or for a large file `_EXCERPTS` slices of it from start to end, each cut at
    line ends (a line feed byte never falls inside a character of the encodings read here,
    so every slice decodes as the whole file does)."""
    if len(data) <= _EXCERPTS * _EXCERPT_BYTES:
        return data
    pieces = []
    for n in range(_EXCERPTS):
        start = n * (len(data) - _EXCERPT_BYTES) // (_EXCERPTS - 1)
        if start:
            start = data.find(b"\n", start) + 1 or len(data)
        end = data.find(b"\n", start + _EXCERPT_BYTES)
        pieces.append(data[start : end if end >= 0 else len(data)])
    return b"\n".join(pieces)


def _describe(reading: _Reading, other: _Reading | None = None) -> str:
    """`"Crème brûlée" in cp1252`: where the reading differs from `other`, or its start."""
    text = reading.text
    start = 0
    if other is not None:
        start = next(
            (i for i, (a, b) in enumerate(zip(text, other.text, strict=False)) if a != b), 0
        )
        # back to the start of the word
        while start > 0 and text[start - 1].isalpha():
            start -= 1
    sample = " ".join(text[start : start + _SAMPLE_CHARS].split())
    return f'"{sample}" in {reading.encodings[0]}'


@functools.lru_cache(maxsize=4096)
def _script(letter: str) -> str:
    if not letter:
        return ""
    script = unicodedata.name(letter, "").split(" ", 1)[0]
    return "EAST ASIAN" if script in _EAST_ASIAN else script


def _in_words(text: str) -> list[str]:
    """The words (between spaces, without the ASCII marks around them) that hold a
    non-ASCII character: the only ones a reading's encoding changes. At most `_MOST_WORDS` of
    them, drawn from all over a long text."""
    words = [w.strip(_ASCII_MARKS) for w in text.split() if not w.isascii()]
    if len(words) > _MOST_WORDS:
        # a sample, seeded by the text's size (the same for every reading of the same
        # bytes), drawn at random: an even step can fall in step with a repeated layout
        picked = random.Random(len(words)).sample(range(len(words)), _MOST_WORDS)  # noqa: S311  # a sample, not a secret
        words = [words[i] for i in sorted(picked)]
    return words


def oddness(text: str, words: list[str] | None = None) -> float:
    """The share of a text's non-ASCII letters that are out of place: outside the alphabet
    that fits most of them, in a word of another script, a capital after a small letter, a
    half-width kana, or a symbol inside a word; any control character a text file does not
    hold makes it 1 (not text)."""
    if _CONTROL.search(text):
        return 1.0
    letters: Counter[str] = Counter()
    odd = 0
    for word in _in_words(text) if words is None else words:
        scripts = Counter(_script(c) for c in word if c.isalpha())
        main = scripts.most_common(1)[0][0] if scripts else ""
        before = ""
        for i, c in enumerate(word):
            if c.isalpha():
                if ord(c) > 127:
                    small = c.lower()
                    letters[small if len(small) == 1 else c] += 1
                    if before.islower() and c.isupper():
                        odd += 1
                    if unicodedata.name(c, "").startswith("HALFWIDTH"):
                        odd += 1
                if _script(c) != main and not (main == "EAST ASIAN" and c.isascii()):
                    odd += 1
            elif (
                ord(c) > 127
                and c not in _IN_WORD
                and 0 < i < len(word) - 1
                and not (_script(before) == "EAST ASIAN" == _script(word[i + 1]))
            ):
                odd += 1  # a symbol between two letters
            before = c
    total = sum(letters.values())
    if total == 0:
        return 0.0 if odd == 0 else 1.0
    return min(1.0, (_outside_alphabet(letters) + odd) / total)


def _outside_alphabet(letters: Counter[str]) -> int:
    """How many of the letters the best-fitting alphabet leaves out: a Latin or Cyrillic
    language's, or a whole script's for the others."""
    by_script: Counter[str] = Counter()
    for letter, n in letters.items():
        by_script[_script(letter)] += n
    main = by_script.most_common(1)[0][0]
    if main not in ("LATIN", "CYRILLIC"):
        return sum(n for letter, n in letters.items() if _script(letter) != main)
    best = max(
        sum(n for letter, n in letters.items() if letter in alphabet)
        for alphabet in _ALPHABETS.values()
    )
    return sum(letters.values()) - best

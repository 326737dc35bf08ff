"""A file's bytes as the text its author wrote (`text.decoding`): byte-order marks, UTF-8,
legacy encodings told with certainty, and refusals that say why; never U+FFFD or mojibake
the author did not write."""

from __future__ import annotations

import codecs
import random

import pytest

from deepmemory_service.text.decoding import NUL, NotText, decode

# ruff: noqa: RUF001  # Cyrillic letters are the point of the texts below

RECETTE = (
    "Crème brûlée\n\nIngrédients : 50 cl de crème fraîche, 6 jaunes d'œufs, 100 g de sucre.\n\n"
    "Préchauffer le four à 150 °C. Faire chauffer la crème avec la vanille, puis verser sur "
    "les jaunes battus avec le sucre. Cuire au bain-marie 45 minutes.\n"
)

# texts in the legacy encoding their language was written in, each told with certainty
LEGACY = [
    ("Crème brûlée\n", "latin-1", "cp1252"),
    (RECETTE, "cp1252", "cp1252"),
    ("Grüße aus München. Die Straße ist schön, aber kühl.\n", "latin-1", "cp1252"),
    ("El niño comió piña en la montaña. ¿Dónde está la estación?\n", "latin-1", "cp1252"),
    ("Zażółć gęślą jaźń. Pójdźmyż, kiń tę chmurność w głąb flaszy!\n", "cp1250", "cp1250"),
    ("Příliš žluťoučký kůň úpěl ďábelské ódy. Čeština je krásný jazyk.\n", "cp1250", "cp1250"),
    ("Привет, мир! Это тестовый документ о базах данных и блокировках.\n", "cp1251", "cp1251"),
    ("Привет, мир! Это тестовый документ о базах данных и блокировках.\n", "koi8-r", "koi8_r"),
    ("これは日本語のテキストです。データベースのロックについて。\n", "shift_jis", "cp932"),
    ("这是一个关于数据库锁的中文文档。我们讨论并发控制。\n", "gbk", "gb18030"),
]


@pytest.mark.parametrize(("text", "written_in", "read_as"), LEGACY)
def test_a_legacy_encoding_is_read_as_written(text: str, written_in: str, read_as: str) -> None:
    decoded = decode(text.encode(written_in))
    assert decoded.text == text
    assert decoded.encoding == read_as


@pytest.mark.parametrize(
    ("bom", "codec"),
    [
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
    ],
)
def test_a_byte_order_mark_decides_and_is_not_part_of_the_text(bom: bytes, codec: str) -> None:
    decoded = decode(bom + RECETTE.encode(codec))
    assert (decoded.text, decoded.encoding) == (RECETTE, codec)


def test_utf8_is_utf8_and_a_replacement_character_written_stays() -> None:
    assert decode(b"plain ascii").text == "plain ascii"
    written = "A U+FFFD the author typed: \ufffd, and crème.\n"
    assert decode(written.encode()).text == written
    assert decode(written.encode()).encoding == "utf-8"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00", NUL),
        ("Hello, UTF-16 without a mark\n".encode("utf-16-le"), NUL),
        (b"abc\x00def", NUL),
        (
            codecs.BOM_UTF16_LE + b"A\x00\x00\xdc",
            "it starts with a UTF-16 byte-order mark but is not valid UTF-16 (byte 4)",
        ),
        (
            b"caf\xe9",
            'not UTF-8, and its encoding cannot be told for certain: it reads as "café" in '
            'cp1252 or as "cafķ" in cp775; save it as UTF-8 and add it again',
        ),
        (
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Length 44 >>\nstream\nx\x9c\xcbH\xcd"
            b"\xc9\xc9W(\xcf/\xcaI\x01\x1a\x0b\x04]\nendstream\n",
            None,
        ),
    ],
)
def test_what_is_not_text_or_not_certain_is_refused_saying_why(
    data: bytes, why: str | None
) -> None:
    with pytest.raises(NotText) as refused:
        decode(data)
    if why is not None:
        assert str(refused.value) == why


def test_random_bytes_are_never_read_with_a_replacement_character() -> None:
    rng = random.Random(22)
    for _ in range(300):
        data = bytes(rng.randrange(1, 256) for _ in range(rng.choice([3, 40, 400, 3000])))
        try:
            decoded = decode(data)
        except NotText:
            continue
        assert "\ufffd" not in decoded.text
        # what is decoded is the bytes, exactly
        assert decoded.text.encode(decoded.encoding) == data


def test_a_large_file_is_judged_on_slices_from_start_to_end() -> None:
    # plain ASCII for most of a megabyte; its only Latin-1 letters in the last lines
    ascii_part = "Leases are renewed by heartbeat every ten seconds.\n" * 20_000
    text = ascii_part + RECETTE * 3
    decoded = decode(text.encode("cp1252"))
    assert (decoded.text, decoded.encoding) == (text, "cp1252")
    # and a Cyrillic reading of the same bytes is not taken for it
    russian = ascii_part + "Привет, мир! Это тестовый документ о базах данных.\n" * 3
    assert decode(russian.encode("cp1251")).text == russian

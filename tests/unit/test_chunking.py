"""The chunker: chunks of at most the size, split at sections, neighbours overlapping."""

from __future__ import annotations

from deepmemory_service.text import chunking


def test_chunks_respect_size_sections_and_overlap() -> None:
    text = "# One\n\n" + " ".join(f"word{i}." for i in range(600)) + "\n\n# Two\n\nShort."
    chunks = chunking.split(text, size=500, overlap=50)
    assert all(len(c) <= 500 for c in chunks)
    assert chunks[-1] == "# Two\n\nShort."
    assert not any("# Two" in c for c in chunks[:-1])
    # neighbouring chunks of one section share a little text
    assert chunks[1].split()[0] in chunks[0]
    assert chunking.split("   \n\n  ") == []


def test_texts_without_a_heading_split_as_one_section() -> None:
    """`split` skips the heading regex for texts without "# ": the same chunks."""
    for text in ["C# and F#\n#tag, not a heading", "plain text. " * 200, "a\n# b\nc", "#x y"]:
        by_regex = [
            c for s in chunking._HEADING.split(text) for c in chunking._split_section(s, 300, 40)
        ]
        assert chunking.split(text, 300, 40) == by_regex

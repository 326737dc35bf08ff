"""The named queries of `db/sql/queries.sql`: each says what it does."""

from __future__ import annotations

import re
from importlib import resources


def test_every_query_says_what_it_does() -> None:
    text = resources.files("deepmemory_service.db").joinpath("sql/queries.sql").read_text()
    blocks = re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]
    undescribed = [
        block.partition("\n")[0]
        for block in blocks
        if not block.partition("\n")[2].startswith("-- ")
    ]
    assert blocks
    assert undescribed == []

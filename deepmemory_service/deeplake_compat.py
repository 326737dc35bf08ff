"""The one place that imports deeplake 3.9.x, after quieting what it does at import time.

On import deeplake asks PyPI for its newest version and starts a telemetry reporter.
Neither has any business in a service that may run offline: the reporter honours
humbug's `BUGGER_OFF`, and the version check is skipped while its day-long cache is fresh.

Its S3 module also calls `nest_asyncio.apply()` at import, for Jupyter. That replaces
asyncio's C `Task` with the pure-Python one and patches the event loop, for the whole
process: every request, task step and SSE write gets slower (measured: the loop's time
went to nest_asyncio's `_run_once`). deeplake runs in executor threads here, where no
loop is running, so nothing needs nesting and the call is made a no-op.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

# the deeplake pinned in pyproject.toml
VERSION = "3.9.52"


def _quiet() -> None:
    os.environ.setdefault("BUGGER_OFF", "true")
    cache = Path(os.path.expanduser("~/.activeloop/pypi_version.json"))
    try:
        ours = cache.exists() and json.loads(cache.read_text())[0] == VERSION
        if not ours or time.time() - json.loads(cache.read_text())[1] > 3600:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps([VERSION, time.time()]))
    except (OSError, ValueError, IndexError):
        # a read-only home only costs deeplake's own (time-limited) version check
        pass


def _no_nesting() -> None:
    try:
        nest_asyncio: Any = importlib.import_module("nest_asyncio")
    except ImportError:
        return
    nest_asyncio.apply = lambda *_args, **_kwargs: None


def load() -> ModuleType:
    _quiet()
    _no_nesting()
    import deeplake

    module: ModuleType = deeplake
    return module

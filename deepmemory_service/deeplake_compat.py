"""The one place that imports deeplake 3.9.x, after quieting what it does at import time.

On import deeplake asks PyPI for its newest version and starts a telemetry reporter.
Neither has any business in a service that may run offline: the reporter honours
humbug's `BUGGER_OFF`, and the version check is skipped while its day-long cache is fresh.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import ModuleType

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


def load() -> ModuleType:
    _quiet()
    import deeplake

    module: ModuleType = deeplake
    return module

"""The package as a wheel carries everything the service reads: nothing comes from a checkout.

(`.ci/run` goes further: it installs the wheel into a fresh venv outside the checkout, runs
`migrate` and `serve`, and asks for `/v1/api/healthz`.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from importlib import resources
import deepmemory_service
from deepmemory_service.db import database, migrations
from deepmemory_service.platform.config import load_settings

assert deepmemory_service.__file__.startswith(sys.argv[1]), deepmemory_service.__file__
settings = load_settings({})
assert settings.http.port == 8080, settings.http.port
assert migrations.available(), "no migrations in the wheel"
assert "get_run" in database.queries(), "no queries in the wheel"
package = resources.files("deepmemory_service")
for name in ("gateway/web/deep-memory.html", "gateway/web/deep-memory.js", "db/sql/schema.sql"):
    assert package.joinpath(name).is_file(), name
print("ok")
"""


def test_a_wheel_holds_the_defaults_sql_and_page(tmp_path: Path) -> None:
    # built from a copy: an in-tree build would leave build/ in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "deepmemory_service",
        src / "deepmemory_service",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("deepmemory_service-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPMEMORY_")}
    env["PYTHONPATH"] = str(site)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(site)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (probe.returncode, probe.stdout.strip()) == (0, "ok"), probe.stderr[-2000:]

"""The README's curl walk-through, run as written: its shell blocks are taken from the README
itself (so they cannot drift), pasted into bash against a real `scripts/serve`, and every
reply the README shows (`# → …` lines, `…` standing for ids and times) must be one it got."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from deepmemory_service.testing.client import free_port

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## API walk-through with curl"
# the README's ports, swapped for free ones (other servers may hold 8080 and 8900 here)
PORTS = ("PORT=8080", "LLM_PORT=8900")
SHOWN = "# → "

pytestmark = pytest.mark.slow


def walkthrough(readme: str) -> list[str]:
    """The ```bash blocks of the walk-through section, in order."""
    start = readme.index(SECTION)
    end = readme.index("\n## ", start + len(SECTION))
    return re.findall(r"```bash\n(.*?)```", readme[start:end], flags=re.S)


def shown_replies(script: str) -> list[str]:
    return [line.split(SHOWN, 1)[1] for line in script.splitlines() if SHOWN in line]


def pattern(shown: str) -> re.Pattern[str]:
    """A reply as shown, where `…` stands for any text."""
    return re.compile(".*?".join(re.escape(part) for part in shown.split("…")))


def missing_replies(shown: list[str], output: str) -> list[str]:
    """The shown replies not found in the output, each after the one before it."""
    lines = output.splitlines()
    at, missing = 0, []
    for reply in shown:
        want = pattern(reply)
        for i in range(at, len(lines)):
            if want.fullmatch(lines[i]):
                at = i + 1
                break
        else:
            missing.append(reply)
    return missing


def test_the_matcher_finds_replies_in_order_and_only_whole() -> None:
    out = '{"a": 1, "b": "x"}\nevent: done\n{"c": 2}'
    assert missing_replies(['{"a": …, "b": "…"}', "event: done"], out) == []
    assert missing_replies(["event: done", '{"a": …, "b": "…"}'], out) == ['{"a": …, "b": "…"}']
    assert missing_replies(['{"c": 3}', "event: do"], out) == ['{"c": 3}', "event: do"]


def _stop_embedded_postgres(data_dir: Path) -> None:
    """A server the walk-through could not stop (it failed half-way) would outlive the test."""
    pid_file = data_dir / "postgres" / "postmaster.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = walkthrough((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 2, "the walk-through and the failure recipe"
    script = "\n".join(blocks)
    for assignment in PORTS:
        assert script.count(assignment) == 1, assignment
        name = assignment.split("=")[0]
        script = script.replace(assignment, f"{name}={free_port()}")
    shown = shown_replies(script)
    assert len(shown) >= 20

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPMEMORY_")}
    env["DEEPMEMORY_DATA_DIR"] = str(tmp_path / "var")
    env["DEEPMEMORY_LOG_LEVEL"] = "warning"
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the walk-through did not finish in 240 s:\n{output}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _stop_embedded_postgres(tmp_path / "var")
    missing = missing_replies(shown, output)
    assert not missing, f"replies shown in the README but not given: {missing}\n{output}"
    assert proc.returncode == 0, output

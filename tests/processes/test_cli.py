"""The command line as a user meets it, each command a real process: it works on the instance
`scripts/serve` runs, says which, and answers a mistake with one line and an exit status,
never a traceback."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

from deepmemory_service.gateway.auth import verify
from deepmemory_service.gateway.login import PASTE_FORM
from deepmemory_service.platform.config import load_settings
from deepmemory_service.testing.client import free_port

ROOT = Path(__file__).resolve().parents[2]
USER = "11111111-1111-4111-8111-111111111111"
KEY = "a-key-of-at-least-thirty-two-bytes-for-hs256"


@attrs.frozen
class Ran:
    status: int
    out: str
    err: str

    @property
    def said(self) -> list[str]:
        """The command's own lines on stderr (the JSON log lines left out)."""
        return [line for line in self.err.splitlines() if not line.startswith("{")]


def cli(args: Sequence[str], env: dict[str, str], *, command: Sequence[str] = ()) -> Ran:
    """Runs `deepmemory-service ARGS` (or `command`) with only `env` and the basics set."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DEEPMEMORY_")}
    argv = list(command) or [sys.executable, "-m", "deepmemory_service"]
    done = subprocess.run(
        [*argv, *args],
        env={**base, "DEEPMEMORY_LOG_FORMAT": "json", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Ran(done.returncode, done.stdout, done.stderr)


def test_token_signs_with_the_key_kept_in_the_data_dir(tmp_path: Path) -> None:
    env = {"DEEPMEMORY_DATA_DIR": str(tmp_path)}
    ran = cli(["token", "--user", USER], env)
    assert ran.status == 2
    assert ran.said == [
        "deepmemory-service: no key to sign tokens with: set DEEPMEMORY_SECRET_KEY to the key "
        f"the service uses, or start scripts/serve once (it keeps one in {tmp_path}/secret_key)"
    ]

    (tmp_path / "secret_key").write_text(KEY + "\n")
    ran = cli(["token", "--user", USER, "--ttl", "60"], env)
    assert ran.status == 0, ran.err
    served = load_settings({"DEEPMEMORY_DATA_DIR": str(tmp_path)})
    assert served.secret_key == KEY
    assert str(verify(served, ran.out.strip()).user_id) == USER


def test_the_login_pages_hint_works_as_written(tmp_path: Path) -> None:
    """The command the login page shows, run in the checkout as shown, mints a token the
    instance scripts/serve runs there accepts."""
    hint = re.findall(r"<code[^>]*>(.*?)</code>", PASTE_FORM)[0]
    assert hint.startswith("scripts/deepmemory-service token --user UUID"), hint
    env = {"DEEPMEMORY_DATA_DIR": str(tmp_path)}
    ran = cli(hint.replace("UUID", USER).split(), env, command=["bash", "-c", '"$0" "$@"'])
    assert ran.status == 0, ran.err
    # what scripts/serve would use: the same data dir and the key the wrapper made there
    served = load_settings(env)
    assert str(verify(served, ran.out.strip()).user_id) == USER


@pytest.mark.parametrize("ttl", ["0", "-5", "soon"])
def test_token_refuses_a_lifetime_that_is_not_a_positive_number_of_seconds(ttl: str) -> None:
    ran = cli(["token", "--user", USER, "--ttl", ttl], {"DEEPMEMORY_SECRET_KEY": KEY})
    assert ran.status == 2
    assert ran.said[-1].startswith("deepmemory-service token: error: argument --ttl: ")
    assert ran.out == ""


def test_an_unreachable_database_is_one_line_for_migrate_ingest_and_serve(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # a port nobody listens on while this is held
        dead = f"postgresql://app:hunter2@127.0.0.1:{s.getsockname()[1]}/app"
        env = {"DEEPMEMORY_DATABASE_URL": dead, "DEEPMEMORY_DATA_DIR": str(tmp_path)}
        doc = tmp_path / "a.md"
        doc.write_text("some text")
        for args in (
            ["migrate"],
            ["ingest", str(doc), "--user", USER],
            ["serve", "--port", str(free_port())],
        ):
            ran = cli(args, env)
            assert ran.status == 1, (args, ran.err)
            assert ran.said[-1].startswith(
                "deepmemory-service: cannot connect to the database at "
                "postgresql://app:***@127.0.0.1:"
            ), (args, ran.err)
            assert ran.said[-1].endswith("; check DEEPMEMORY_DATABASE_URL (empty: the embedded "
                                         "PostgreSQL in the data directory)")  # fmt: skip
            assert "hunter2" not in ran.err + ran.out


def test_serve_on_a_busy_port_says_so_before_starting_or_announcing_anything(
    tmp_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ran = cli(["serve", "--demo", "--port", str(port)], {"DEEPMEMORY_DATA_DIR": str(tmp_path)})
    assert ran.status == 1
    assert ran.said == [
        f"deepmemory-service: port {port} is already in use on 127.0.0.1: stop what is "
        "listening there, or choose another port with --port"
    ]
    assert "login" not in ran.out
    assert not (tmp_path / "postgres").exists(), "the embedded database was started"


def test_migrate_says_which_database(database_url: str, tmp_path: Path) -> None:
    ran = cli(["migrate"], {"DEEPMEMORY_DATABASE_URL": database_url})
    assert ran.status == 0, ran.err
    shown = database_url.split("?")[0]
    assert ran.out.startswith("schema is up to date in postgresql://"), ran.out
    assert shown.rsplit("/", 1)[1] in ran.out


def _folder(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".git").mkdir()
    (docs / "a.md").write_text("# Leases\n\nA run's lease is renewed by heartbeat.\n")
    (docs / "sub" / "b.txt").write_text("The sweeper fails runs whose lease expired.\n")
    (docs / "empty.md").write_text("  \n")
    (docs / "binary.txt").write_bytes(b"abc\x00def")
    (docs / "latin1.txt").write_bytes("Crème brûlée à la vanille.\n".encode("latin-1"))
    (docs / "cafe.txt").write_bytes("caf\xe9".encode("latin-1"))
    (docs / "picture.png").write_bytes(b"\x89PNG\r\n")
    (docs / ".git" / "config").write_text("[core]\n")
    return docs


def test_ingest_adds_a_folder_once_and_says_what_it_skipped_and_why(
    database_url: str, tmp_path: Path
) -> None:
    docs = _folder(tmp_path)
    env = {"DEEPMEMORY_DATABASE_URL": database_url, "DEEPMEMORY_DATA_DIR": str(tmp_path / "var")}
    ran = cli(["ingest", str(docs), "--user", USER], env)
    assert ran.status == 1, ran.err  # two files could not be read
    assert ran.said[0].startswith(
        f"deepmemory-service: data directory {tmp_path / 'var'}; database postgresql://"
    ), ran.err
    assert ran.out.splitlines() == [
        f"added 3 file(s), 3 chunks; user {USER} now has 3 chunks",
        f"skipped 1 empty file(s): {docs}/empty.md",
        "skipped 1 file(s) of other types in the folders (accepted: .markdown .md .rst .text "
        f".txt; name a file to read it anyway): {docs}/picture.png",
        f"read 1 file(s) that are not UTF-8 in the encoding that reads them as text: "
        f"{docs}/latin1.txt (cp1252)",
        f"could not add {docs}/binary.txt: it holds NUL bytes: a binary file, or UTF-16 "
        "without a byte-order mark",
        f"could not add {docs}/cafe.txt: not UTF-8, and its encoding cannot be told for "
        'certain: it reads as "café" in cp1252 or as "cafķ" in cp775; save it as UTF-8 and '
        "add it again",
    ]

    again = cli(["ingest", str(docs / "a.md"), str(docs / "sub"), "--user", USER], env)
    assert again.status == 0, again.err
    assert again.out.splitlines() == [
        f"added 0 file(s), 0 chunks; user {USER} now has 3 chunks",
        "skipped 2 unchanged file(s), already added with the same name and text (--force adds "
        f"them again): {docs}/a.md, {docs}/sub/b.txt",
    ]

    (docs / "a.md").write_text("# Leases\n\nA lease is renewed every ten seconds.\n")
    forced = cli(["ingest", str(docs / "a.md"), str(docs / "sub"), "--user", USER, "--force"], env)
    assert forced.status == 0, forced.err
    assert forced.out.splitlines() == [f"added 2 file(s), 2 chunks; user {USER} now has 5 chunks"]


def test_ingest_mistakes_are_usage_errors(tmp_path: Path) -> None:
    env = {"DEEPMEMORY_DATA_DIR": str(tmp_path / "var")}
    ran = cli(["ingest", str(tmp_path / "nowhere"), "--user", USER], env)
    assert (ran.status, ran.said) == (
        2,
        [f"deepmemory-service: no such file or folder: {tmp_path / 'nowhere'}"],
    )
    (tmp_path / "scan.pdf").write_bytes(b"%PDF")
    ran = cli(["ingest", str(tmp_path), "--user", USER], env)
    assert (ran.status, ran.said) == (
        2,
        [
            "deepmemory-service: no text files to add (accepted: .markdown .md .rst .text "
            f".txt); other files: {tmp_path}/scan.pdf"
        ],
    )
    ran = cli(["ingest", str(tmp_path), "--user", "someone"], env)
    assert ran.status == 2
    assert ran.said[-1].endswith("argument --user: not a valid UUID: 'someone'")
    assert not (tmp_path / "var" / "postgres").exists(), "a mistake started the database"


def test_help_explains_every_argument_its_default_and_the_accepted_types() -> None:
    def helped(command: str) -> str:
        return " ".join(cli([command, "--help"], {}).out.split())

    ingest = helped("ingest")
    for text in ("--user UUID", "--force", ".markdown, .md, .rst, .text, .txt", "DEEPMEMORY_"):
        assert text in ingest, text
    token = helped("token")
    assert "default: 86400, one day" in token
    assert "secret_key" in token
    serve = helped("serve")
    for text in ("default: DEEPMEMORY_HTTP_HOST, 127.0.0.1", "default: DEEPMEMORY_HTTP_PORT, 8080"):
        assert text in serve, text


def test_ingest_draws_a_progress_bar_on_a_terminal_and_prints_a_summary_at_the_end(
    database_url: str, tmp_path: Path
) -> None:
    docs = _folder(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("DEEPMEMORY_")}
    env = {**base, "DEEPMEMORY_DATABASE_URL": database_url, "DEEPMEMORY_LOG_FORMAT": "json"}
    terminal, child_end = pty.openpty()
    # a terminal of 80 columns (a new pty has none, and tqdm draws nothing on zero)
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepmemory_service", "ingest", str(docs / "sub"), "--user", USER],
        env={**env, "DEEPMEMORY_DATA_DIR": str(tmp_path / "var")},
        stdout=subprocess.PIPE,
        stderr=child_end,
        text=True,
    )
    os.close(child_end)
    seen = b""
    while True:
        try:
            piece = os.read(terminal, 4096)
        except OSError:  # the child's end closed: it exited
            break
        if not piece:
            break
        seen += piece
    os.close(terminal)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, seen
    drawn = seen.decode(errors="replace")
    assert "ingesting: 100%" in drawn, drawn
    assert "1/1 [" in drawn, drawn
    assert out.splitlines() == [f"added 1 file(s), 1 chunks; user {USER} now has 1 chunks"]

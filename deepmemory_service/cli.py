"""Command line: serve, migrate, ingest, token.

A user's mistake or a problem of the environment is one line on stderr saying what is wrong
and what to do: exit status 2 for a usage or configuration error, 1 for a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from deepmemory_service.platform import logs
from deepmemory_service.platform.config import ConfigError, Settings, load_settings
from deepmemory_service.text.chunking import TEXT_SUFFIXES

USAGE = 2
FAILURE = 1


class CommandError(Exception):
    """What went wrong, for the person at the terminal, with the exit status to end with."""

    def __init__(self, message: str, status: int = FAILURE) -> None:
        super().__init__(message)
        self.status = status


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid UUID: {value!r}") from None


def _seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {value!r}") from None
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 second, got {seconds}")
    return seconds


WHERE = """\
Every command works on one instance: its data directory (DEEPMEMORY_DATA_DIR; in a source
checkout its var/, where scripts/serve keeps it) and its database (DEEPMEMORY_DATABASE_URL;
empty: the embedded PostgreSQL in the data directory). Each command says which it uses."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepmemory-service",
        description="Deep Memory training-data service: serve it, or manage its data.",
        epilog=WHERE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the service (gateway, web page and backend)",
        description="Run the service until Ctrl-C or SIGTERM (running runs are then failed "
        "cleanly, for Proceed after the next start).",
        epilog=WHERE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--host", help="address to listen on (default: DEEPMEMORY_HTTP_HOST, 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, help="port to listen on (default: DEEPMEMORY_HTTP_PORT, 8080)"
    )
    serve.add_argument(
        "--role",
        choices=["all", "backend", "gateway"],
        help="all: gateway and backend in one process (default); backend: the /v1/api only; "
        "gateway: the page and /api, forwarding to --backend-url",
    )
    serve.add_argument("--backend-url", help="the backend a gateway forwards to")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="ingest the bundled demo corpus for a demo user and print a login link",
    )

    sub.add_parser(
        "migrate",
        help="apply database migrations and exit",
        description="Apply the database migrations that are missing, and say which database.",
        epilog=WHERE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    accepted = ", ".join(sorted(TEXT_SUFFIXES))
    ingest = sub.add_parser(
        "ingest",
        help="add text and markdown files to a user's documents",
        description=(
            "Chunk, embed and store text files as a user's documents, as the web page's "
            "upload does. A document whose title (the file name) and text the user already "
            "has is skipped, unless --force. Safe while the service runs."
        ),
        epilog=WHERE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ingest.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help=f"a file (read as UTF-8 text, whatever its name) or a folder, searched "
        f"recursively for {accepted} files (others are listed as skipped)",
    )
    ingest.add_argument(
        "--user", type=_uuid, required=True, metavar="UUID", help="the user who owns them"
    )
    ingest.add_argument(
        "--force",
        action="store_true",
        help="add documents again even when the user already has them unchanged",
    )

    token = sub.add_parser(
        "token",
        help="mint a login token for a user",
        description=(
            "Print a signed login token for a user: paste it into the login page, or open "
            "/login?token=TOKEN. It is signed with DEEPMEMORY_SECRET_KEY or, when that is "
            "empty, the key scripts/serve keeps in the data directory (secret_key)."
        ),
        epilog=WHERE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token.add_argument(
        "--user", type=_uuid, required=True, metavar="UUID", help="the user to log in as"
    )
    token.add_argument(
        "--ttl",
        type=_seconds,
        default=86400,
        metavar="SECONDS",
        help="how long the token is valid (default: 86400, one day)",
    )
    return parser


def _apply_serve_args(settings: Settings, args: argparse.Namespace) -> Settings:
    http = settings.http
    changes = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("role", args.role),
            ("backend_url", args.backend_url),
        )
        if v is not None
    }
    if changes.get("role") == "gateway" and not (changes.get("backend_url") or http.backend_url):
        raise ConfigError("--role gateway needs --backend-url (or DEEPMEMORY_HTTP_BACKEND_URL)")
    if not 1 <= changes.get("port", http.port) <= 65535:
        raise ConfigError("--port must be between 1 and 65535")
    return attrs.evolve(settings, http=attrs.evolve(http, **changes))


def _say(text: str) -> None:
    """What a command tells the person at the terminal, beside its output."""
    print(f"deepmemory-service: {text}", file=sys.stderr, flush=True)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from deepmemory_service import server

    on_ready = None
    if args.demo:
        from deepmemory_service.demo import announce

        on_ready = announce
    try:
        # 1 when the embedded PostgreSQL died for good while serving (it says so in the log)
        return server.serve(settings, on_ready=on_ready)
    except server.PortUnavailable as exc:
        raise CommandError(str(exc)) from None


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from deepmemory_service import server
    from deepmemory_service.db import migrations

    where = server.describe_database(settings)
    with server.database(settings) as resolved:
        applied = asyncio.run(migrations.migrate_url(resolved.database.url))
    if applied:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        print(f"applied {len(applied)} migration(s) to {where}: {names}")
    else:
        print(f"schema is up to date in {where}")
    return 0


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from deepmemory_service import ingest_files, server

    try:
        files = ingest_files.plan(args.paths)
    except ingest_files.NotFound as exc:
        raise CommandError(str(exc), USAGE) from None
    if not files.files:
        accepted = " ".join(sorted(TEXT_SUFFIXES))
        others = (
            f"; other files: {ingest_files.names(files.unsupported)}" if files.unsupported else ""
        )
        raise CommandError(f"no text files to add (accepted: {accepted}){others}", USAGE)
    _say(f"data directory {settings.data_dir}; database {server.describe_database(settings)}")
    server.check_stores(settings)
    with server.database(settings) as resolved:
        return asyncio.run(ingest_files.run(resolved, args.user, files, force=args.force))


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from deepmemory_service.gateway.auth import mint_token
    from deepmemory_service.platform.config import SECRET_KEY_FILE

    if not settings.secret_key:
        raise CommandError(
            "no key to sign tokens with: set DEEPMEMORY_SECRET_KEY to the key the service "
            f"uses, or start scripts/serve once (it keeps one in "
            f"{Path(settings.data_dir) / SECRET_KEY_FILE})",
            USAGE,
        )
    print(mint_token(settings, args.user, args.ttl))
    return 0


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "serve": _serve,
    "migrate": _migrate,
    "ingest": _ingest,
    "token": _token,
}


def main(argv: Sequence[str] | None = None) -> int:
    from deepmemory_service.db.database import DatabaseUnreachable

    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "serve":
            settings = _apply_serve_args(settings, args)
        # ingest draws a progress bar: the per-document log lines would tear it
        level = "warning" if args.command == "ingest" else settings.log_level
        logs.configure(level, settings.log_format)
        return COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        _say(str(exc))
        return USAGE
    except CommandError as exc:
        _say(str(exc))
        return exc.status
    except DatabaseUnreachable as exc:
        _say(str(exc))
        return FAILURE
    except KeyboardInterrupt:
        return 130

"""Command line: serve, migrate, ingest, token."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import attrs

from deepmemory_service import logs
from deepmemory_service.config import ConfigError, Settings, load_settings


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid UUID: {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepmemory-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--role", choices=["all", "backend", "gateway"])
    serve.add_argument("--backend-url", help="the backend a gateway forwards to")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="ingest the bundled demo corpus for a demo user and print a login link",
    )

    sub.add_parser("migrate", help="apply database migrations and exit")

    ingest = sub.add_parser("ingest", help="chunk, embed and store text/markdown files")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--user", type=_uuid, required=True)

    token = sub.add_parser("token", help="mint a signed user token for the gateway")
    token.add_argument("--user", type=_uuid, required=True)
    token.add_argument("--ttl", type=int, default=86400, help="lifetime in seconds")
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
    return attrs.evolve(settings, http=attrs.evolve(http, **changes))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "serve":
            settings = _apply_serve_args(settings, args)
    except ConfigError as exc:
        print(f"deepmemory-service: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)

    if args.command == "serve":
        from deepmemory_service import server

        on_ready = None
        if args.demo:
            from deepmemory_service.demo import announce

            on_ready = announce
        return server.serve(settings, on_ready=on_ready)
    if args.command == "migrate":
        from deepmemory_service import migrations, server

        with server.database(settings) as resolved:
            applied = asyncio.run(migrations.migrate_url(resolved.database.url))
        print(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")
        return 0
    if args.command == "ingest":
        from deepmemory_service import ingest_files, server

        with server.database(settings) as resolved:
            return asyncio.run(ingest_files.run(resolved, args.user, args.paths))
    if args.command == "token":
        from deepmemory_service.app import complete_secrets
        from deepmemory_service.auth import token_command

        if not settings.secret_key:
            print(
                "deepmemory-service: DEEPMEMORY_SECRET_KEY must be set to mint tokens that a "
                "running service accepts",
                file=sys.stderr,
            )
            return 2
        print(token_command(complete_secrets(settings), args.user, args.ttl))
        return 0
    return 2

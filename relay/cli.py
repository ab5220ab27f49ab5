"""``relay serve | demo | migrate | keys create | phone sms``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from aiohttp import web

from relay.config import Settings
from relay.handset.cli import add_phone_call_command
from relay.handset.sms import add_sms_command
from relay.logs import configure as configure_logs


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    # Each command imports what it runs: `relay phone` need not load the whole app.
    from relay.app import create_app

    settings = _settings(args)
    configure_logs(settings.log_level, json=settings.log_json)
    app = create_app(settings)
    # run_app stops on SIGTERM/SIGINT: it closes the listening sockets first, then waits up
    # to shutdown_timeout for requests in flight, then runs cleanup (DB pool close).
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        print=lambda msg: print(msg, file=sys.stderr),
        access_log=None,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from relay.store.db import Database  # as in cmd_serve: only what the command runs

    settings = _settings(args)

    async def run() -> None:
        db = Database(settings.database_url, schema=settings.database_schema)
        try:
            await db.migrate()
        finally:
            await db.close()

    asyncio.run(run())
    print("migrations applied")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    # As in cmd_serve: only what the command runs.
    from relay.auth import create_key
    from relay.store.db import Database

    settings = _settings(args)
    agents = [a for a in (args.agents or "").split(",") if a]
    channels = [c for c in (args.channels or "").split(",") if c]

    async def run() -> str:
        db = Database(settings.database_url, schema=settings.database_schema)
        try:
            await db.migrate()
            async with db.session() as session:
                raw, _ = await create_key(
                    session,
                    args.project,
                    kind="publishable" if args.publishable else "secret",
                    name=args.name,
                    agents=agents or None,
                    channels=channels or None,
                )
            return raw
        finally:
            await db.close()

    try:
        raw = asyncio.run(run())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(raw)
    print("Store this key now: only its hash is kept, it cannot be shown again.", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # As in cmd_serve: the demo loads the speech engines (seconds).
    from relay.demo import DEFAULT_LINES, DemoOptions, run_demo

    options = DemoOptions(
        lines=tuple(args.say or DEFAULT_LINES), serve=args.serve, hosted=args.hosted
    )
    return run_demo(_settings(args), options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, server: bool) -> None:
        p.add_argument("--database-url", help="default: RELAY_DATABASE_URL or ./relay.db")
        if server:
            p.add_argument("--host", help="default 127.0.0.1 (RELAY_HOST)")
            p.add_argument("--port", type=int, help="default 8080 (RELAY_PORT)")

    serve = sub.add_parser("serve", help="run the relay service")
    common(serve, server=True)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser(
        "demo",
        help="run the relay and the example webhook, place a sim call, print the conversation",
    )
    common(demo, server=True)
    demo.add_argument(
        "--say", action="append", metavar="TEXT", help="a caller line (repeat; replaces the 3)"
    )
    demo.add_argument("--serve", action="store_true", help="keep the relay running afterwards")
    demo.add_argument(
        "--hosted", action="store_true", help="the built-in LLM answers instead of the webhook"
    )
    demo.set_defaults(func=cmd_demo)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    common(migrate, server=False)
    migrate.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    common(create, server=False)
    create.add_argument("--project", default="default", help="project name (created if new)")
    create.add_argument("--name", help="a label for the key")
    create.add_argument("--publishable", action="store_true", help="pk_ key, safe in web pages")
    create.add_argument("--agents", help="publishable: comma-separated agent ids it may call")
    create.add_argument("--channels", help="publishable: comma-separated, from web,phone,websocket")
    create.set_defaults(func=cmd_keys_create)

    phone = sub.add_parser("phone", help="a simulated handset on the sim carrier")
    phone_sub = phone.add_subparsers(dest="phone_command", required=True)
    add_phone_call_command(phone_sub)
    add_sms_command(phone_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

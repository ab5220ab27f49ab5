"""``relay serve | demo | migrate | nodes | keys create|list|revoke|rotate|encryption |
phone call|sms``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from relay.config import Settings
from relay.handset.cli import add_phone_call_command
from relay.handset.sms import add_sms_command
from relay.logs import configure as configure_logs
from relay.timefmt import iso

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")
STORE_IT = "Store this key now: only its hash is kept, it cannot be shown again."
CACHED = (
    "A running relay that looked the key up in the last {seconds:g} s may honour it until then."
)


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
    from relay import serve

    settings = _settings(args)
    configure_logs(settings.log_level, json=settings.log_json)
    workers = args.workers if args.workers is not None else settings.workers
    workers = workers or serve.default_workers(settings)
    refused = serve.refusal(settings, workers)
    if refused is not None:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    return serve.run(settings, workers)


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


def _in_session(args: argparse.Namespace, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on the database the flags and RELAY_* name."""
    from relay.store.db import Database  # as in cmd_serve: only what the command runs

    settings = _settings(args)

    async def run() -> T:
        db = Database(settings.database_url, schema=settings.database_schema)
        try:
            await db.migrate()
            async with db.session() as session:
                return await work(session)
        finally:
            await db.close()

    return asyncio.run(run())


def cmd_keys_create(args: argparse.Namespace) -> int:
    from relay.auth import Allowances, create_key  # as in cmd_serve: only what it runs

    agents = _listed(args.agents)
    channels = _listed(args.channels)
    limited = (
        args.allow_variables
        or args.allow_post_call
        or any(x is not None for x in (args.origins, args.destinations, args.max_metadata_bytes))
    )

    async def work(session: AsyncSession) -> str:
        allowances = (
            Allowances.checked(
                origins=_listed(args.origins),
                destinations=_listed(args.destinations) if args.destinations else None,
                variables=args.allow_variables,
                post_call=args.allow_post_call,
                max_metadata_bytes=args.max_metadata_bytes,
            )
            if args.publishable or limited  # a secret key with them: create_key refuses
            else None
        )
        raw, _ = await create_key(
            session,
            args.project,
            kind="publishable" if args.publishable else "secret",
            name=args.name,
            agents=agents or None,
            channels=channels or None,
            allowances=allowances,
        )
        return raw

    try:
        raw = _in_session(args, work)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(raw)
    print(STORE_IT, file=sys.stderr)
    return 0


def _listed(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def cmd_keys_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select  # as in cmd_serve: only what the command runs

    from relay.store.models import ApiKey, Project, utcnow

    async def work(session: AsyncSession) -> list[list[str]]:
        stmt = select(ApiKey, Project.name).join(Project, Project.id == ApiKey.project_id)
        if args.project:
            stmt = stmt.where(Project.name == args.project)
        now = utcnow()
        rows = []
        for key, project in await session.execute(stmt.order_by(ApiKey.id.desc())):
            if key.revoked_at is None:
                status = "live"
            elif key.revoked_at > now:
                status = "until " + iso(key.revoked_at)
            else:
                status = "revoked " + iso(key.revoked_at)
            rows.append(
                [key.id, project, key.kind, key.hint + "...", key.name or "-", iso(key.created_at)]
                + [status]
            )
        return rows

    rows = _in_session(args, work)
    print("\t".join(["ID", "PROJECT", "KIND", "HINT", "NAME", "CREATED", "STATUS"]))
    for row in rows:
        print("\t".join(row))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from relay.auth import KEY_CACHE_SECONDS, load_key, revoke_key  # as in cmd_serve
    from relay.store.models import utcnow

    async def work(session: AsyncSession) -> str | None:
        key = await load_key(session, args.key_id)
        if key is None:
            return None
        revoke_key(key, utcnow())
        return key.hint

    hint = _in_session(args, work)
    if hint is None:
        print(f"error: no API key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id} ({hint}...)", file=sys.stderr)
    print(CACHED.format(seconds=KEY_CACHE_SECONDS), file=sys.stderr)
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from relay.auth import KEY_CACHE_SECONDS, load_key, rotate_key  # as in cmd_serve
    from relay.store.models import utcnow

    async def work(session: AsyncSession) -> tuple[str, str] | str:
        key = await load_key(session, args.key_id)
        if key is None:
            return f"no API key {args.key_id!r}"
        try:
            raw, new = await rotate_key(session, key, args.grace_seconds, utcnow())
        except ValueError as exc:
            return f"cannot rotate {args.key_id}: {exc}"
        return raw, new.id

    result = _in_session(args, work)
    if isinstance(result, str):
        print(f"error: {result}", file=sys.stderr)
        return 1
    raw, new_id = result
    print(raw)
    print(f"{new_id} replaces {args.key_id}. {STORE_IT}", file=sys.stderr)
    if args.grace_seconds:
        print(f"{args.key_id} still works for {args.grace_seconds} s.", file=sys.stderr)
    else:
        print(CACHED.format(seconds=KEY_CACHE_SECONDS), file=sys.stderr)
    return 0


def cmd_keys_encryption(args: argparse.Namespace) -> int:
    from relay.secretbox import new_key

    print(new_key())
    print(
        "Set it as RELAY_ENCRYPTION_KEY. To rotate, put the new key first and keep the old:"
        " RELAY_ENCRYPTION_KEY=new,old; a start re-encrypts every credential with the new"
        " key, after which the old one can go.",
        file=sys.stderr,
    )
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from relay.calls.nodes import NodeStatus, node_statuses  # as in cmd_serve

    timeout = _settings(args).node_timeout_seconds

    async def work(session: AsyncSession) -> list[NodeStatus]:
        return await node_statuses(session, timeout)

    nodes = _in_session(args, work)
    print("\t".join(["NODE", "ALIVE", "LIVE CALLS", "STARTED", "HEARTBEAT"]))
    for n in nodes:
        alive = "yes" if n.alive else "no"
        print("\t".join([n.id, alive, str(n.live_calls), iso(n.started_at), iso(n.heartbeat_at)]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # As in cmd_serve: the demo loads the speech engines (seconds).
    from relay.demo import DEFAULT_LINES, DemoOptions, run_demo

    options = DemoOptions(
        lines=tuple(args.say or DEFAULT_LINES), serve=args.serve, hosted=args.hosted
    )
    return run_demo(_settings(args), options)


def _grace_seconds(value: str) -> int:
    from relay.auth import MAX_GRACE_SECONDS  # as in cmd_serve: only what the command runs

    seconds = int(value) if value.isdigit() else -1
    if not 0 <= seconds <= MAX_GRACE_SECONDS:
        raise argparse.ArgumentTypeError(f"a whole number of seconds, 0 to {MAX_GRACE_SECONDS}")
    return seconds


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
    serve.add_argument(
        "--workers",
        type=int,
        help="processes sharing the port, each a node (RELAY_WORKERS; default: the number of "
        "cores on PostgreSQL, 1 on SQLite, which allows no more)",
    )
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

    nodes = sub.add_parser("nodes", help="list the relay processes serving this database")
    common(nodes, server=False)
    nodes.set_defaults(func=cmd_nodes)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    common(create, server=False)
    create.add_argument("--project", default="default", help="project name (created if new)")
    create.add_argument("--name", help="a label for the key")
    create.add_argument("--publishable", action="store_true", help="pk_ key, safe in web pages")
    create.add_argument("--agents", help="publishable: comma-separated agent ids it may call")
    create.add_argument(
        "--channels",
        help="publishable: comma-separated, from web,phone,websocket (default web; web calls "
        "are not available on this version yet)",
    )
    create.add_argument(
        "--origins",
        help="publishable: comma-separated web origins that may use it, like "
        "https://example.com (default: none, so no web page may)",
    )
    create.add_argument(
        "--destinations",
        help="publishable, phone: comma-separated E.164 numbers or prefixes like +1415* it may "
        "ring (default: the caller number's country; premium-rate only if listed exactly)",
    )
    create.add_argument(
        "--allow-variables", action="store_true", help="publishable: its calls may send variables"
    )
    create.add_argument(
        "--allow-post-call", action="store_true", help="publishable: its calls may set postCall"
    )
    create.add_argument(
        "--max-metadata-bytes",
        type=int,
        help="publishable: the most metadata (JSON) its calls may carry (default 1024)",
    )
    create.set_defaults(func=cmd_keys_create)
    listing = keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    common(listing, server=False)
    listing.add_argument("--project", help="only this project's keys (default: every project)")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="refuse a key from now on")
    common(revoke, server=False)
    revoke.add_argument("key_id", help="the key's id (key_...), from `relay keys list`")
    revoke.set_defaults(func=cmd_keys_revoke)
    rotate = keys_sub.add_parser("rotate", help="replace a key; print the new one once")
    common(rotate, server=False)
    rotate.add_argument("key_id", help="the key's id (key_...), from `relay keys list`")
    rotate.add_argument(
        "--grace-seconds",
        type=_grace_seconds,
        default=0,
        help="seconds the old key still works (default 0: it stops at once; at most 7 days)",
    )
    rotate.set_defaults(func=cmd_keys_rotate)
    encryption = keys_sub.add_parser(
        "encryption", help="print a new RELAY_ENCRYPTION_KEY (carrier credentials at rest)"
    )
    encryption.set_defaults(func=cmd_keys_encryption)

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

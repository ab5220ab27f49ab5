"""``relay serve --workers N``: N nodes behind one port, refused on SQLite, stopped as one."""

from __future__ import annotations

import asyncio
import re
import sys

import aiohttp
from sqlalchemy import select

from relay.store.models import RelayNode
from tests.cluster.harness import RELAY, Node, node_env, until

NODE_INFO = re.compile(r'relay_node_info\{node_id="([^"]+)"\}')


async def test_workers_are_refused_on_sqlite(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        *RELAY,
        "serve",
        "--workers",
        "2",
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path}/relay.db",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"SQLite allows one writer" in err


async def test_two_workers_share_the_port_as_two_nodes_and_stop_together(database, tmp_path):
    env = await node_env(database, tmp_path)
    node = Node(env, tmp_path / "relay.log", "pair", "--workers", "2")
    try:
        await node.start()

        async def both_serve() -> set[str] | None:
            seen = set()
            # New connections each time: SO_REUSEPORT spreads connections, not requests.
            for _ in range(20):
                async with aiohttp.ClientSession() as http:
                    async with http.get(node.base + "/metrics") as resp:
                        seen.update(NODE_INFO.findall(await resp.text()))
            return seen if seen == {"pair/0", "pair/1"} else None

        await until(both_serve, within=30)

        async def nodes() -> set[str]:
            async with database.session() as session:
                return set((await session.execute(select(RelayNode.id))).scalars())

        assert await until(nodes) == {"pair/0", "pair/1"}
        assert await node.terminate() == 0
        assert await nodes() == set()  # each worker stopped cleanly and said so
    finally:
        await node.stop()
        print(node.log.read_text()[-2000:], file=sys.stderr)

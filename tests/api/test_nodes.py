"""``GET /v1/nodes``: the deployment's nodes, for keys of its admin projects only."""

from __future__ import annotations

from relay.config import Settings


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_an_admin_projects_key_sees_the_nodes_with_their_calls(app_client, raw_key):
    settings = Settings(node_id="node-x", admin_projects="ops, other")
    client = await app_client(settings)
    resp = await client.get("/v1/nodes", headers=bearer(await raw_key("ops")))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert [(n["id"], n["alive"], n["liveCalls"]) for n in body["data"]] == [("node-x", True, 0)]
    assert body["data"][0]["object"] == "node"


async def test_other_projects_keys_are_refused(app_client, raw_key):
    client = await app_client(Settings(node_id="node-x", admin_projects="ops"))
    resp = await client.get("/v1/nodes", headers=bearer(await raw_key("tenant")))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "admin_only"
    resp = await client.get("/v1/nodes", headers=bearer(await raw_key("ops", kind="publishable")))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] != "admin_only"  # refused before: not secret


async def test_no_project_may_by_default(app_client, raw_key):
    client = await app_client(Settings(node_id="node-x"))
    resp = await client.get("/v1/nodes", headers=bearer(await raw_key("default")))
    assert resp.status == 403

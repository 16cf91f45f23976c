"""Who may use the proxy: inbound keys, local clients, loopback, Unix sockets, allow-lists."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import aiohttp
import pytest

from proxy.aiohttp_compat import basic_credentials
from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.server.serve import start

from .conftest import Gateway, ProxyFactory, proxy_config

KEY = "key-8c1d-for-curl"
TOOL_ID, TOOL_SECRET = "dap-cli", "tool-secret-42-0123456789"
TABLES = "/dap/query/canvas/table"


async def status_of(
    http: aiohttp.ClientSession, url: str, method: str = "GET", **kwargs: object
) -> tuple[int, dict[str, object]]:
    async with http.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
        body = await resp.json() if resp.content_type == "application/json" else {}
        return resp.status, body


async def test_access_key_required_for_forwarding(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_ACCESS_KEYS=f"other-key-0123456789,{KEY}")
    seen = len(gateway.state.requests)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        status, body = await status_of(proxy.http, proxy.url + TABLES, headers=headers)
        assert status == 401
        assert body["error"]["type"] == "AuthenticationError"  # type: ignore[index]
    assert len(gateway.state.requests) == seen, "refused requests reach nothing"
    status, _ = await status_of(
        proxy.http, proxy.url + TABLES, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert status == 200
    # The key stays here: the gateway sees the proxy's token.
    assert gateway.state.requests[-1].headers["Authorization"] != f"Bearer {KEY}"
    # Probes need no key.
    assert (await status_of(proxy.http, proxy.url + "/-/healthy"))[0] == 200


async def test_local_clients_log_in_and_use_their_local_token(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(
        gateway.url, DAP_PROXY_LOCAL_CLIENTS=f"{TOOL_ID}:{TOOL_SECRET}", DAP_PROXY_ACCESS_KEYS=KEY
    )

    async def login(client_id: str, secret: str) -> tuple[int, dict[str, object]]:
        return await status_of(
            proxy.http,
            proxy.url + "/ids/auth/login",
            "POST",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_credentials(client_id, secret)},
        )

    assert (await login(TOOL_ID, "wrong"))[0] == 401
    assert (await login("someone-else", TOOL_SECRET))[0] == 401
    status, body = await login(TOOL_ID, TOOL_SECRET)
    assert status == 200
    local = body["access_token"]
    status, _ = await status_of(
        proxy.http, proxy.url + TABLES, headers={"Authorization": f"Bearer {local}"}
    )
    assert status == 200
    # An access key also works as a login secret, so one key serves curl and the dap CLI.
    assert (await login("any-id", KEY))[0] == 200
    # A token the proxy did not sign is refused.
    forged = str(local)[:-4] + ("AAAA" if not str(local).endswith("AAAA") else "BBBB")
    status, _ = await status_of(
        proxy.http, proxy.url + TABLES, headers={"Authorization": f"Bearer {forged}"}
    )
    assert status == 401


def test_non_loopback_listen_needs_auth_or_opt_in() -> None:
    creds = {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "secret"}
    with pytest.raises(ConfigError, match="is not loopback"):
        load_config(None, creds, {"listen": "0.0.0.0:8080"})
    assert load_config(
        None, {**creds, "DAP_PROXY_ALLOW_NON_LOOPBACK": "true"}, {"listen": "0.0.0.0:8080"}
    )
    assert load_config(None, {**creds, "DAP_PROXY_ACCESS_KEYS": KEY}, {"listen": "0.0.0.0:8080"})


def test_secret_files_others_can_read_are_warned_about(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t")
    secret.chmod(0o644)
    keys = tmp_path / "keys"
    keys.write_text("# one key a line\n" + KEY + "\n\nsecond-key-0123456789\n")
    keys.chmod(0o600)
    config = load_config(
        None,
        {
            "DAP_CLIENT_ID": "id",
            "DAP_CLIENT_SECRET_FILE": str(secret),
            "DAP_PROXY_ACCESS_KEYS_FILE": str(keys),
        },
    )
    assert config.access.keys == {KEY: None, "second-key-0123456789": None}
    assert len(config.warnings) == 1
    assert "can be read by other users" in config.warnings[0]
    assert "s3cr3t" not in repr(config) and KEY not in repr(config)


async def test_unix_socket_is_owner_only(gateway: Gateway, tmp_path: Path) -> None:
    socket_path = tmp_path / "proxy.sock"
    config = proxy_config(gateway.url)
    config = load_config(
        None,
        {
            "DAP_CLIENT_ID": config.default_profile.credentials.client_id,  # type: ignore[union-attr]
            "DAP_CLIENT_SECRET": config.default_profile.credentials.client_secret,
        },  # type: ignore[union-attr]
        {"listen": f"unix:{socket_path}", "upstream": gateway.url},
    )
    running = await start(config)
    try:
        await running.first_token()
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket_path))
        ) as http:
            assert (await status_of(http, "http://localhost" + TABLES))[0] == 200
    finally:
        await running.stop()


async def test_method_and_path_allow_lists(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(
        gateway.url, DAP_PROXY_ALLOWED_METHODS="GET,HEAD", DAP_PROXY_ALLOWED_PATHS="/dap/"
    )
    seen = len(gateway.state.requests)
    async with proxy.http.post(
        proxy.url + "/dap/query/canvas/table/accounts/data", json={}
    ) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD"
    status, body = await status_of(proxy.http, proxy.url + "/test/echo/x")
    assert status == 403 and body["error"]["type"] == "PathNotAllowed"  # type: ignore[index]
    assert len(gateway.state.requests) == seen
    assert (await status_of(proxy.http, proxy.url + TABLES))[0] == 200


async def test_allowed_origin_gets_cors(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    origin = "https://notebook.example"
    proxy = await proxy_factory(gateway.url, DAP_PROXY_ALLOWED_ORIGINS=origin)
    async with proxy.http.options(
        proxy.url + TABLES,
        headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
    ) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == origin
    async with proxy.http.get(proxy.url + TABLES, headers={"Origin": origin}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == origin
    async with proxy.http.get(
        proxy.url + TABLES, headers={"Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_extra_allowed_host(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_ALLOWED_HOSTS="proxy,localhost")
    assert (await status_of(proxy.http, proxy.url + TABLES, headers={"Host": "proxy:8080"}))[
        0
    ] == 200
    # Loopback names stay admitted (a page cannot rebind them; health checks use them).
    assert (await status_of(proxy.http, proxy.url + TABLES, headers={"Host": "127.0.0.1"}))[
        0
    ] == 200
    assert (await status_of(proxy.http, proxy.url + TABLES, headers={"Host": "evil.example"}))[
        0
    ] == 403


def test_the_non_loopback_warning_says_what_is_and_is_not_protected() -> None:
    from proxy.server.serve import _exposure

    creds = {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "s"}
    keyed = load_config(None, {**creds, "DAP_PROXY_ACCESS_KEYS": KEY}, {"listen": "0.0.0.0:8080"})
    said = _exposure(keyed)
    assert "only callers with an access key" in said and "any Host is admitted" in said
    assert "not protected: the traffic itself" in said
    open_to_all = load_config(
        None, {**creds, "DAP_PROXY_ALLOW_NON_LOOPBACK": "true"}, {"listen": "0.0.0.0:8080"}
    )
    said = _exposure(open_to_all)
    assert said.startswith("NOT protected: anyone who can reach this port")
    assert "require access_keys" in said

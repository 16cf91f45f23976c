"""Issue 13: the object relay (``object_relay: true``).

Object storage is a stand-in on loopback under the made-up name ``storage.invalid``, which
only the egress proxy (tests/connect_proxy.py) resolves: a relayed download that succeeds
went through it. The storage records every request, so the tests can see that no
credential reached it. The last test runs the official ``dap`` CLI's snapshot through it all.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.admission.access import ANYONE, AccessControl
from proxy.admission.local_tokens import LocalTokenIssuer
from proxy.config.records import AccessConfig, EgressConfig
from proxy.observe.metrics import Metrics
from proxy.sharing.relay import DEFAULT_LIFETIME, ObjectRelay, RelayFilter, url_lifetime
from proxy.simulator import expected_object_bytes

from .conftest import Gateway, GatewayFactory, Proxy, ProxyFactory
from .connect_proxy import ConnectProxy
from .dap_cli import job_directory, ok, run_dap

OBJECT_ID = "job-1/part-00000.tsv.gz"
DATA = bytes(range(256)) * 300  # 76,800 bytes: more than one chunk
SIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={date}&X-Amz-Expires={expires}"
    "&X-Amz-Signature=abc%2Fdef"
)
KEY_A = "relay-key-a-0123456789"
KEY_B = "relay-key-b-0123456789"


@dataclass
class Storage:
    """Object storage and a gateway that hands out its URLs, as two loopback apps."""

    port: int = 0
    seen: list[tuple[str, str, CIMultiDictProxy[str]]] = field(default_factory=list)
    signed_at: str = "20991231T000000Z"  # X-Amz-Date: valid for the whole test run


@pytest.fixture
async def storage(aiohttp_server: Any, tmp_path: Path) -> Storage:
    stored = Storage()
    path = tmp_path / "part-00000.tsv.gz"
    path.write_bytes(DATA)

    async def download(request: web.Request) -> web.StreamResponse:
        stored.seen.append((request.method, request.raw_path, request.headers))
        # FileResponse answers Range (206) and HEAD as S3 does.
        return web.FileResponse(path, headers={"Set-Cookie": "storage=1"})

    app = web.Application()
    app.router.add_get("/bucket/job-1/part-00000.tsv.gz", download)  # GET and HEAD
    server = await aiohttp_server(app)
    stored.port = server.port
    return stored


def _add_object_urls(storage: Storage) -> Any:
    """A gateway route answering object URLs in the documented shape, with more beside."""

    async def object_urls(request: web.Request) -> web.Response:
        query = SIGNED_QUERY.format(date=storage.signed_at, expires=900)
        url = f"http://storage.invalid:{storage.port}/bucket/{OBJECT_ID}?{query}"
        body = {"urls": {OBJECT_ID: {"url": url, "note": "kept"}}, "other": [1, {"a": "é"}]}
        return web.json_response(body)

    @web.middleware
    async def answer_object_urls(request: web.Request, handler: Any) -> web.StreamResponse:
        # Innermost: the simulator's own middlewares (the bearer check) have passed.
        if request.method == "POST" and request.path == "/dap/object/url":
            return await object_urls(request)
        response: web.StreamResponse = await handler(request)
        return response

    def prepare(app: web.Application) -> None:
        app.middlewares.append(answer_object_urls)

    return prepare


@pytest.fixture
async def egress_proxy() -> AsyncIterator[ConnectProxy]:
    connect_proxy = ConnectProxy()
    await connect_proxy.start()
    yield connect_proxy
    await connect_proxy.close()


async def _relay_proxy(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
    **env: str,
) -> tuple[Gateway, Proxy]:
    egress_proxy.hosts["storage.invalid"] = storage.port
    gateway = await gateway_factory(_add_object_urls(storage))
    proxy = await proxy_factory(
        gateway.url,
        DAP_PROXY_OBJECT_RELAY="true",
        HTTP_PROXY=egress_proxy.url,
        NO_PROXY="127.0.0.1",  # the gateway directly; storage only through the egress proxy
        **env,
    )
    return gateway, proxy


async def _object_url(proxy: Proxy, key: str | None = None) -> tuple[dict[str, Any], str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with proxy.http.post(
        proxy.url + "/dap/object/url", json=[{"id": OBJECT_ID}], headers=headers
    ) as response:
        assert response.status == 200
        document: dict[str, Any] = json.loads(await response.read())
    return document, document["urls"][OBJECT_ID]["url"]


async def test_object_urls_are_rewritten_and_relayed_through_the_egress_proxy(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    _, proxy = await _relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    document, url = await _object_url(proxy)
    assert url.startswith(proxy.url + "/-/relay/")
    assert url.endswith("/part-00000.tsv.gz")  # the dap CLI saves under the last segment
    relay_id = URL(url).parts[-2]
    assert len(relay_id) >= 32
    # Everything but the URL is as the gateway sent it.
    assert document["urls"][OBJECT_ID]["note"] == "kept"
    assert document["other"] == [1, {"a": "é"}]

    sent = {"Authorization": "Bearer a-client-credential", "Cookie": "session=client"}
    async with proxy.http.get(url, headers=sent) as response:
        assert response.status == 200
        assert await response.read() == DATA
        assert "Set-Cookie" not in response.headers
    (method, raw_path, received), *_ = storage.seen
    assert method == "GET"
    # The signed query reached storage byte for byte; no credential of any kind did.
    assert raw_path == f"/bucket/{OBJECT_ID}?" + SIGNED_QUERY.format(
        date="20991231T000000Z", expires=900
    )
    for header in ("Authorization", "Cookie", "X-Instauth", "Proxy-Authorization"):
        assert header not in received
    assert egress_proxy.seen == [f"GET http://storage.invalid:{storage.port}{raw_path}"]

    async with proxy.http.get(proxy.url + "/-/metrics") as response:
        metrics = await response.text()
    assert 'proxy_relay_objects_total{profile="default"} 1.0' in metrics
    assert f'proxy_relay_bytes_total{{profile="default"}} {float(len(DATA))}' in metrics


async def test_range_and_head(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    _, proxy = await _relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await _object_url(proxy)
    async with proxy.http.get(url, headers={"Range": "bytes=1000-1999"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 1000-1999/{len(DATA)}"
        assert await response.read() == DATA[1000:2000]
    assert storage.seen[-1][2]["Range"] == "bytes=1000-1999"
    async with proxy.http.head(url) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(DATA))
        assert await response.read() == b""
    assert storage.seen[-1][0] == "HEAD"


async def test_a_relayed_download_is_logged_without_its_id(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unlike probes, a download is logged at info; its id is a credential for the object."""
    caplog.set_level(logging.INFO, "proxy.access")
    _, proxy = await _relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await _object_url(proxy)
    async with proxy.http.get(url) as response:
        assert await response.read() == DATA
    relay_id = URL(url).path.split("/")[3]
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert any(
        line.startswith("GET /-/relay/[id]/") and f" 200 in=0 out={len(DATA)} " in line
        for line in lines
    ), lines
    assert not any(relay_id in line for line in lines)


async def test_unknown_expired_and_foreign_ids_are_404(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    _, proxy = await _relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    for path in (
        "/-/relay/unknown-id",
        # Never an open relay: a URL in the path is just an unknown id.
        f"/-/relay/{URL(f'http://storage.invalid:{storage.port}/bucket/x').raw_path}",
    ):
        async with proxy.http.get(proxy.url + path) as response:
            assert response.status == 404
            error = (await response.json())["error"]
            assert set(error) == {"type", "uuid", "message"}
    storage.signed_at = "20200101T000000Z"  # an expired URL gives an id expired already
    _, url = await _object_url(proxy)
    async with proxy.http.get(url) as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "ObjectNotFound"
    assert storage.seen == []


async def test_ids_are_bound_to_the_caller_with_inbound_authentication(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    _, proxy = await _relay_proxy(
        gateway_factory,
        proxy_factory,
        storage,
        egress_proxy,
        DAP_PROXY_ACCESS_KEYS=f"{KEY_A},{KEY_B}:default",
    )
    _, url = await _object_url(proxy, KEY_A)
    async with proxy.http.get(url) as response:
        assert response.status == 401  # no key: as for any private endpoint
    async with proxy.http.get(url, headers={"Authorization": f"Bearer {KEY_B}"}) as response:
        assert response.status == 404  # another caller's object is not there for it
    async with proxy.http.get(url, headers={"Authorization": f"Bearer {KEY_A}"}) as response:
        assert response.status == 200
        assert await response.read() == DATA
    assert len(storage.seen) == 1
    assert "Authorization" not in storage.seen[0][2]


async def test_without_object_relay_nothing_changes(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
) -> None:
    gateway = await gateway_factory(_add_object_urls(storage))
    proxy = await proxy_factory(gateway.url)
    _, url = await _object_url(proxy)
    assert url.startswith("http://storage.invalid:")
    async with proxy.http.get(proxy.url + "/-/relay/anything") as response:
        assert response.status == 404


def test_url_lifetime() -> None:
    now = 4_102_358_400.0 + 100  # 2099-12-31T00:01:40Z
    aws = URL(
        f"https://s3.example/b/k?{SIGNED_QUERY.format(date='20991231T000000Z', expires=900)}",
        encoded=True,
    )
    assert url_lifetime(aws, now) == 800  # signed 100 s ago, for 900 s
    assert url_lifetime(URL(f"https://s/k?Expires={int(now) + 60}"), now) == 60
    assert url_lifetime(URL("https://s/k?X-Goog-Expires=120"), now) == 120
    assert url_lifetime(URL("https://s/k"), now) == DEFAULT_LIFETIME
    assert url_lifetime(URL(f"https://s/k?Expires={int(now) - 5}"), now) == 0


@pytest.mark.e2e
async def test_dap_snapshot_through_the_relay(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    egress_proxy: ConnectProxy,
    tmp_path: Path,
) -> None:
    """The official client downloads through the proxy, and the proxy through the egress
    proxy: the simulator is known only as gateway.invalid."""
    gateway = await gateway_factory(job_duration=0)
    port = URL(gateway.url).port
    assert port is not None
    egress_proxy.hosts["gateway.invalid"] = port
    proxy = await proxy_factory(
        f"http://gateway.invalid:{port}",
        DAP_PROXY_OBJECT_RELAY="true",
        DAP_PROXY_EGRESS_PROXY=egress_proxy.url,
    )
    ok(
        await run_dap(
            proxy.url,
            "snapshot --namespace canvas --table accounts --format jsonl --output-directory snap",
            cwd=tmp_path,
            client_id="tool",
            secret="tool-secret",
        )
    )
    _, directory = job_directory(tmp_path / "snap")
    files = sorted(directory.iterdir())
    assert files
    for part, path in enumerate(files):
        assert path.name == f"part-{part:05d}.jsonl.gz"
        assert path.read_bytes() == expected_object_bytes(
            gateway.state.settings, "accounts", "jsonl", part
        )
    downloads = gateway.state.requests_to("object")
    assert len(downloads) == len(files)
    assert all("Authorization" not in r.headers for r in downloads)
    assert sum(1 for s in egress_proxy.seen if "/objects/" in s) == len(files)


async def test_storage_unreachable_is_502_without_the_signed_url(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    _, proxy = await _relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await _object_url(proxy)
    egress_proxy.hosts.clear()  # storage.invalid resolves nowhere now
    async with proxy.http.get(url) as response:
        assert response.status == 502
        error = (await response.json())["error"]
    assert error["type"] == "BadGateway"
    assert error["message"].startswith("object storage at storage.invalid could not be reached")
    assert "Signature" not in error["message"]


def test_a_compressed_answer_is_rewritten_and_sent_plain() -> None:
    """The dap CLI asks for gzip: a gateway that compresses its JSON is rewritten too."""
    access = AccessControl(AccessConfig(), LocalTokenIssuer())
    relay = ObjectRelay(EgressConfig(), Metrics(dict), access)
    relay_filter = RelayFilter(relay, "http://127.0.0.1:8080/-/relay/", "default", ANYONE)
    document = {
        "urls": {"a/part-00000.tsv.gz": {"url": "https://s3.example/b/a/part-00000.tsv.gz"}}
    }
    headers = CIMultiDict({"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert relay_filter.wants(200, headers)
    body = relay_filter.apply(200, headers, gzip.compress(json.dumps(document).encode()))
    assert "Content-Encoding" not in headers
    url = json.loads(body)["urls"]["a/part-00000.tsv.gz"]["url"]
    assert url.startswith("http://127.0.0.1:8080/-/relay/")
    assert url.endswith("/part-00000.tsv.gz")
    assert not relay_filter.wants(200, CIMultiDict({"Content-Encoding": "br"}))
    assert not relay_filter.wants(404, CIMultiDict())

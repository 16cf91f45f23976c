"""The object relay's test world: TLS object storage, a gateway that hands out its URLs, an
egress proxy, and a proxy with ``object_relay: true`` in front of them.

Storage listens on loopback with a certificate from a private CA (``ca_file``) for the
made-up name ``storage.invalid``, which only the egress proxy (tests/connect_proxy.py)
resolves: a relayed download that succeeds went through it. Storage records every request,
so the tests can see that no credential reached it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from .conftest import Gateway, GatewayFactory, Proxy, ProxyFactory
from .connect_proxy import ConnectProxy, PrivateCA

OBJECT_ID = "job-1/part-00000.tsv.gz"
DATA = bytes(range(256)) * 300  # 76,800 bytes: more than one chunk
SIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={date}&X-Amz-Expires={expires}"
    "&X-Amz-Signature=abc%2Fdef"
)
HOST = "storage.invalid"


@functools.cache
def _ca() -> PrivateCA:
    # Made on first use: conftest registers this module for every test environment, the
    # official client's too (scripts/check), which has no trustme.
    return PrivateCA()


@dataclass
class Storage:
    """Object storage, and what the gateway's object-URL answers say of it."""

    port: int = 0
    ca_file: str = ""
    seen: list[tuple[str, str, CIMultiDictProxy[str]]] = field(default_factory=list)
    signed_at: str = "20991231T000000Z"  # X-Amz-Date: valid for the whole test run
    count: int = 1  # URLs per answer (part-00000, part-00001...)
    pad: int = 0  # characters of extra query per URL: long URLs, as S3's with a session token
    origin: str = ""  # the URLs' scheme://host:port; default https://storage.invalid:<port>
    status: int = 200  # storage's answer (anything else: a page of its own)
    chunked: bool = False  # the gateway's object-URL answer without a Content-Length
    truncate: bool = False  # storage cuts its connection halfway through the object

    def url(self, number: int = 0) -> str:
        query = SIGNED_QUERY.format(date=self.signed_at, expires=900)
        if self.pad:
            query += "&X-Amz-Security-Token=" + "T" * self.pad
        origin = self.origin or f"https://{HOST}:{self.port}"
        return f"{origin}/bucket/job-1/part-{number:05d}.tsv.gz?{query}"

    def document(self) -> dict[str, Any]:
        urls = {f"job-1/part-{n:05d}.tsv.gz": {"url": self.url(n)} for n in range(self.count)}
        urls.get(OBJECT_ID, {})["note"] = "kept"
        return {"urls": urls, "other": [1, {"a": "é"}]}


async def start_storage(aiohttp_server: Any, tmp_path: Path) -> Storage:
    stored = Storage(ca_file=_ca().pem_file(tmp_path))
    path = tmp_path / "part-00000.tsv.gz"
    path.write_bytes(DATA)

    async def download(request: web.Request) -> web.StreamResponse:
        stored.seen.append((request.method, request.raw_path, request.headers))
        if stored.status != 200:
            page = f"<html><body>storage says {stored.status}</body></html>"
            return web.Response(
                status=stored.status,
                text=page,
                content_type="text/html",
                headers={"Server": "AmazonS3", "Via": "1.1 storage-edge"},
            )
        if stored.truncate:
            response = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
            await response.prepare(request)
            await response.write(DATA[: len(DATA) // 2])
            assert request.transport is not None
            request.transport.abort()
            return response
        # FileResponse answers Range (206) and HEAD as S3 does.
        return web.FileResponse(path, headers={"Set-Cookie": "storage=1", "Server": "AmazonS3"})

    app = web.Application()
    app.router.add_get("/bucket/job-1/{name}", download)  # GET and HEAD
    server = await aiohttp_server(app, ssl=_ca().server_context(HOST, "localhost"))
    stored.port = server.port
    return stored


def object_url_route(storage: Storage) -> Callable[[web.Application], None]:
    """A gateway route answering object URLs in the documented shape, with more beside."""

    async def object_urls(request: web.Request) -> web.StreamResponse:
        body = json.dumps(storage.document()).encode()
        if not storage.chunked:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 16 * 1024):
            await response.write(body[start : start + 16 * 1024])
        await response.write_eof()
        return response

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


async def relay_proxy(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy | None,
    **env: str,
) -> tuple[Gateway, Proxy]:
    """The gateway directly; storage through ``egress_proxy`` (when given)."""
    gateway = await gateway_factory(object_url_route(storage))
    if egress_proxy is not None:
        egress_proxy.hosts[HOST] = storage.port
        env = {"HTTPS_PROXY": egress_proxy.url, "NO_PROXY": "127.0.0.1", **env}
    proxy = await proxy_factory(
        gateway.url,
        DAP_PROXY_OBJECT_RELAY="true",
        DAP_PROXY_CA_FILE=storage.ca_file,
        **env,
    )
    return gateway, proxy


async def object_url(proxy: Proxy, key: str | None = None) -> tuple[dict[str, Any], str]:
    """The rewritten object-URL answer, and its URL for ``OBJECT_ID``."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with proxy.http.post(
        proxy.url + "/dap/object/url", json=[{"id": OBJECT_ID}], headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        document: dict[str, Any] = json.loads(await response.read())
    return document, document["urls"][OBJECT_ID]["url"]


async def error_of(proxy: Proxy, method: str, url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """Status, headers and the ``error`` object of a request expected to fail."""
    async with proxy.http.request(method, url, **kwargs) as response:
        body = await response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"type", "uuid", "message"}
        return response.status, response.headers, body["error"]


# The fixtures every relay test module takes (imported there by name: pytest finds them).
@pytest.fixture
async def storage(aiohttp_server: Any, tmp_path: Path) -> Storage:
    return await start_storage(aiohttp_server, tmp_path)


@pytest.fixture
async def egress_proxy() -> AsyncIterator[ConnectProxy]:
    connect_proxy = ConnectProxy()
    await connect_proxy.start()
    yield connect_proxy
    await connect_proxy.close()

"""Issue 13: the object relay (``object_relay: true``); issue 18: relay URLs that carry their
own state. The test world (TLS storage behind an egress proxy) is tests/relay_support.py.
The last tests run the official ``dap`` CLI's snapshot through it all.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
from multidict import CIMultiDict
from yarl import URL

from proxy.sharing.relay_filter import DEFAULT_LIFETIME, RelayFilter, url_lifetime
from proxy.simulator import expected_object_bytes

from .conftest import GatewayFactory, ProxyFactory
from .connect_proxy import ConnectProxy
from .dap_cli import job_directory, ok, run_dap
from .relay_support import (
    DATA,
    HOST,
    OBJECT_ID,
    SIGNED_QUERY,
    Storage,
    error_of,
    object_url,
    object_url_route,
    relay_proxy,
)


async def test_object_urls_are_rewritten_and_relayed_through_the_egress_proxy(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    document, url = await object_url(proxy)
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
        assert "Server" not in response.headers or "AmazonS3" not in response.headers["Server"]
        assert response.headers["Content-Length"] == str(len(DATA))
    (method, raw_path, received), *_ = storage.seen
    assert method == "GET"
    # The signed query reached storage byte for byte; no credential of any kind did.
    assert raw_path == f"/bucket/{OBJECT_ID}?" + SIGNED_QUERY.format(
        date="20991231T000000Z", expires=900
    )
    for header in ("Authorization", "Cookie", "X-Instauth", "Proxy-Authorization"):
        assert header not in received
    assert egress_proxy.seen == [f"CONNECT {HOST}:{storage.port}"]  # TLS end to end

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
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await object_url(proxy)
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
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await object_url(proxy)
    async with proxy.http.get(url) as response:
        assert await response.read() == DATA
    relay_id = URL(url).path.split("/")[3]
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert any(
        line.startswith("GET /-/relay/[id]/") and f" 200 in=0 out={len(DATA)} " in line
        for line in lines
    ), lines
    assert not any(relay_id in line for line in lines)


async def test_unknown_tampered_and_expired_ids(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await object_url(proxy)
    relay_id = URL(url).parts[-2]
    flipped = relay_id[:40] + ("A" if relay_id[40] != "A" else "B") + relay_id[41:]
    for path in (
        "/-/relay/unknown-id",
        f"/-/relay/{flipped}/part-00000.tsv.gz",  # one character changed
        f"/-/relay/{relay_id[:-4]}/part-00000.tsv.gz",  # cut short
        # Never an open relay: a URL in the path is just an unknown id.
        f"/-/relay/{URL(f'https://{HOST}:{storage.port}/bucket/x').raw_path}",
    ):
        status, headers, error = await error_of(proxy, "GET", proxy.url + path)
        assert status == 404, path
        assert error["type"] in ("ObjectNotFound", "NotFound")
        assert headers["X-Request-Id"] == error["uuid"]
    storage.signed_at = "20200101T000000Z"  # an expired URL gives an id expired already
    _, url = await object_url(proxy)
    status, _, error = await error_of(proxy, "GET", url)
    assert (status, error["type"]) == (410, "ObjectURLExpired")
    assert "ask for the object's URL again" in error["message"]
    assert storage.seen == []


async def test_with_access_keys_a_relay_url_needs_no_key(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    """A capability, as the pre-signed URL it stands for: the dap CLI downloads without
    credentials, so the relay serves it on a team proxy with access keys on."""
    key = "relay-key-a-0123456789"
    _, proxy = await relay_proxy(
        gateway_factory, proxy_factory, storage, egress_proxy, DAP_PROXY_ACCESS_KEYS=key
    )
    async with proxy.http.post(proxy.url + "/dap/object/url", json=[{"id": OBJECT_ID}]) as r:
        assert r.status == 401  # asking for URLs still needs a key
    _, url = await object_url(proxy, key)
    async with proxy.http.get(url) as response:
        assert response.status == 200
        assert await response.read() == DATA
    assert "Authorization" not in storage.seen[0][2]


async def test_without_object_relay_nothing_changes(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
) -> None:
    gateway = await gateway_factory(object_url_route(storage))
    proxy = await proxy_factory(gateway.url)
    _, url = await object_url(proxy)
    assert url.startswith(f"https://{HOST}:")
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
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await object_url(proxy)
    egress_proxy.hosts.clear()  # storage.invalid resolves nowhere now
    async with proxy.http.get(url) as response:
        assert response.status == 502
        error = (await response.json())["error"]
    assert error["type"] == "BadGateway"
    assert error["message"].startswith("object storage at storage.invalid could not be reached")
    assert "Signature" not in error["message"]


def test_a_compressed_answer_is_rewritten_and_sent_plain() -> None:
    """The dap CLI asks for gzip: a gateway that compresses its JSON is rewritten too."""
    sealed: list[tuple[str, str]] = []

    def seal(url: str, profile: str) -> str:
        sealed.append((url, profile))
        return "sealed-id"

    relay_filter = RelayFilter(seal, "http://127.0.0.1:8080/-/relay/", "default")
    storage_url = "https://s3.example/b/a/part-00000.tsv.gz"
    document = {"urls": {"a/part-00000.tsv.gz": {"url": storage_url}}}
    headers = CIMultiDict({"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert relay_filter.wants(200, headers)
    body = relay_filter.apply(200, headers, gzip.compress(json.dumps(document).encode()))
    assert "Content-Encoding" not in headers
    url = json.loads(body)["urls"]["a/part-00000.tsv.gz"]["url"]
    assert url == "http://127.0.0.1:8080/-/relay/sealed-id/part-00000.tsv.gz"
    assert sealed == [(storage_url, "default")]
    assert not relay_filter.wants(404, CIMultiDict())

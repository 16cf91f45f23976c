"""Operations: metrics, status, request ids, JSON logs, the token command."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import jwt
import pytest
from yarl import URL

from proxy import __version__
from proxy.observe.logs import JsonFormatter
from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

from .conftest import Gateway, Proxy, ProxyFactory
from .test_cli import finish, run_proxy
from .waiting import until

TABLES = "/dap/query/canvas/table"


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in the Prometheus text format."""
    for line in metrics.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', metric))
        if metric.partition("{")[0] == name and found == labels:
            return float(value)
    raise AssertionError(f"no sample {name}{labels}")


async def test_metrics_count_requests_tokens_and_bytes(gateway: Gateway, proxy: Proxy) -> None:
    for _ in range(3):
        async with proxy.http.get(proxy.url + TABLES) as resp:
            assert resp.status == 200
    async with proxy.http.get(proxy.url + "/test/echo/x?secret-query=1") as resp:
        assert resp.status == 200
    async with proxy.http.post(proxy.url + "/test/echo/up", data=b"x" * 1000) as resp:
        assert resp.status == 200
    async with proxy.http.get(URL(proxy.url + "/dap/%2e%2e/x", encoded=True)) as resp:
        assert resp.status == 400
    async with proxy.http.get(proxy.url + "/-/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        metrics = await resp.text()
    assert (
        sample(metrics, "proxy_requests_total", method="GET", status_class="2xx", profile="default")
        == 4
    )
    assert (
        sample(metrics, "proxy_requests_total", method="GET", status_class="4xx", profile="default")
        == 1
    )
    assert sample(metrics, "proxy_received_bytes_total", profile="default") == 1000
    assert sample(metrics, "proxy_sent_bytes_total", profile="default") > 0
    assert sample(metrics, "proxy_token_refreshes_total", profile="default", outcome="success") == 1
    assert 3500 < sample(metrics, "proxy_token_expires_in_seconds", profile="default") <= 3599
    assert sample(metrics, "proxy_request_duration_seconds_count", profile="default") == 6
    assert sample(metrics, "proxy_upstream_duration_seconds_count", profile="default") == 5
    assert sample(metrics, "proxy_token_request_duration_seconds_count", profile="default") == 1
    assert sample(metrics, "proxy_requests_in_flight") == 0
    assert "/test/echo" not in metrics and "secret-query" not in metrics, "never the raw path"


async def test_status_reports_the_token_state_but_never_the_token(
    gateway: Gateway, proxy: Proxy
) -> None:
    async with proxy.http.get(proxy.url + TABLES) as resp:
        assert resp.status == 200
    async with proxy.http.get(proxy.url + "/-/status") as resp:
        assert resp.status == 200
        raw = await resp.read()
    status = json.loads(raw)
    assert status["version"] == __version__
    assert status["upstream"].startswith(gateway.url)
    assert status["ready"] is True
    assert status["requests_served"] >= 1
    profile = status["profiles"]["default"]
    assert profile["ready"] is True
    assert 3500 < profile["expires_in"] <= 3599
    assert profile["last_refresh"]["outcome"] == "success"
    assert profile["scope"]["region"] == "us-east-1"
    assert set(profile["scope"]) == {"service", "principal", "partner", "region"}
    token = proxy.tokens.state.token
    assert token is not None and token.access_token.encode() not in raw


async def test_request_ids_go_upstream_and_back(gateway: Gateway, proxy: Proxy) -> None:
    async with proxy.http.get(
        proxy.url + "/test/echo/id", headers={"X-Request-Id": "ticket-42.a"}
    ) as resp:
        assert resp.headers["X-Request-Id"] == "ticket-42.a"
        seen = dict((k.lower(), v) for k, v in (await resp.json())["headers"])
    assert seen["x-request-id"] == "ticket-42.a"
    # A hostile or missing id is replaced with one of ours.
    async with proxy.http.get(
        proxy.url + "/test/echo/id", headers={"X-Request-Id": "bad id\twith spaces"}
    ) as resp:
        assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", resp.headers["X-Request-Id"])
    async with proxy.http.get(URL(proxy.url + "/dap/%2e%2e/y", encoded=True)) as resp:
        body = await resp.json()
        assert body["error"]["uuid"] == resp.headers["X-Request-Id"]


async def test_access_log_lines_as_json(
    gateway: Gateway, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    async with proxy.http.get(
        proxy.url + TABLES + "?since=private", headers={"X-Request-Id": "r-1"}
    ) as resp:
        assert resp.status == 200
    (record,) = [r for r in caplog.records if r.name == "proxy.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "info" and line["logger"] == "proxy.access"
    assert line["method"] == "GET"
    assert line["path"] == TABLES, "no query string: it can carry data"
    assert line["status"] == 200
    assert line["request_id"] == "r-1"
    assert line["profile"] == "default"
    assert line["bytes_out"] > 0 and line["duration_ms"] > 0 and line["upstream_ms"] > 0
    assert "since=private" not in json.dumps(line)


async def test_token_command_prints_a_valid_token(gateway: Gateway) -> None:
    process = await run_proxy(
        "token",
        "--upstream",
        gateway.url,
        env={"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr
    token = stdout.decode().strip()
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == DEMO_CLIENT_ID
    assert token not in stderr.decode()


async def test_token_command_rejected_exits_3(gateway: Gateway) -> None:
    process = await run_proxy(
        "token",
        "--upstream",
        gateway.url,
        env={"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": "wrong-secret"},
    )
    status, stderr = await finish(process)
    assert status == 3
    assert "rejected the proxy's client credentials" in stderr


async def test_buffered_access_log_batches_lines_in_the_logging_format() -> None:
    import io
    import logging as logging_module

    from proxy.observe.logs import BufferedAccessLog

    stream = io.StringIO()
    text = BufferedAccessLog(stream, "info", "text")
    assert not text.enabled(logging_module.DEBUG) and text.enabled(logging_module.INFO)
    text.write(logging_module.INFO, "GET /dap/x 200", {"status": 200})
    text.write(logging_module.INFO, "GET /dap/y 404", {"status": 404})
    assert stream.getvalue() == "", "lines are held back, not written one by one"
    await until(lambda: stream.getvalue() != "", "the batch flushed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO proxy\.access: GET /dap/x 200", lines[0]
    )

    stream = io.StringIO()
    as_json = BufferedAccessLog(stream, "info", "json")
    as_json.write(logging_module.INFO, "GET /dap/x 200", {"status": 200, "request_id": "r"})
    as_json.flush()
    line = json.loads(stream.getvalue())
    assert line["level"] == "info" and line["logger"] == "proxy.access"
    assert line["message"] == "GET /dap/x 200" and line["status"] == 200
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    # a full buffer is written at once
    for _ in range(BufferedAccessLog.FLUSH_BYTES // 10):
        as_json.write(logging_module.INFO, "x" * 20, {})
    assert len(stream.getvalue()) > BufferedAccessLog.FLUSH_BYTES
    as_json.flush()


# ====================================================================== issue 20: the words


async def test_ready_answers_with_the_callers_request_id(
    gateway: Gateway, proxy_factory: ProxyFactory, unused_tcp_port: int
) -> None:
    ready = await proxy_factory(gateway.url)
    async with ready.http.get(ready.url + "/-/ready", headers={"X-Request-Id": "etl-42"}) as r:
        assert (r.status, r.headers["X-Request-Id"]) == (200, "etl-42")
    async with ready.http.get(ready.url + "/-/ready") as resp:
        own = resp.headers["X-Request-Id"]
    async with ready.http.get(ready.url + TABLES) as resp:
        forwarded = resp.headers["X-Request-Id"]
    # The same form as every other answer's: the process's prefix and a counter.
    assert own.rpartition("-")[0] == forwarded.rpartition("-")[0]
    not_ready = await proxy_factory(f"http://127.0.0.1:{unused_tcp_port}", wait_for_token=False)
    headers = {"X-Request-Id": "etl-43"}
    async with not_ready.http.get(not_ready.url + "/-/ready", headers=headers) as resp:
        assert resp.status == 503
        assert resp.headers["X-Request-Id"] == "etl-43"
        assert (await resp.json())["error"]["uuid"] == "etl-43"


async def test_an_unknown_profile_is_named_with_the_ones_there_are(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(
        gateway.url,
        DAP_PROXY_PROFILE_YALE_CLIENT_ID=DEMO_CLIENT_ID,
        DAP_PROXY_PROFILE_YALE_CLIENT_SECRET=DEMO_CLIENT_SECRET,
    )
    expected = (
        "no profile 'yael' (the first path segment names one, or a gateway path such as "
        "/dap/...): the profiles are default, yale"
    )
    for path in ("/yael/dap/query/canvas/table", "/-/ready/yael"):
        async with proxy.http.get(proxy.url + path, headers={"X-Request-Id": "x-1"}) as resp:
            assert resp.status == 404
            error = (await resp.json())["error"]
        assert (error["type"], error["message"], error["uuid"]) == (
            "UnknownProfile",
            expected,
            "x-1",
        )


async def test_the_public_ready_names_no_profiles_to_a_stranger(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    key = "a-long-enough-access-key-0123"
    proxy = await proxy_factory(
        gateway.url,
        DAP_PROXY_ACCESS_KEYS=key,
        DAP_PROXY_PROFILE_YALE_CLIENT_ID=DEMO_CLIENT_ID,
        DAP_PROXY_PROFILE_YALE_CLIENT_SECRET=DEMO_CLIENT_SECRET,
    )
    async with proxy.http.get(proxy.url + "/-/ready/yael") as resp:
        message = (await resp.json())["error"]["message"]
    assert resp.status == 404
    assert message.startswith("no profile 'yael'") and "yale" not in message
    headers = {"Authorization": f"Bearer {key}"}
    async with proxy.http.get(proxy.url + "/-/ready/yael", headers=headers) as resp:
        assert (await resp.json())["error"]["message"].endswith("the profiles are default, yale")

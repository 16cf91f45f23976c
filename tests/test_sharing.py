"""One proxy shared by a team (issue 14): the gateway's rate limits kept for everyone, and
table lists and schemas answered from a cache. Against the simulator with its own rate
limits on, with windows of a second or two so that the suite stays fast."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.simulator import expected_object_bytes

from .conftest import Gateway, GatewayFactory, Proxy, ProxyFactory
from .dap_cli import job_directory, ok, run_dap

CREATE = "/dap/query/canvas/table/accounts/data"
TABLES = "/dap/query/canvas/table"
SCHEMA = "/dap/query/canvas/table/accounts/schema"
WINDOW = "1"  # seconds: the simulator's and the proxy's


def shaped(**env: str) -> dict[str, str]:
    """Shaping and the cache on (the product's default; conftest turns them off)."""
    return {
        "DAP_PROXY_RATE_LIMITS_ENABLED": "true",
        "DAP_PROXY_CACHE_ENABLED": "true",
        "DAP_PROXY_RATE_LIMITS_WINDOW": WINDOW,
        **env,
    }


@pytest.fixture
async def limited(gateway_factory: GatewayFactory) -> Gateway:
    """A simulator that enforces the documented limits, per second instead of per minute."""
    return await gateway_factory(rate_limits=True, rate_window=float(WINDOW), job_duration=0)


async def create_job(proxy: Proxy) -> tuple[int, CIMultiDict[str], bytes]:
    async with proxy.http.post(proxy.url + CREATE, json={"format": "jsonl"}) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if found == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def metrics(proxy: Proxy) -> str:
    async with proxy.http.get(proxy.url + "/-/metrics") as resp:
        return await resp.text()


# ---------------------------------------------------------------------------- shaping


async def test_a_burst_over_the_limit_finishes_with_no_gateway_429(
    limited: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Twelve job creations at once against a limit of five a window: every one succeeds,
    the proxy holds the extra ones, and the gateway never says 429."""
    caplog.set_level(logging.INFO, "proxy.access")
    proxy = await proxy_factory(limited.url, **shaped())
    answers = await asyncio.gather(*(create_job(proxy) for _ in range(12)))
    assert [status for status, _, _ in answers] == [200] * 12, answers
    assert len(limited.state.requests_to("create_job")) == 12
    text = await metrics(proxy)
    labels = {"profile": "default", "endpoint": "create_job"}
    assert metric(text, "proxy_rate_limit_gateway_429_total", **labels) == 0
    assert metric(text, "proxy_rate_limit_held_total", **labels) >= 7
    assert metric(text, "proxy_rate_limit_wait_seconds_total", **labels) > 0
    assert any(re.search(r"POST \S+/data 200 .* held=\d", r.getMessage()) for r in caplog.records)


async def test_no_slot_in_time_is_a_local_429_with_an_exact_retry_after(
    limited: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(
        limited.url, **shaped(DAP_PROXY_RATE_LIMITS_MAX_WAIT="0", DAP_PROXY_RATE_LIMITS_WINDOW="30")
    )
    for _ in range(5):
        assert (await create_job(proxy))[0] == 200
    status, headers, body = await create_job(proxy)
    assert status == 429
    error = json.loads(body)["error"]
    assert error["type"] == "TooManyRequests"
    assert set(error) == {"type", "uuid", "message"}  # the shape the dap CLI parses
    assert "rate limit for create job" in error["message"]
    assert 29 <= int(headers["Retry-After"]) <= 31  # when the first of the five leaves
    assert len(limited.state.requests_to("create_job")) == 5  # nothing sent over the limit
    async with proxy.http.get(proxy.url + "/-/status") as resp:
        budgets = (await resp.json())["profiles"]["default"]["rate_limits"]
    assert budgets["create_job"] == 0 and budgets["get_job"] == 500


async def test_a_gateway_429_pauses_the_class_and_is_relayed_when_the_wait_runs_out(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory
) -> None:
    """Someone else spends the same client id's budget: the gateway's 429 (Retry-After:
    a minute) is relayed, and the class is paused: nothing more is sent meanwhile."""
    gateway = await gateway_factory(rate_limits=True, rate_window=60.0, job_duration=0)
    for _ in range(5):  # another tool, with the same credentials, not through this proxy
        gateway.state.limiter.hit(("us-east-1#demo-client", "create_job"), 5, time.time())
    proxy = await proxy_factory(
        gateway.url, **shaped(DAP_PROXY_RATE_LIMITS_MAX_WAIT="5", DAP_PROXY_RATE_LIMITS_WINDOW="60")
    )
    status, headers, _ = await create_job(proxy)
    assert status == 429 and "Retry-After" in headers  # the gateway's own, relayed
    status, _, body = await create_job(proxy)
    assert status == 429 and json.loads(body)["error"]["type"] == "TooManyRequests"
    assert len(gateway.state.requests_to("create_job")) == 1  # the pause held the second
    text = await metrics(proxy)
    labels = {"profile": "default", "endpoint": "create_job"}
    assert metric(text, "proxy_rate_limit_gateway_429_total", **labels) == 1
    assert metric(text, "proxy_rate_limit_local_429_total", **labels) == 1


async def test_a_gateway_429_with_a_short_retry_after_is_waited_out_not_relayed(
    limited: Gateway, proxy_factory: ProxyFactory
) -> None:
    """The proxy thinks it has room (its limit set above the gateway's); the gateway's 429
    says wait a second, which the request's own wait allows: it goes again and succeeds."""
    proxy = await proxy_factory(limited.url, **shaped(DAP_PROXY_RATE_LIMITS_CREATE_JOB="50"))
    answers = await asyncio.gather(*(create_job(proxy) for _ in range(7)))
    assert [status for status, _, _ in answers] == [200] * 7
    text = await metrics(proxy)
    assert (
        metric(text, "proxy_rate_limit_gateway_429_total", profile="default", endpoint="create_job")
        >= 1
    )


async def test_shaping_can_be_turned_off(limited: Gateway, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(limited.url, **shaped(DAP_PROXY_RATE_LIMITS_ENABLED="false"))
    statuses = [
        status for status, _, _ in await asyncio.gather(*(create_job(proxy) for _ in range(7)))
    ]
    assert statuses.count(429) == 2  # the gateway's own refusals reach the client


async def test_several_dap_snapshots_at_once_through_one_proxy_all_finish(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """Seven official clients at once: more job creations than a window allows. Without
    shaping, the CLI retries a 429 three times and fails the table; here all finish.

    The gateway's window is 10 % shorter than the proxy's here: with one-second windows the
    proxy's 2 % margin is 20 ms, less than a busy test machine's scheduling jitter between
    the proxy letting a request go and the simulator counting it (60 s windows in service
    give 1.2 s)."""
    limited = await gateway_factory(rate_limits=True, rate_window=0.9, job_duration=0)
    proxy = await proxy_factory(limited.url, **shaped())

    async def snapshot(number: int) -> Path:
        output = tmp_path / f"run{number}"
        ok(
            await run_dap(
                proxy.url,
                f"snapshot --namespace canvas --table accounts --format jsonl "
                f"--output-directory {output}",
                cwd=tmp_path,
                client_id="tool",
                secret="tool",
            )
        )
        return output

    outputs = await asyncio.gather(*(snapshot(n) for n in range(7)))
    expected = expected_object_bytes(limited.state.settings, "accounts", "jsonl", 0)
    for output in outputs:
        _, directory = job_directory(output)
        assert (directory / "part-00000.jsonl.gz").read_bytes() == expected
    text = await metrics(proxy)
    assert (
        metric(text, "proxy_rate_limit_gateway_429_total", profile="default", endpoint="create_job")
        == 0
    )


# ---------------------------------------------------------------------------- the cache


async def get(proxy: Proxy, path: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    # Header names case-insensitive, as on the wire: aiohttp 3.14's client spells some of them
    # its own way (X-Request-ID).
    async with proxy.http.get(proxy.url + path, headers=headers) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def test_table_lists_and_schemas_come_from_the_cache_byte_for_byte(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "proxy.access")
    proxy = await proxy_factory(gateway.url, **shaped())
    first = await get(proxy, TABLES)
    second = await get(proxy, TABLES)
    assert first[0] == second[0] == 200 and first[2] == second[2]
    assert "Age" not in first[1] and int(second[1]["Age"]) >= 0
    assert first[1]["X-Request-Id"] != second[1]["X-Request-Id"]  # each its own id
    assert len(gateway.state.requests_to("list_tables")) == 1
    for _ in range(3):
        assert (await get(proxy, SCHEMA))[0] == 200
    assert len(gateway.state.requests_to("get_schema")) == 1
    text = await metrics(proxy)
    assert metric(text, "proxy_cache_hits_total", profile="default", endpoint="list_tables") == 1
    assert metric(text, "proxy_cache_misses_total", profile="default", endpoint="get_schema") == 1
    assert metric(text, "proxy_cache_hits_total", profile="default", endpoint="get_schema") == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert any(line.startswith(f"GET {TABLES} 200") and "cache=hit" in line for line in lines)


async def test_no_cache_goes_upstream_and_refreshes_the_entry(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, **shaped())
    await get(proxy, TABLES)
    refreshed = await get(proxy, TABLES, **{"Cache-Control": "no-cache"})
    assert "Age" not in refreshed[1]
    assert len(gateway.state.requests_to("list_tables")) == 2
    assert "Age" in (await get(proxy, TABLES))[1]
    assert len(gateway.state.requests_to("list_tables")) == 2


async def test_the_cache_key_holds_what_changes_the_answer_and_entries_expire(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, **shaped(DAP_PROXY_CACHE_LIST_TABLES="0.3"))
    await get(proxy, TABLES)
    await get(proxy, TABLES, **{"Accept-Encoding": "gzip"})  # another representation
    await get(proxy, TABLES + "?x=1")  # another query
    assert len(gateway.state.requests_to("list_tables")) == 3
    await asyncio.sleep(0.4)  # past the 0.3 s the entry lives: a miss (no timing asserted)
    await get(proxy, TABLES)
    assert len(gateway.state.requests_to("list_tables")) == 4


async def test_only_complete_200_answers_are_kept(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, **shaped())
    gateway.state.faults.api_statuses = [503]
    assert (await get(proxy, TABLES))[0] == 503
    assert (await get(proxy, TABLES))[0] == 200  # not the 503 from memory
    assert len(gateway.state.requests_to("list_tables")) == 2


async def test_profiles_never_share_cached_answers(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory
) -> None:
    alpha = await gateway_factory(clients={"us-east-1#alpha": "a-secret"})
    beta = await gateway_factory(clients={"us-east-1#beta": "b-secret"})
    proxy = await proxy_factory(
        alpha.url,
        **shaped(
            DAP_PROXY_PROFILE_ALPHA_CLIENT_ID="us-east-1#alpha",
            DAP_PROXY_PROFILE_ALPHA_CLIENT_SECRET="a-secret",
            DAP_PROXY_PROFILE_BETA_CLIENT_ID="us-east-1#beta",
            DAP_PROXY_PROFILE_BETA_CLIENT_SECRET="b-secret",
            DAP_PROXY_PROFILE_BETA_UPSTREAM=beta.url,
        ),
    )
    for name in ("alpha", "beta", "alpha", "beta"):
        assert (await get(proxy, f"/{name}{TABLES}"))[0] == 200
    assert len(alpha.state.requests_to("list_tables")) == 1
    assert len(beta.state.requests_to("list_tables")) == 1


async def test_the_cache_can_be_turned_off(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(gateway.url, **shaped(DAP_PROXY_CACHE_ENABLED="false"))
    for _ in range(3):
        await get(proxy, TABLES)
    assert len(gateway.state.requests_to("list_tables")) == 3


async def test_a_client_that_hangs_up_while_queued_leaves_the_queue(
    limited: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(limited.url, **shaped(DAP_PROXY_RATE_LIMITS_WINDOW="30"))
    for _ in range(5):
        await create_job(proxy)
    waiting = asyncio.create_task(create_job(proxy))
    for _ in range(100):  # until the proxy holds it
        if "proxy_rate_limit_queued{" in (text := await metrics(proxy)) and metric(
            text, "proxy_rate_limit_queued", profile="default", endpoint="create_job"
        ):
            break
        await asyncio.sleep(0.02)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for _ in range(100):
        text = await metrics(proxy)
        if not metric(text, "proxy_rate_limit_queued", profile="default", endpoint="create_job"):
            break
        await asyncio.sleep(0.02)
    assert metric(text, "proxy_rate_limit_queued", profile="default", endpoint="create_job") == 0
    assert len(limited.state.requests_to("create_job")) == 5


async def test_a_stranger_cannot_read_the_budgets_when_keys_are_required(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    key = "a-key-of-enough-length"
    proxy = await proxy_factory(gateway.url, **shaped(DAP_PROXY_ACCESS_KEYS=key))
    async with proxy.http.get(proxy.url + "/-/status") as resp:
        assert resp.status == 401
    async with (
        aiohttp.ClientSession() as http,
        http.get(proxy.url + "/-/status", headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        assert "rate_limits" in (await resp.json())["profiles"]["default"]


async def test_requests_answered_503_for_want_of_a_token_spend_no_slot(
    limited: Gateway, proxy_factory: ProxyFactory
) -> None:
    """Nothing reached the gateway, so nothing counts against its limit."""
    limited.state.faults.token_statuses = [500] * 50
    proxy = await proxy_factory(
        limited.url,
        wait_for_token=False,
        **shaped(DAP_PROXY_RATE_LIMITS_MAX_WAIT="0", DAP_PROXY_RATE_LIMITS_WINDOW="60"),
    )
    for _ in range(7):
        assert (await get(proxy, SCHEMA))[0] == 503
    async with proxy.http.get(proxy.url + "/-/status") as resp:
        budgets = (await resp.json())["profiles"]["default"]["rate_limits"]
    assert budgets["get_schema"] == 500


async def test_a_queued_request_whose_client_hangs_up_mid_body_is_never_sent(
    limited: Gateway, proxy_factory: ProxyFactory
) -> None:
    """Issue 19, item 5: a job creation with a large Content-Length, part of its body sent
    (enough that the proxy stops reading: flow control), queued for a slot; the client hangs
    up. The proxy drops it: the gateway never receives it and the budget is not spent."""
    proxy = await proxy_factory(limited.url, **shaped(DAP_PROXY_RATE_LIMITS_WINDOW="2"))
    for _ in range(5):
        assert (await create_job(proxy))[0] == 200
    url = URL(proxy.url)
    _, writer = await asyncio.open_connection(url.host, url.port)
    head = (
        f"POST {CREATE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: 50000000\r\n\r\n"
    )
    # 600 KB: more than aiohttp reads before it pauses (so only the socket tells of the
    # close), less than loopback's buffers hold (so the FIN is not stuck behind unsent
    # bytes, which no server can see past: the README says so). 1 MB failed 1 run in 10.
    writer.write(head.encode() + b" " * 600_000)  # never the rest
    await asyncio.wait_for(writer.drain(), 10)
    labels = {"profile": "default", "endpoint": "create_job"}
    text = ""
    for _ in range(200):  # until the proxy holds it
        if metric(text := await metrics(proxy), "proxy_rate_limit_queued", **labels):
            break
        await asyncio.sleep(0.02)
    assert metric(text, "proxy_rate_limit_queued", **labels) == 1
    writer.close()  # a FIN behind a megabyte the proxy has not read
    await writer.wait_closed()
    for _ in range(200):
        if not metric(text := await metrics(proxy), "proxy_rate_limit_queued", **labels):
            break
        await asyncio.sleep(0.02)
    assert metric(text, "proxy_rate_limit_queued", **labels) == 0
    await asyncio.sleep(2.5)  # past the moment its slot would have freed
    assert len(limited.state.requests_to("create_job")) == 5
    async with proxy.http.get(proxy.url + "/-/status") as resp:
        budgets = (await resp.json())["profiles"]["default"]["rate_limits"]
    assert budgets["create_job"] == 5  # the window has passed; nothing new was admitted


@pytest.mark.parametrize(("vary", "sent"), [("Accept, X-Who", 3), ("Accept-Encoding", 1)])
async def test_answers_that_vary_on_request_headers_are_not_cached(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory, vary: str, sent: int
) -> None:
    """Issue 19, item 10: an answer with ``Vary: Accept, X-Who`` kept for one caller would be
    served to the others; only ``Accept-Encoding`` (part of the cache key) may vary."""

    async def add_vary(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == TABLES:
            response.headers["Vary"] = vary

    gateway = await gateway_factory(lambda app: app.on_response_prepare.append(add_vary))
    proxy = await proxy_factory(gateway.url, **shaped())
    for who in ("a", "b", "c"):
        status, headers, _ = await get(proxy, TABLES, **{"X-Who": who})
        assert status == 200 and headers["Vary"] == vary
    assert len(gateway.state.requests_to("list_tables")) == sent


async def test_a_gateway_retry_after_is_honoured_only_up_to_the_cap(
    limited: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19, item 13: one ``Retry-After: 864000`` would pause job creation for ten days;
    capped at ``retry_after_cap`` (1 s here), the request waits it out and goes again."""
    limited.state.faults.api_statuses = [429]
    limited.state.faults.retry_after = 864000
    proxy = await proxy_factory(
        limited.url, **shaped(DAP_PROXY_RETRY_AFTER_CAP="1", DAP_PROXY_RATE_LIMITS_MAX_WAIT="5")
    )
    caplog.set_level(logging.WARNING, "proxy.shaping")
    status, _, _ = await create_job(proxy)
    assert status == 200  # without the cap: the gateway's 429, the class paused for days
    assert len(limited.state.requests_to("create_job")) == 2
    capped = [r.getMessage() for r in caplog.records if "retry_after_cap" in r.getMessage()]
    assert len(capped) == 1 and "864000 s" in capped[0] and "pausing 1 s" in capped[0]

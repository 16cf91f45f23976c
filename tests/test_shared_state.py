"""Replicas as one proxy through Redis (issue 18, shared_state): two proxies in this process
(two "replicas"), one real redis-server (tests/redis_server.py), the simulator enforcing the
gateway's limits. Windows of a second keep the suite fast."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.errors import ConfigError

from .conftest import Gateway, GatewayFactory, Proxy, ProxyFactory
from .redis_server import RedisServer, redis_server
from .test_sharing import TABLES, create_job, get, metric, metrics, shaped

__all__ = ["redis_server"]  # the fixture, used by name below

PASSWORD = "s3cret-redis-password-for-tests"
CREDS = {"DAP_CLIENT_ID": "us-east-1#demo-client", "DAP_CLIENT_SECRET": "demo-secret"}


def shared(server: RedisServer, **env: str) -> dict[str, str]:
    return shaped(DAP_PROXY_SHARED_STATE=server.url, **env)


def plain(text: str, name: str) -> float:
    """A metric without labels."""
    found = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert found, f"{name} not in the metrics"
    return float(found[0].rsplit(" ", 1)[1])


async def status(proxy: Proxy) -> dict[str, object]:
    async with proxy.http.get(proxy.url + "/-/status") as resp:
        answer: dict[str, object] = await resp.json()
        return answer


async def state_of(proxy: Proxy) -> dict[str, object]:
    found = (await status(proxy))["shared_state"]
    assert isinstance(found, dict)
    return found


async def until_shared(proxy: Proxy, up: bool) -> None:
    for _ in range(400):  # the watcher retries within 2 s
        if (await state_of(proxy))["up"] is up:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"shared_state never became {'up' if up else 'down'}")


async def test_two_replicas_keep_one_budget_for_job_creations(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory, redis_server: RedisServer
) -> None:
    """Eight job creations at once, spread over two replicas, against a gateway that allows
    five a window: five go, three wait for the next window, zero gateway 429s. (Each replica
    on its own would send its four at once: eight, three of them refused.) The gateway's
    window is 10 % shorter than the proxies': see test_sharing's several-snapshots test."""
    limited = await gateway_factory(rate_limits=True, rate_window=0.9, job_duration=0)
    replicas = [await proxy_factory(limited.url, **shared(redis_server)) for _ in range(2)]
    answers = await asyncio.gather(*(create_job(replicas[n % 2]) for n in range(8)))
    assert [status for status, _, _ in answers] == [200] * 8, answers
    assert len(limited.state.requests_to("create_job")) == 8
    labels = {"profile": "default", "endpoint": "create_job"}
    held = 0.0
    for replica in replicas:
        text = await metrics(replica)
        assert metric(text, "proxy_rate_limit_gateway_429_total", **labels) == 0
        assert plain(text, "proxy_shared_state_up") == 1
        held += metric(text, "proxy_rate_limit_held_total", **labels)
    assert held == 3  # the three over the limit, whichever replica they came to


async def test_replicas_share_the_metadata_cache(
    gateway: Gateway, proxy_factory: ProxyFactory, redis_server: RedisServer
) -> None:
    first, second = [await proxy_factory(gateway.url, **shared(redis_server)) for _ in range(2)]
    status, _, body = await get(first, TABLES)
    assert status == 200
    for _ in range(200):  # the entry is written to Redis in the background
        if await redis_server.command("KEYS", "*:cache:*") != b"*0":
            break
        await asyncio.sleep(0.01)
    status, headers, again = await get(second, TABLES)
    assert status == 200 and again == body and "Age" in headers
    assert len(gateway.state.requests_to("list_tables")) == 1  # the second replica asked Redis
    text = await metrics(second)
    assert metric(text, "proxy_cache_hits_total", profile="default", endpoint="list_tables") == 1


async def test_redis_away_slow_or_stopped_then_back(
    limited_gateway: Gateway,
    proxy_factory: ProxyFactory,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis frozen (it accepts connections and never answers), then stopped, then started
    again on the same port: every request succeeds throughout on the replica's own budget
    and cache; /-/status and the metrics say so; the proxy reconnects and shares again."""
    caplog.set_level(logging.INFO, "proxy.shared_state")
    proxy = await proxy_factory(limited_gateway.url, **shared(redis_server))
    assert (await create_job(proxy))[0] == 200
    assert (await state_of(proxy))["up"] is True

    redis_server.freeze()  # slow: each call gives up after its 100 ms
    assert (await create_job(proxy))[0] == 200
    assert (await get(proxy, TABLES))[0] == 200
    await until_shared(proxy, up=False)
    redis_server.thaw()
    await redis_server.stop()
    for _ in range(3):
        assert (await create_job(proxy))[0] == 200
        assert (await get(proxy, TABLES))[0] == 200
    found = await status(proxy)
    problems = found["problems"]
    assert isinstance(problems, list)
    assert [p["task"] for p in problems] == ["shared_state"]
    text = await metrics(proxy)
    assert plain(text, "proxy_shared_state_up") == 0
    assert plain(text, "proxy_shared_state_errors_total") >= 1
    async with proxy.http.get(proxy.url + "/-/ready") as resp:
        assert resp.status == 200 and "shared_state" in (await resp.text())
    warnings = [r for r in caplog.records if r.name == "proxy.shared_state" and r.levelno > 20]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()  # once an episode

    await redis_server.start()  # the same port
    await until_shared(proxy, up=True)
    assert (await create_job(proxy))[0] == 200
    assert await redis_server.command("KEYS", "*:slots") != b"*0"  # shared again
    assert (await status(proxy))["problems"] == []
    assert plain(await metrics(proxy), "proxy_shared_state_up") == 1
    assert any("reachable again" in r.getMessage() for r in caplog.records)


@pytest.fixture
async def limited_gateway(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory(rate_limits=True, rate_window=1.0, job_duration=0)


async def test_the_redis_password_is_never_shown(
    gateway: Gateway,
    proxy_factory: ProxyFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """From a file (shared_state_password_file) or in the URL, right or wrong: never in a
    log line, /-/status, the metrics or the configuration's repr."""
    caplog.set_level(logging.DEBUG)
    server = RedisServer(tmp_path, password=PASSWORD)
    await server.start()
    try:
        secret_file = tmp_path / "redis-password"
        secret_file.write_text(PASSWORD + "\n")
        secret_file.chmod(0o600)
        good = await proxy_factory(
            gateway.url,
            **shared(server, DAP_PROXY_SHARED_STATE_PASSWORD_FILE=str(secret_file)),
        )
        wrong = await proxy_factory(
            gateway.url,
            **shaped(DAP_PROXY_SHARED_STATE=f"redis://:{PASSWORD}-wrong@127.0.0.1:{server.port}/0"),
        )
        assert (await state_of(good))["up"] is True
        assert (await state_of(wrong))["up"] is False
        assert (await get(wrong, TABLES))[0] == 200  # on its own
        shown = [json.dumps(await status(p)) + await metrics(p) for p in (good, wrong)]
        assert "redis://:***@127.0.0.1" in shown[1]
        config = load_config(
            None, {**CREDS, "DAP_PROXY_SHARED_STATE": f"redis://u:{PASSWORD}@127.0.0.1:1/2"}
        )
        everything = [*shown, repr(config), *(r.getMessage() for r in caplog.records)]
        everything += [str(r.args) for r in caplog.records]
        assert not [text for text in everything if PASSWORD in text]
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:6379", "expected redis://"),
        ("redis://127.0.0.1:6379/zero", "database number"),
        ("redis://127.0.0.1:99999/0", "expected redis://"),
        ("redis://127.0.0.1:6379/0?x=1", "without a query"),
    ],
)
def test_a_bad_shared_state_url_is_refused_naming_the_setting(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(None, {**CREDS, "DAP_PROXY_SHARED_STATE": value.replace("6379", "6379")})
    message = str(refused.value)
    assert "shared_state:" in message and expected in message
    assert "DAP_PROXY_SHARED_STATE" in message


def test_the_shared_state_settings_load() -> None:
    config = load_config(None, {**CREDS, "DAP_PROXY_SHARED_STATE": "rediss://u:pw@redis.example/3"})
    assert config.shared_state is not None
    assert config.shared_state.shown == "rediss://u:***@redis.example:6379/3"
    assert load_config(None, CREDS).shared_state is None
    with pytest.raises(ConfigError, match="shared_state is not"):
        load_config(None, {**CREDS, "DAP_PROXY_SHARED_STATE_PASSWORD_FILE": "/nonexistent"})


async def test_a_client_that_hangs_up_gives_its_shared_slot_back(
    limited_gateway: Gateway, proxy_factory: ProxyFactory, redis_server: RedisServer
) -> None:
    """A job creation waiting for a slot reserved in Redis: its client hangs up, the slot is
    given back (the other replicas may use it) and nothing is sent."""
    proxy = await proxy_factory(
        limited_gateway.url, **shared(redis_server, DAP_PROXY_RATE_LIMITS_WINDOW="30")
    )
    for _ in range(5):
        assert (await create_job(proxy))[0] == 200
    slots = "\"return redis.call('ZCARD', redis.call('KEYS', '*:slots')[1])\""
    assert await redis_server.command("EVAL", slots, "0") == b":5"
    waiting = asyncio.create_task(create_job(proxy))
    labels = {"profile": "default", "endpoint": "create_job"}
    for _ in range(200):
        if metric(await metrics(proxy), "proxy_rate_limit_queued", **labels):
            break
        await asyncio.sleep(0.01)
    assert await redis_server.command("EVAL", slots, "0") == b":6"  # its slot, reserved
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for _ in range(200):
        if await redis_server.command("EVAL", slots, "0") == b":5":
            break
        await asyncio.sleep(0.01)
    assert await redis_server.command("EVAL", slots, "0") == b":5"
    assert metric(await metrics(proxy), "proxy_rate_limit_queued", **labels) == 0
    assert len(limited_gateway.state.requests_to("create_job")) == 5


async def test_a_flapping_redis_is_logged_once_a_minute(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that comes and goes (answers PING, then refuses or stalls) is one warning and
    one recovery line, not two lines every few seconds."""
    from yarl import URL

    from proxy.config.records import SharedStateConfig
    from proxy.observe.background import Supervisor
    from proxy.sharing.shared_state import SharedState

    caplog.set_level(logging.DEBUG, "proxy.shared_state")
    state = SharedState(SharedStateConfig(URL(redis_server.url)), Supervisor())
    await state.start()
    try:
        for _ in range(3):
            redis_server.freeze()
            assert not await state.check()
            redis_server.thaw()
            assert await state.check()
    finally:
        await state.close()
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len([m for m in loud if "unreachable" in m]) == 1
    assert len([m for m in loud if "reachable again" in m]) == 1
    assert state.errors == 3

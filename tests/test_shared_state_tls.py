"""Shared state over TLS (``rediss://``): a Redis whose certificate a private CA signed is
trusted through ``ca_file``, as the gateway is (trust.py); its host name is checked too. A
real ``redis-server`` serving TLS only, on a loopback port; the CA is ``trustme``'s."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import trustme
from yarl import URL

from proxy.config.records import SharedStateConfig, TrustConfig
from proxy.observe.background import Supervisor
from proxy.sharing.shared_state import SharedState

from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name below

# redis-py before 6 reports a failed handshake as a timeout; since, in OpenSSL's words.
SAYS_WHY = int(redis.__version__.split(".")[0]) >= 6


async def tls_redis(directory: Path, ca: trustme.CA, *names: str) -> RedisServer:
    leaf = ca.issue_cert(*names)
    leaf.cert_chain_pems[0].write_to_path(directory / "redis.pem")
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(directory / "redis.pem", append=True)
    leaf.private_key_pem.write_to_path(directory / "redis.key")
    probe = ssl.create_default_context()
    ca.configure_trust(probe)
    probe.check_hostname = False  # the helper's own probe only: the proxy's checks names
    server = RedisServer(directory, tls=probe)
    await server.start()
    return server


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(path)
    return str(path)


@pytest.fixture
async def redis_for_127(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[RedisServer]:
    server = await tls_redis(tmp_path, ca, "127.0.0.1")
    yield server
    await server.stop()


async def connect(url: str, trust: TrustConfig) -> SharedState:
    state = SharedState(SharedStateConfig(URL(url), timeout=2.0), Supervisor(), trust)
    await state.start()
    return state


async def test_a_redis_signed_by_a_private_ca_is_trusted_through_ca_file(
    redis_for_127: RedisServer, ca_file: str
) -> None:
    state = await connect(redis_for_127.url, TrustConfig(ca_file=ca_file))
    try:
        assert state.up, state.problem
        assert await state.call(lambda redis: redis.set("iap-tls", "1")) is True
        assert await redis_for_127.command("GET", "iap-tls") == b"$1"
    finally:
        await state.close()


async def test_without_the_ca_it_is_not_trusted(redis_for_127: RedisServer) -> None:
    state = await connect(redis_for_127.url, TrustConfig())
    try:
        assert not state.up
        assert state.problem is not None
        assert "certificate verify failed" in state.problem or not SAYS_WHY
    finally:
        await state.close()


async def test_a_certificate_for_another_name_is_refused(
    tmp_path: Path, ca: trustme.CA, ca_file: str
) -> None:
    # Signed by the trusted CA, but for another host: only the name check refuses it
    # (redis-py before 6 made none unless asked).
    server = await tls_redis(tmp_path, ca, "redis.example")
    try:
        state = await connect(server.url, TrustConfig(ca_file=ca_file))
        try:
            assert not state.up
            assert state.problem is not None
            assert "certificate" in state.problem or not SAYS_WHY
        finally:
            await state.close()
    finally:
        await server.stop()


async def test_a_plain_redis_at_a_rediss_url_is_down_not_hung(
    redis_server: RedisServer,
) -> None:
    # The handshake meets a server that speaks no TLS: down within the call's timeout.
    url = redis_server.url.replace("redis://", "rediss://")
    state = SharedState(SharedStateConfig(URL(url), timeout=0.5), Supervisor(), TrustConfig())
    async with asyncio.timeout(10):  # a hang fails here (redis-py 5.0.1 hung for good)
        await state.start()
    try:
        assert not state.up and state.problem is not None
    finally:
        await state.close()


async def test_a_ca_file_gone_since_loading_is_a_down_redis_not_a_failed_start(
    redis_for_127: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = str(tmp_path / "removed-ca.pem")
    state = await connect(redis_for_127.url, TrustConfig(ca_file=gone))
    try:
        assert not state.up and state.problem is not None
        assert f"cannot read {gone}" in caplog.text
    finally:
        await state.close()

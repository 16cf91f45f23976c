"""The local token endpoint: the gateway's shape, local JWTs, malformed logins."""

from __future__ import annotations

import base64

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.admission.access import AccessControl
from proxy.admission.login import LocalTokenIssuer, LoginHandler
from proxy.admission.routing import ProfileRouter
from proxy.config import AccessConfig, Profile

from .fakes import FakeClock

LOGIN = "/ids/auth/login"


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


async def login_client(aiohttp_client, issuer: LocalTokenIssuer) -> TestClient:  # type: ignore[no-untyped-def]
    app = web.Application()
    access = AccessControl(AccessConfig(), issuer)
    profile = Profile(URL("http://127.0.0.1:1"), URL("http://127.0.0.1:1/ids/auth/login"), None)
    router = ProfileRouter({"default": profile})
    handler = LoginHandler(issuer, access, router, scope=lambda _: "canvas region:us-east-1")
    app.router.add_post(LOGIN, handler.login)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def test_login_answers_exactly_the_gateway_shape(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    issuer = LocalTokenIssuer(wall_clock=clock.time)
    client = await login_client(aiohttp_client, issuer)
    resp = await client.post(
        LOGIN,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic("us-east-1#tool", "anything")},
    )
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"access_token", "expires_in", "scope", "token_type"}
    assert body["token_type"] == "bearer"
    assert body["scope"] == "canvas region:us-east-1"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "us-east-1#tool"
    # Well past the official client's 5-minute re-login window.
    assert claims["exp"] - clock.time() == body["expires_in"] == 3600
    assert issuer.verify(body["access_token"]) is not None


async def test_local_tokens_expire_and_are_checked_by_signature() -> None:
    clock = FakeClock()
    issuer = LocalTokenIssuer(wall_clock=clock.time)
    token = issuer.issue("tool")
    assert issuer.verify(token) is not None
    assert LocalTokenIssuer(wall_clock=clock.time).verify(token) is None  # another key
    forged = jwt.encode({"sub": "tool", "exp": 2_000_000_000}, "x" * 32, algorithm="HS256")
    assert issuer.verify(forged) is None
    clock.advance(3600)
    assert issuer.verify(token) is None


async def test_login_without_basic_credentials_is_401(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await login_client(aiohttp_client, LocalTokenIssuer())
    for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": "Basic !!!"}):
        resp = await client.post(LOGIN, data={"grant_type": "client_credentials"}, headers=headers)
        assert resp.status == 401
        body = await resp.json()
        assert set(body["error"]) == {"type", "uuid", "message"}
        assert body["error"]["type"] == "AuthenticationError"


async def test_a_client_id_longer_than_the_bound_is_refused(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    """Each local token carries its client id; the verified-token cache holds 4,096 tokens:
    kilobyte-long ids (any id logs in without authentication) would make it tens of MB."""
    client = await login_client(aiohttp_client, LocalTokenIssuer())
    form = {"grant_type": "client_credentials"}
    resp = await client.post(LOGIN, data=form, headers={"Authorization": basic("x" * 257, "s")})
    assert resp.status == 401
    assert (await resp.json())["error"]["message"] == (
        "the client id is longer than 256 characters"
    )
    resp = await client.post(LOGIN, data=form, headers={"Authorization": basic("x" * 256, "s")})
    assert resp.status == 200


async def test_login_with_wrong_grant_type_is_400(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await login_client(aiohttp_client, LocalTokenIssuer())
    for data in ({}, {"grant_type": "password"}):
        resp = await client.post(
            LOGIN, data=data, headers={"Authorization": basic("tool", "secret")}
        )
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "ValidationError"

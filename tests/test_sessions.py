"""Local sessions (issues 18 and 19): tokens signed with keys derived from the credentials,
valid across restarts and replicas; a key ring across rotations; tokens that die with their
grant; a throttle per address only; local client secrets as strong as keys."""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import signal
import sys
from pathlib import Path

import aiohttp
import jwt
import pytest
from yarl import URL

from proxy.admission.access import GRANT_GONE, AccessControl, Caller, Refusal
from proxy.admission.local_tokens import (
    EXPIRED,
    MAX_RETIRED_KEYS,
    UNKNOWN_KEY,
    LocalTokenIssuer,
    derive_key,
    signing_secrets,
)
from proxy.aiohttp_compat import basic_credentials
from proxy.cli import main as cli
from proxy.config import AccessConfig, Credentials, Profile, load_config
from proxy.errors import ConfigError
from proxy.server.reload import Reloader
from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

from .conftest import Gateway, ProxyFactory
from .fakes import FakeClock
from .test_errors import closed_port

KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"
ETL, ETL_SECRET = "etl", "etl-secret-0123456789"
TOOL, TOOL_SECRET = "tool", "tool-secret-0123456789"
TABLES = "/dap/query/canvas/table"
LOGIN = "/ids/auth/login"


SECRET_ONE = "secret-one-0123456789"


def profiles(secret: str = SECRET_ONE, *names: str) -> dict[str, Profile]:
    url = URL("http://127.0.0.1:1")
    return {
        name: Profile(url, url / "ids/auth/login", Credentials(f"id-{name}", secret), name)
        for name in (names or ("default",))
    }


def access(keys: tuple[str, ...] = (KEY_A, KEY_B), **clients: str) -> AccessConfig:
    return AccessConfig(
        {key: None for key in keys}, {cid: (secret, None) for cid, secret in clients.items()}
    )


def bearer(token: str) -> str:
    return f"Bearer {token}"


def log_in(control: AccessControl, issuer: LocalTokenIssuer, client_id: str, secret: str) -> str:
    caller = control.login(client_id, secret)
    assert caller is not None
    return issuer.issue(client_id, "default", caller.via)


# ====================================================================== keys


def test_signing_keys_are_derived_per_secret_profile_and_label() -> None:
    key = derive_key("secret-one-0123456789", "default", "id-default")
    assert key == derive_key("secret-one-0123456789", "default", "id-default"), "deterministic"
    assert len(key) == 32
    assert b"secret-one" not in key
    others = {
        derive_key("secret-two-0123456789", "default", "id-default"),  # another secret
        derive_key("secret-one-0123456789", "yale", "id-default"),  # another profile
        derive_key("secret-one-0123456789", "default", "id-yale"),  # another client id
        derive_key("secret-one-0123456789", "local_token_key_file"),  # the key file's label
    }
    assert key not in others and len(others) == 4
    both = signing_secrets(profiles("secret-one-0123456789", "default", "yale"), None)
    assert set(both) == {"default", "yale"} and both["default"] != both["yale"]
    assert set(signing_secrets(profiles(), "k" * 40)) == {None}, "the key file signs for all"


def test_the_kid_names_the_key_and_reveals_nothing_of_it() -> None:
    first, second = LocalTokenIssuer(), LocalTokenIssuer()
    for issuer in (first, second):
        issuer.rekey(signing_secrets(profiles(), None))
    token = first.issue("tool", "default")
    kid = jwt.get_unverified_header(token)["kid"]
    assert (
        kid in first.kids()
        and kid == jwt.get_unverified_header(second.issue("x", "default"))["kid"]
    )
    secret = signing_secrets(profiles(), None)["default"]
    assert base64.urlsafe_b64encode(secret).decode()[:8] not in kid
    claims = second.check(token)  # another process, the same credentials: a restart, a replica
    assert not isinstance(claims, str) and claims.kid == kid and claims.profile == "default"
    third = LocalTokenIssuer()
    third.rekey(signing_secrets(profiles("secret-two-0123456789"), None))
    assert third.check(token) == UNKNOWN_KEY


def test_a_profiles_key_signs_only_that_profiles_tokens() -> None:
    issuer = LocalTokenIssuer()
    issuer.rekey(signing_secrets(profiles("secret-one-0123456789", "default", "yale"), None))
    yale = issuer.issue("tool", "yale")
    default = issuer.issue("tool", "default")
    kids = {jwt.get_unverified_header(t)["kid"] for t in (yale, default)}
    assert len(kids) == 2, "each profile's own key"
    for token in (yale, default):
        assert not isinstance(issuer.check(token), str)
    # The default profile's key naming yale: refused, though the signature is right.
    secret = signing_secrets(profiles("secret-one-0123456789", "default"), None)["default"]
    header = jwt.get_unverified_header(default)
    claims = jwt.decode(default, options={"verify_signature": False}) | {"prof": "yale"}
    forged = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": header["kid"]})
    assert isinstance(issuer.check(forged), str)


def test_previous_keys_verify_until_their_tokens_expire_and_not_after() -> None:
    clock = FakeClock()
    issuer = LocalTokenIssuer(wall_clock=clock.time)
    issuer.rekey(signing_secrets(profiles("secret-one-0123456789"), None))
    old = issuer.issue("tool", "default")
    old_kid = jwt.get_unverified_header(old)["kid"]
    clock.advance(600)
    issuer.rekey(signing_secrets(profiles("secret-two-0123456789"), None))  # a rotation
    new = issuer.issue("tool", "default")
    assert jwt.get_unverified_header(new)["kid"] != old_kid, "new tokens: the new key"
    assert not isinstance(issuer.check(old), str), "the previous key still verifies"
    clock.advance(3600 - 600 - 1)
    assert not isinstance(issuer.check(old), str)
    clock.advance(1)
    assert issuer.check(old) == EXPIRED, "its key is still held; the token is not valid"
    assert not isinstance(issuer.check(new), str)
    clock.advance(600)  # a lifetime after the rotation: the key itself is gone
    assert old_kid not in issuer.kids()
    assert issuer.check(old) == UNKNOWN_KEY
    assert not isinstance(issuer.check(issuer.issue("tool", "default")), str)


def test_the_key_ring_is_bounded() -> None:
    clock = FakeClock()
    issuer = LocalTokenIssuer(wall_clock=clock.time)
    for n in range(MAX_RETIRED_KEYS * 3):
        issuer.rekey(signing_secrets(profiles(f"secret-{n:04d}-0123456789"), None))
        clock.advance(1)
    assert len(issuer.kids()) <= MAX_RETIRED_KEYS + 2  # the current two (profile, own)


# ====================================================================== grants


def test_tokens_die_with_their_grant_and_others_keep_working() -> None:
    issuer = LocalTokenIssuer()
    control = AccessControl(access(etl=ETL_SECRET, tool=TOOL_SECRET), issuer, profiles())
    tokens = {
        "a": log_in(control, issuer, "anyone", KEY_A),
        "b": log_in(control, issuer, "anyone", KEY_B),
        "etl": log_in(control, issuer, ETL, ETL_SECRET),
        "tool": log_in(control, issuer, TOOL, TOOL_SECRET),
    }
    for token in tokens.values():
        assert isinstance(control.admit(bearer(token)), Caller)
        via = jwt.decode(token, options={"verify_signature": False})["via"]
        assert all(secret not in via for secret in (KEY_A, KEY_B, ETL_SECRET, TOOL_SECRET))

    def refused(name: str) -> bool:
        outcome = control.admit(bearer(tokens[name]))
        if isinstance(outcome, Refusal):
            assert GRANT_GONE in outcome.message and "log in again" in outcome.message
            assert not outcome.guess, "a token we signed is no guess"
            assert tokens[name] not in outcome.message
            return True
        return False

    control.update(access((KEY_B,), etl=ETL_SECRET, tool=TOOL_SECRET), profiles())  # A removed
    assert [refused(n) for n in tokens] == [True, False, False, False]
    control.update(access((KEY_B,), tool=TOOL_SECRET), profiles())  # etl removed
    assert [refused(n) for n in tokens] == [True, False, True, False]
    control.update(access((KEY_B,), tool="a-new-secret-0123456789"), profiles())  # rotated
    assert [refused(n) for n in tokens] == [True, False, True, True]
    # A restart with the same configuration: the same verdicts, from the derived keys.
    again = AccessControl(
        access((KEY_B,), tool="a-new-secret-0123456789"), LocalTokenIssuer(), profiles()
    )
    assert isinstance(again.admit(bearer(tokens["b"])), Caller)
    assert isinstance(again.admit(bearer(tokens["a"])), Refusal)


def test_a_token_granted_without_authentication_dies_when_it_is_turned_on() -> None:
    issuer = LocalTokenIssuer()
    control = AccessControl(AccessConfig(), issuer, profiles())
    open_token = log_in(control, issuer, "anyone", "anything")
    assert control.admit(bearer(open_token)) == Caller(None, "default")
    control.update(access(), profiles())
    outcome = control.admit(bearer(open_token))
    assert isinstance(outcome, Refusal) and GRANT_GONE in outcome.message
    key_token = log_in(control, issuer, "anyone", KEY_A)
    control.update(AccessConfig(), profiles())  # off again: everyone is let in
    assert control.admit(bearer(key_token)) == Caller(None, "default")
    assert control.admit(bearer(open_token)) == Caller(None, "default")


def test_a_tokens_profiles_are_the_grants_profiles_of_today() -> None:
    issuer = LocalTokenIssuer()
    two = profiles("secret-one-0123456789", "default", "yale")
    control = AccessControl(AccessConfig({KEY_A: frozenset({"default", "yale"})}), issuer, two)
    token = log_in(control, issuer, "anyone", KEY_A)
    caller = control.admit(bearer(token))
    assert isinstance(caller, Caller) and caller.may_use("default")
    control.update(AccessConfig({KEY_A: frozenset({"yale"})}), two)
    caller = control.admit(bearer(token))
    assert isinstance(caller, Caller) and not caller.may_use("default")


def test_an_expired_token_is_refused_with_why_and_is_no_guess() -> None:
    clock = FakeClock()
    issuer = LocalTokenIssuer(wall_clock=clock.time)
    control = AccessControl(access(), issuer, profiles())
    token = log_in(control, issuer, "anyone", KEY_A)
    assert isinstance(control.admit(bearer(token)), Caller)  # verified: now cached
    clock.advance(3600)
    outcome = control.admit(bearer(token))
    assert isinstance(outcome, Refusal) and EXPIRED in outcome.message and not outcome.guess


def test_a_key_file_signs_every_profiles_tokens_and_rotates_with_a_grace() -> None:
    issuer = LocalTokenIssuer()
    two = profiles("secret-one-0123456789", "default", "yale")
    keyed = AccessConfig({KEY_A: None}, token_key="first-key-file-secret-0123456789abcdef")
    control = AccessControl(keyed, issuer, two)
    tokens = [log_in(control, issuer, "anyone", KEY_A), issuer.issue("x", "yale", b"")]
    assert len({jwt.get_unverified_header(t)["kid"] for t in tokens}) == 1
    replica = LocalTokenIssuer()
    replica.rekey(signing_secrets({}, keyed.token_key))
    assert not isinstance(replica.check(tokens[0]), str)
    rotated = AccessConfig({KEY_A: None}, token_key="second-key-file-secret-0123456789abc")
    control.update(rotated, two)
    assert isinstance(control.admit(bearer(tokens[0])), Caller), "the previous key: a grace"
    assert (
        jwt.get_unverified_header(issuer.issue("x", "default"))["kid"]
        != (jwt.get_unverified_header(tokens[0])["kid"])
    )


# ====================================================================== configuration


def test_a_short_local_client_secret_exits_2_naming_the_client_never_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("DAP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DAP_CLIENT_ID", DEMO_CLIENT_ID)
    monkeypatch.setenv("DAP_CLIENT_SECRET", DEMO_CLIENT_SECRET)
    monkeypatch.setenv("DAP_PROXY_LOCAL_CLIENTS", f"dap:a,{ETL}:{ETL_SECRET}")
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "local client 'dap'" in err and "shorter than 16 characters" in err
    assert "DAP_PROXY_LOCAL_CLIENTS" in err, "the setting's source"
    assert "token_urlsafe(16)" in err, "what to do"
    assert "'etl'" not in err and ETL_SECRET not in err and "dap:a" not in err


def test_a_short_local_token_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token-key"
    path.write_text("too-short\n")
    path.chmod(0o600)
    env = {
        "DAP_CLIENT_ID": DEMO_CLIENT_ID,
        "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "DAP_PROXY_LOCAL_TOKEN_KEY_FILE": str(path),
    }
    with pytest.raises(ConfigError) as raised:
        load_config(None, env)
    assert "local_token_key_file" in str(raised.value) and "too-short" not in str(raised.value)
    path.write_text("x" * 40)
    assert load_config(None, env).access.token_key == "x" * 40
    assert "x" * 40 not in repr(load_config(None, env))


# ====================================================================== a reload, for real


async def test_a_reload_ends_a_removed_keys_sessions_only_and_a_rotation_none(
    gateway: Gateway, tmp_path: Path
) -> None:
    from proxy.server.serve import start

    keys = tmp_path / "keys"
    keys.write_text(f"{KEY_A}\n{KEY_B}\n")
    keys.chmod(0o600)
    env = {
        "DAP_CLIENT_ID": DEMO_CLIENT_ID,
        "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "DAP_PROXY_ACCESS_KEYS_FILE": str(keys),
    }
    flags = {"listen": "127.0.0.1:0", "upstream": gateway.url}
    config = load_config(None, env, flags)
    running = await start(config)
    try:
        await running.first_token()
        async with aiohttp.ClientSession() as http:
            tokens = [await login(http, running.url, "anyone", key) for key in (KEY_A, KEY_B)]
            keys.write_text(f"{KEY_B}\n")
            reloader = Reloader(running.runner.app, config, lambda: load_config(None, env, flags))
            done = reloader.reload()
            assert (await done) if inspect.isawaitable(done) else done
            status, body = await get(http, running.url + TABLES, tokens[0])
            assert status == 401 and "log in again" in body and tokens[0] not in body
            assert (await get(http, running.url + TABLES, tokens[1]))[0] == 200
            # A rotated client secret: new tokens get the new key; the previous key's stay.
            env["DAP_CLIENT_SECRET"] = "a-rotated-secret-0123456789"
            done = reloader.reload()
            assert (await done) if inspect.isawaitable(done) else done
            assert (await get(http, running.url + TABLES, tokens[1]))[0] == 200
            fresh = await login(http, running.url, "anyone", KEY_B)
            assert (
                jwt.get_unverified_header(fresh)["kid"]
                != (jwt.get_unverified_header(tokens[1])["kid"])
            )
            assert (await get(http, running.url + TABLES, fresh))[0] == 200
    finally:
        await running.stop()


# ====================================================================== real processes


async def login(http: aiohttp.ClientSession, url: str, client_id: str, secret: str) -> str:
    async with http.post(
        url + LOGIN,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials(client_id, secret)},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


async def get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str]:
    async with http.get(url, headers={"Authorization": bearer(token)}) as resp:
        return resp.status, await resp.text()


async def serve(gateway: Gateway, port: int, **env: str) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    environ = {
        **clean,
        "DAP_CLIENT_ID": DEMO_CLIENT_ID,
        "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "DAP_PROXY_ACCESS_KEYS": KEY_A,
        "DAP_PROXY_LOCAL_CLIENTS": f"{ETL}:{ETL_SECRET}",
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        gateway.url,
        env=environ,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"http://127.0.0.1:{port}/-/ready") as resp:
                    if resp.status == 200:
                        return process
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError("the proxy never became ready")


async def test_a_local_token_outlives_its_process_and_works_on_a_replica(
    gateway: Gateway,
) -> None:
    first_port, replica_port = closed_port(), closed_port()
    first_url, replica_url = f"http://127.0.0.1:{first_port}", f"http://127.0.0.1:{replica_port}"
    processes = [await serve(gateway, first_port)]
    try:
        async with aiohttp.ClientSession() as http:
            token = await login(http, first_url, ETL, ETL_SECRET)
            assert (await get(http, first_url + TABLES, token))[0] == 200
            processes.append(await serve(gateway, replica_port))  # a replica, running at once
            assert (await get(http, replica_url + TABLES, token))[0] == 200
            processes[0].kill()  # an OOM kill, a node drain
            await processes[0].wait()
            processes[0] = await serve(gateway, first_port)  # its successor, same config
            assert (await get(http, first_url + TABLES, token))[0] == 200
            # The replica restarted without etl: that session is over, and says so.
            processes[1].send_signal(signal.SIGTERM)
            await processes[1].wait()
            processes[1] = await serve(gateway, replica_port, DAP_PROXY_LOCAL_CLIENTS="")
            status, body = await get(http, replica_url + TABLES, token)
            assert status == 401 and "log in again" in body and token not in body
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_a_relay_url_from_one_replica_downloads_through_another_without_credentials(
    gateway: Gateway,
) -> None:
    """Issue 18: a relay URL is sealed, not remembered: minted by one process (asked with an
    access key), downloaded through a second with no credentials at all, and again through
    the first after it was killed and started anew."""
    first_port, replica_port = closed_port(), closed_port()
    first_url, replica_url = f"http://127.0.0.1:{first_port}", f"http://127.0.0.1:{replica_port}"
    relay_on = {"DAP_PROXY_OBJECT_RELAY": "true"}
    processes = [await serve(gateway, first_port, **relay_on)]
    try:
        processes.append(await serve(gateway, replica_port, **relay_on))
        async with aiohttp.ClientSession(headers={"Authorization": bearer(KEY_A)}) as http:
            query = {"format": "jsonl"}
            async with http.post(first_url + TABLES + "/accounts/data", json=query) as resp:
                job = await resp.json()
            while job["status"] != "complete":
                await asyncio.sleep(0.1)
                async with http.get(f"{first_url}/dap/job/{job['id']}") as resp:
                    job = await resp.json()
            objects = [{"id": job["objects"][0]["id"]}]
            async with http.post(first_url + "/dap/object/url", json=objects) as resp:
                assert resp.status == 200, await resp.text()
                minted = next(iter((await resp.json())["urls"].values()))["url"]
        assert minted.startswith(first_url + "/-/relay/")
        elsewhere = replica_url + minted.removeprefix(first_url)
        async with aiohttp.ClientSession() as anonymous:  # no key, no token
            async with anonymous.get(elsewhere) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.read()
            assert body
            processes[0].kill()
            await processes[0].wait()
            processes[0] = await serve(gateway, first_port, **relay_on)
            async with anonymous.get(minted) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.read() == body
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


# ====================================================================== without authentication


async def test_without_authentication_only_our_own_tokens_are_checked(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url)
    real = await login(proxy.http, proxy.url, "anyone", "anything")
    assert (await get(proxy.http, proxy.url + TABLES, real))[0] == 200
    # Someone else's JWT (the gateway's own, say): not ours, let in as before.
    foreign = jwt.encode({"iss": "somebody-else", "sub": "x"}, "k" * 32, algorithm="HS256")
    assert (await get(proxy.http, proxy.url + TABLES, foreign))[0] == 200
    # Ours, but signed by a key this proxy does not hold: refused, log in again.
    other = LocalTokenIssuer()
    status, body = await get(proxy.http, proxy.url + TABLES, other.issue("x", "default"))
    assert status == 401 and "log in again" in body

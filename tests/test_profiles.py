"""Institution profiles: two credential sets, two gateways, one proxy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
import pytest

from proxy.aiohttp_compat import basic_credentials
from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.server.keys import TOKENS
from proxy.server.reload import Reloader
from proxy.server.serve import RunningProxy, start

from .conftest import Gateway, GatewayFactory
from .dap_cli import ok, run_dap
from .test_cli import finish, run_proxy
from .test_errors import closed_port

ALPHA_ID, ALPHA_SECRET = "us-east-1#alpha-univ", "alpha-secret"
BETA_ID, BETA_SECRET = "eu-west-1#beta-college", "beta-secret"
TABLES = "/dap/query/canvas/table"


@dataclass
class TwoInstitutions:
    alpha: Gateway
    beta: Gateway
    proxy: RunningProxy
    http: aiohttp.ClientSession
    url: str

    async def get(self, path: str, **kwargs: object) -> tuple[int, dict[str, object]]:
        async with self.http.get(self.url + path, **kwargs) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.json()


def profile_env(alpha: Gateway, beta: Gateway, **extra: str) -> dict[str, str]:
    return {
        "DAP_PROXY_PROFILE_ALPHA_CLIENT_ID": ALPHA_ID,
        "DAP_PROXY_PROFILE_ALPHA_CLIENT_SECRET": ALPHA_SECRET,
        "DAP_PROXY_PROFILE_ALPHA_UPSTREAM": alpha.url,
        "DAP_PROXY_PROFILE_BETA_CLIENT_ID": BETA_ID,
        "DAP_PROXY_PROFILE_BETA_CLIENT_SECRET": BETA_SECRET,
        "DAP_PROXY_PROFILE_BETA_UPSTREAM": beta.url,
        "DAP_PROXY_PROFILE_BETA_LOCAL_CLIENT_IDS": "beta-tool",
        # These tests count what reaches each gateway (tests/test_sharing.py covers these).
        "DAP_PROXY_RATE_LIMITS_ENABLED": "false",
        "DAP_PROXY_CACHE_ENABLED": "false",
        **extra,
    }


def alpha_secret_in_a_file(
    alpha: Gateway, beta: Gateway, tmp_path: Path
) -> tuple[dict[str, str], Path]:
    """Both profiles' settings, alpha's secret in a file that holds an outdated one."""
    secret = tmp_path / "alpha-secret"
    secret.write_text("an-old-secret\n")
    secret.chmod(0o600)
    env = profile_env(alpha, beta)
    del env["DAP_PROXY_PROFILE_ALPHA_CLIENT_SECRET"]
    env["DAP_PROXY_PROFILE_ALPHA_CLIENT_SECRET_FILE"] = str(secret)
    return env, secret


@pytest.fixture
async def institutions(gateway_factory: GatewayFactory) -> tuple[Gateway, Gateway]:
    alpha = await gateway_factory(clients={ALPHA_ID: ALPHA_SECRET}, job_duration=0)
    beta = await gateway_factory(clients={BETA_ID: BETA_SECRET}, job_duration=0)
    return alpha, beta


@pytest.fixture
async def two(institutions: tuple[Gateway, Gateway]):  # type: ignore[no-untyped-def]
    alpha, beta = institutions
    running = await start(load_config(None, profile_env(alpha, beta), {"listen": "127.0.0.1:0"}))
    await running.first_token()
    async with aiohttp.ClientSession() as http:
        yield TwoInstitutions(alpha, beta, running, http, running.url)
    await running.stop()


def bearer_of(gateway: Gateway) -> str:
    return gateway.state.requests[-1].headers["Authorization"]


async def test_path_prefix_routes_to_each_institution(
    two: TwoInstitutions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="proxy.access")
    assert (await two.get("/alpha" + TABLES))[0] == 200
    alpha_token = bearer_of(two.alpha)
    assert (await two.get("/beta" + TABLES))[0] == 200
    beta_token = bearer_of(two.beta)
    assert alpha_token != beta_token
    assert (
        jwt.decode(alpha_token.split()[1], options={"verify_signature": False})["sub"] == ALPHA_ID
    )
    assert jwt.decode(beta_token.split()[1], options={"verify_signature": False})["sub"] == BETA_ID
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert any(line.startswith("GET /alpha" + TABLES) and "profile=alpha" in line for line in lines)
    assert any("profile=beta" in line for line in lines), "the access log names the profile"


@pytest.mark.parametrize("path", [TABLES, "/gamma" + TABLES, "/alphax" + TABLES])
async def test_no_or_unknown_profile_is_404_and_reaches_nothing(
    two: TwoInstitutions, path: str
) -> None:
    seen = len(two.alpha.state.requests) + len(two.beta.state.requests)
    status, body = await two.get(path)
    assert status == 404
    assert body["error"]["type"] == "UnknownProfile"  # type: ignore[index]
    assert len(two.alpha.state.requests) + len(two.beta.state.requests) == seen


async def test_login_client_id_chooses_the_profile(two: TwoInstitutions) -> None:
    async def login(client_id: str, path: str = "/ids/auth/login") -> str:
        async with two.http.post(
            two.url + path,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_credentials(client_id, "anything")},
        ) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["access_token"])

    for client_id, gateway in (("alpha", two.alpha), ("beta-tool", two.beta)):
        local = await login(client_id)
        status, _ = await two.get(TABLES, headers={"Authorization": f"Bearer {local}"})
        assert status == 200
        assert gateway.state.requests[-1].route == "list_tables"
    # A token chosen for alpha cannot be pointed at beta.
    local = await login("alpha")
    status, body = await two.get("/beta" + TABLES, headers={"Authorization": f"Bearer {local}"})
    assert status == 403 and body["error"]["type"] == "ProfileNotAllowed"  # type: ignore[index]
    # A login under a prefix chooses that profile whatever the client id.
    local = await login("someone", "/beta/ids/auth/login")
    assert jwt.decode(local, options={"verify_signature": False})["prof"] == "beta"
    async with two.http.post(
        two.url + "/ids/auth/login",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials("nobody", "x")},
    ) as resp:
        assert resp.status == 404  # no default profile to fall back on


async def test_one_institutions_rejected_credentials_leave_the_other_alone(
    two: TwoInstitutions,
) -> None:
    two.beta.state.faults.credentials_revoked = True
    two.beta.state.faults.revoke_tokens()
    status, body = await two.get("/beta" + TABLES)
    assert status == 401  # the gateway refused the token; the refresh was refused too
    assert body["error"]["type"] == "CredentialsRejected"  # type: ignore[index]
    for _ in range(5):
        assert (await two.get("/alpha" + TABLES))[0] == 200
    assert two.alpha.state.token_requests == 1, "alpha's token was never disturbed"
    async with two.http.get(two.url + "/-/ready") as resp:
        assert resp.status == 200
    async with two.http.get(two.url + "/-/ready/beta") as resp:
        assert resp.status == 503
    async with two.http.get(two.url + "/-/ready/alpha") as resp:
        assert resp.status == 200


async def test_inbound_keys_limited_to_profiles(
    institutions: tuple[Gateway, Gateway],
) -> None:
    alpha, beta = institutions
    env = profile_env(
        alpha, beta, DAP_PROXY_ACCESS_KEYS="alpha-key-0123456789:alpha,all-key-0123456789"
    )
    running = await start(load_config(None, env, {"listen": "127.0.0.1:0"}))
    try:
        await running.first_token()
        async with aiohttp.ClientSession() as http:

            async def status(path: str, key: str) -> int:
                headers = {"Authorization": f"Bearer {key}"}
                async with http.get(running.url + path, headers=headers) as resp:
                    return resp.status

            assert await status("/alpha" + TABLES, "alpha-key-0123456789") == 200
            assert await status("/beta" + TABLES, "alpha-key-0123456789") == 403
            assert await status("/beta" + TABLES, "all-key-0123456789") == 200
            # and the dap CLI, logging in with the key as its secret, gets the same grant
            async with http.post(
                running.url + "/beta/ids/auth/login",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": basic_credentials("tool", "alpha-key-0123456789")},
            ) as resp:
                assert resp.status == 403
    finally:
        await running.stop()


async def test_metrics_and_status_per_profile(two: TwoInstitutions) -> None:
    await two.get("/alpha" + TABLES)
    await two.get("/beta" + TABLES)
    async with two.http.get(two.url + "/-/metrics") as resp:
        metrics = await resp.text()
    for name in ("alpha", "beta"):
        assert f'proxy_requests_total{{method="GET",profile="{name}",status_class="2xx"}} 1.0' in (
            metrics
        )
        assert f'proxy_token_expires_in_seconds{{profile="{name}"}}' in metrics
    async with two.http.get(two.url + "/-/status") as resp:
        status = json.loads(await resp.read())
    assert set(status["profiles"]) == {"alpha", "beta"}
    assert status["profiles"]["beta"]["scope"]["region"] == "eu-west-1"
    assert status["profiles"]["alpha"]["upstream"].startswith(two.alpha.url)


async def test_reload_a_changed_secret_file_per_profile(
    institutions: tuple[Gateway, Gateway], tmp_path: Path
) -> None:
    alpha, beta = institutions
    env, secret = alpha_secret_in_a_file(alpha, beta, tmp_path)
    flags = {"listen": "127.0.0.1:0"}
    config = load_config(None, env, flags)
    running = await start(config)
    try:
        await running.first_token()  # alpha rejected; beta serves: no StartupError
        managers = running.runner.app[TOKENS]
        assert not managers["alpha"].ready and managers["beta"].ready
        reloader = Reloader(
            running.runner.app, config, lambda: load_config(None, env, flags), interval=0.05
        )
        watcher = asyncio.create_task(reloader.watch())
        secret.write_text(ALPHA_SECRET + "\n")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if managers["alpha"].ready:
                break
        watcher.cancel()
        assert managers["alpha"].ready, "the new secret was not picked up"
        async with (
            aiohttp.ClientSession() as http,
            http.get(running.url + "/alpha" + TABLES) as resp,
        ):
            assert resp.status == 200
        assert beta.state.token_requests == 1, "beta was not disturbed by alpha's reload"
    finally:
        await running.stop()


async def test_sighup_reloads_secrets(
    institutions: tuple[Gateway, Gateway], tmp_path: Path
) -> None:
    alpha, beta = institutions
    env, secret = alpha_secret_in_a_file(alpha, beta, tmp_path)
    port = closed_port()
    process = await run_proxy("--listen", f"127.0.0.1:{port}", env=env)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:

        async def ready(profile: str, expected: int) -> bool:
            """Whether /-/ready/<profile> answers ``expected`` within a few seconds."""
            for _ in range(100):
                try:
                    async with http.get(f"{url}/-/ready/{profile}") as resp:
                        if resp.status == expected:
                            return True
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            return False

        assert await ready("beta", 200)
        assert await ready("alpha", 503)
        secret.write_text(ALPHA_SECRET)
        os.kill(process.pid, signal.SIGHUP)
        assert await ready("alpha", 200), "SIGHUP did not bring the new secret in"
    process.send_signal(signal.SIGTERM)
    status, stderr = await finish(process)
    assert status == 0
    assert "profile alpha: new credentials" in stderr
    assert ALPHA_SECRET not in stderr


@pytest.mark.e2e
async def test_the_dap_cli_uses_two_institutions_side_by_side(
    two: TwoInstitutions, tmp_path: Path
) -> None:
    for name, gateway in (("alpha", two.alpha), ("beta", two.beta)):
        result = ok(
            await run_dap(
                f"{two.url}/{name}",
                "list --namespace canvas",
                cwd=tmp_path,
                client_id="local",
                secret="local",
            )
        )
        assert "accounts" in result.stdout
        assert gateway.state.requests_to("list_tables")
    # By client id, with the plain base URL.
    before = len(two.beta.state.requests_to("list_tables"))
    ok(
        await run_dap(
            two.url, "list --namespace canvas", cwd=tmp_path, client_id="beta", secret="local"
        )
    )
    assert len(two.beta.state.requests_to("list_tables")) == before + 1


async def test_token_command_per_profile(institutions: tuple[Gateway, Gateway]) -> None:
    alpha, beta = institutions
    process = await run_proxy("token", "--profile", "beta", env=profile_env(alpha, beta))
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr
    token = stdout.decode().strip()
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == BETA_ID


def test_profile_config_problems(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "profiles:\n"
        "  Bad Name: {client_id: x, client_secret: y}\n"
        "  dap: {client_id: x, client_secret: y}\n"
        "  yale: {client_id: x, bogus: 1}\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"DAP_PROXY_ACCESS_KEYS": "k:harvard"})
    text = "\n".join(raised.value.problems)
    assert "profiles.Bad Name: a profile name is" in text
    assert "profiles.dap: a profile name is" in text
    assert "profiles.yale.bogus: unknown key" in text
    assert (
        "profiles.yale.client_secret: not set (set DAP_PROXY_PROFILE_YALE_CLIENT_SECRET_FILE"
        in text
    )
    assert "access: grants unknown profiles: harvard" in text


def test_profiles_from_yaml_inherit_the_upstream(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "upstream: https://gateway.test\n"
        "profiles:\n"
        "  yale: {client_id: y-id, client_secret: y-secret}\n"
        "  mit: {client_id: m-id, client_secret: m-secret, upstream: https://other.test/p}\n"
    )
    config = load_config(path, {})
    assert set(config.profiles) == {"yale", "mit"}
    assert str(config.profiles["yale"].token_url) == "https://gateway.test/ids/auth/login"
    assert str(config.profiles["mit"].token_url) == "https://other.test/p/ids/auth/login"
    assert "y-secret" not in repr(config) and "m-secret" not in repr(config)
    # and a single-credential configuration is still the default profile
    single = load_config(None, {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "s"})
    assert list(single.profiles) == ["default"]

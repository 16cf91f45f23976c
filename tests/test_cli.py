"""The command as a user runs it: exit statuses, messages, graceful shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.abc
import pytest
from yarl import URL

from proxy import __version__
from proxy.cli import demo
from proxy.cli import main as cli
from proxy.cli import token as token_command
from proxy.config import Config, Credentials, ListenAddress, load_config
from proxy.errors import ConfigError, TokenEndpointUnavailable
from proxy.server import serve as server
from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from proxy.upstream.token_client import TokenClient

from .conftest import Gateway, proxy_config
from .test_errors import closed_port


async def run_proxy(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str]:
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_invalid_configuration_exits_2_naming_every_problem() -> None:
    process = await run_proxy(
        "--listen",
        "nowhere",
        env={"DAP_CLIENT_SECRET": "hunter2-secret", "DAP_PROXY_TIMEOUTS_READ": "x"},
    )
    status, stderr = await finish(process)
    assert status == 2
    assert "listen: expected HOST:PORT, got 'nowhere' (from flag --listen)" in stderr
    assert "(from environment variable DAP_PROXY_TIMEOUTS_READ)" in stderr
    assert "client_id: not set" in stderr
    assert "hunter2-secret" not in stderr


async def test_rejected_credentials_at_startup_exit_3(gateway: Gateway) -> None:
    process = await run_proxy(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        gateway.url,
        env={"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": "wrong-secret-value"},
    )
    status, stderr = await finish(process)
    assert status == 3
    assert "rejected the proxy's client credentials (HTTP 401" in stderr
    assert "wrong-secret-value" not in stderr


async def test_sigterm_lets_requests_in_flight_finish(gateway: Gateway) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    process = await run_proxy(
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        gateway.url,
        env={"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET},
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(url + "/-/ready") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the proxy never became ready")

        async def slow() -> tuple[int, bytes]:
            async with http.get(url + "/test/slow?seconds=1.5") as resp:
                return resp.status, await resp.read()

        in_flight = asyncio.create_task(slow())
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        status, body = await in_flight
    assert (status, body) == (200, b'{"slow": true}')
    exit_status, stderr = await finish(process)
    assert exit_status == 0
    assert "shutting down" in stderr
    assert "GET /test/slow 200" in stderr  # the access log line


async def test_gateway_unreachable_at_startup_keeps_running_not_ready() -> None:
    port = closed_port()
    process = await run_proxy(
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://127.0.0.1:{closed_port()}",
        env={"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "secret"},
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(f"http://127.0.0.1:{port}/-/ready") as resp:
                    assert resp.status == 503
                    body = await resp.json()
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the proxy never listened")
    assert "could not be reached" in body["error"]["message"]
    process.send_signal(signal.SIGINT)
    status, stderr = await finish(process)
    assert status == 0
    assert "serving anyway, not ready, retrying" in stderr


# ====================================================================== issue 12: the first hour


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DAP_* variables of the machine running the tests; a wide terminal for --help."""
    for name in list(os.environ):
        if name.startswith("DAP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "200")


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "8123"],
        ["serve", "--port", "8123"],
        ["serve", "--listen", "8123"],
        ["--listen", ":8123"],
    ],
)
def test_a_port_alone_means_loopback(
    argv: list[str], clean_environ: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Config] = []

    async def serve(config: Config, load: object = None) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(server, "serve", serve)
    monkeypatch.setenv("DAP_CLIENT_ID", "id")
    monkeypatch.setenv("DAP_CLIENT_SECRET", "secret")
    assert cli.main(argv) == 0
    assert seen[0].listen == ListenAddress("127.0.0.1", 8123)
    assert seen[0].listen.is_loopback


@pytest.mark.parametrize("command", ["serve", "demo", "simulate"])
def test_port_and_listen_together_are_a_usage_error(
    command: str, clean_environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_main([command, "--port", "8123", "--listen", "127.0.0.1:9"], capsys)
    assert status == 2
    assert "argument --listen: not allowed with argument --port" in err


def test_a_port_out_of_range_is_a_usage_error(
    clean_environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_main(["--port", "99999"], capsys)
    assert (status, "argument --port: port must be 0-65535, got 99999" in err) == (2, True)


@pytest.mark.parametrize("command", ["serve", "token", "simulate", "demo"])
def test_every_command_explains_itself(
    command: str, clean_environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_main([command, "--help"], capsys)
    assert status == 0
    description = out.split("\n\n")[1]
    assert len(description) > 80, description  # a description, not just the usage
    assert "(default: " in out
    assert "exit statuses:\n  0  " in out
    assert "\n  2  invalid " in out
    if command in ("serve", "token"):
        for name in (
            "DAP_CLIENT_ID",
            "DAP_CLIENT_SECRET ",
            "DAP_CLIENT_SECRET_FILE",
            "DAP_PROXY_CONFIG",
            "DAP_PROXY_LISTEN",
            "DAP_PROXY_TIMEOUTS_SHUTDOWN",
            "DAP_PROXY_PROFILE_<NAME>_<KEY>",
        ):
            assert name in out
        assert "\n  3  the gateway rejected the credentials" in out
    if command != "token":
        assert "--port PORT" in out
        assert "8080 and :8080 mean 127.0.0.1:8080" in " ".join(out.split())
        assert "\n  4  " in out
    if command == "serve":
        assert "A port alone is loopback" in " ".join(out.split())
        assert "(default: 127.0.0.1:8080)" in out
        assert "Ctrl-Break on Windows" in out
        assert "SIGHUP (not on Windows)" in out


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["server"], "unknown command 'server' (did you mean serve?)"),
        (["tokn", "--profile", "x"], "unknown command 'tokn' (did you mean token?)"),
        (["--port", "8123", "sevre"], "unrecognized arguments: sevre (did you mean serve?)"),
        (["serv3r-typo-far-off"], "unknown command 'serv3r-typo-far-off'; the commands are"),
    ],
)
def test_a_mistyped_command_gets_a_suggestion(
    argv: list[str], hint: str, clean_environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_main(argv, capsys)
    assert status == 2
    assert hint in err


def test_a_mistyped_setting_gets_a_suggestion_wherever_it_is(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "refresh_margn: 10\n"
        "timeouts:\n  shutdwn: 5\n"
        "profiles:\n  yale:\n    client_id: y\n    client_secret_fil: /run/secret\n"
    )
    environ = {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "s", "DAP_PROXY_LISTN": "8080"}
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ)
    message = str(raised.value)
    assert "refresh_margn: unknown key (did you mean refresh_margin?)" in message
    assert "timeouts.shutdwn: unknown key (did you mean timeouts.shutdown?)" in message
    assert (
        "profiles.yale.client_secret_fil: unknown key (did you mean client_secret_file?)"
    ) in message
    path.write_text("log_level: info\n")
    config = load_config(path, environ)
    assert (
        "DAP_PROXY_LISTN: not a setting of this proxy, ignored (did you mean DAP_PROXY_LISTEN?)"
    ) in config.warnings


async def test_a_busy_port_is_named_with_the_reason(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = proxy_config(gateway.url)
        config = dataclasses.replace(config, listen=ListenAddress("127.0.0.1", port))
        with pytest.raises(server.StartupError) as raised:
            await server.start(config)
        assert raised.value.exit_status == 4
        assert str(raised.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"

        assert await demo.demo(f"127.0.0.1:{port}", "127.0.0.1:0") == 4
        assert (
            f"instructure-auth-proxy: cannot listen on 127.0.0.1:{port}: address already in use "
            f"(another process uses it? try --port {port + 1})"
        ) in capsys.readouterr().err
        assert await demo.simulate(f"127.0.0.1:{port}", 3599, True) == 4
        assert (
            f"instructure-auth-proxy: cannot listen on 127.0.0.1:{port}: address already in use"
        ) in capsys.readouterr().err


async def test_an_unreachable_token_endpoint_is_named_with_the_reason() -> None:
    port = closed_port()
    credentials = Credentials("us-east-1#id", "hunter2-secret")
    async with aiohttp.ClientSession() as session:
        client = TokenClient(
            session, URL(f"http://127.0.0.1:{port}/ids/auth/login"), credentials, timeout=5
        )
        with pytest.raises(TokenEndpointUnavailable) as raised:
            await client.fetch()
    assert raised.value.text == (
        f"the token endpoint at 127.0.0.1:{port} could not be reached: connection refused"
    )


class NoNames(aiohttp.abc.AbstractResolver):
    """A resolver for which no name exists: DNS failure without asking any DNS server."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


async def test_an_unknown_token_endpoint_name_says_so() -> None:
    credentials = Credentials("us-east-1#id", "hunter2-secret")
    connector = aiohttp.TCPConnector(resolver=NoNames())
    async with aiohttp.ClientSession(connector=connector) as session:
        url = URL("https://gateway.invalid/ids/auth/login")
        client = TokenClient(session, url, credentials, timeout=5)
        with pytest.raises(TokenEndpointUnavailable) as raised:
            await client.fetch()
    assert raised.value.text == (
        "the token endpoint at gateway.invalid:443 could not be reached: name not resolved"
    )


async def test_the_token_command_speaks_as_a_one_shot_command(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(token_command, "FIRST_WAIT", 0.01)
    port = closed_port()
    config = proxy_config(f"http://127.0.0.1:{port}")
    assert await token_command.print_token(config) == 1
    lines = [r.getMessage() for r in caplog.records]
    reason = f"the token endpoint at 127.0.0.1:{port} could not be reached: connection refused"
    assert lines == [
        f"no token yet: {reason}; attempt 1 of 3, trying again in 0.01 s",
        f"no token yet: {reason}; attempt 2 of 3, trying again in 0.02 s",
        f"no token: {reason} (gave up after 3 attempts)",
    ]


async def test_the_token_command_reports_rejection_once(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    config = proxy_config(gateway.url, DAP_CLIENT_SECRET="wrong-secret-value")
    assert await token_command.print_token(config) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1
    assert errors[0].startswith("no token: the gateway's token endpoint rejected the proxy's")
    assert "wrong-secret-value" not in caplog.text
    assert capsys.readouterr().out == ""


async def test_the_token_command_says_nothing_of_next_refreshes(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    assert await token_command.print_token(proxy_config(gateway.url)) == 0
    assert capsys.readouterr().out.count(".") == 2  # the JWT
    assert "token fetched: expires in 3599 s" in caplog.text
    assert "next refresh" not in caplog.text


async def test_the_startup_line_names_version_and_event_loop(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = await server.start(proxy_config(gateway.url))
    try:
        line = next(r.getMessage() for r in caplog.records if "listening on" in r.getMessage())
    finally:
        await running.stop()
    assert line == (
        f"instructure-auth-proxy {__version__} on asyncio: listening on {running.url}, "
        f"forwarding to {gateway.url}/ (profile default)"
    )


async def test_simulate_prints_a_command_that_runs_as_printed() -> None:
    simulator = await run_proxy("simulate", "--port", "0", env={})
    assert simulator.stdout is not None
    printed = ""
    while "Press Ctrl-C" not in printed:
        printed += (await asyncio.wait_for(simulator.stdout.readline(), 30)).decode()
    line = printed.split("Point the proxy at it:\n", 1)[1].splitlines()[0]
    words = shlex.split(line)  # as a POSIX shell reads it
    env = dict(word.split("=", 1) for word in words[:2])
    assert env == {"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET}
    assert words[2:4] == ["instructure-auth-proxy", "serve"]
    port = closed_port()  # 8080, the default, may be taken on the machine running the tests
    proxy = await run_proxy(*words[3:], "--port", str(port), env=env)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/dap/query/canvas/table") as r:
                        assert r.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the proxy never served")
    finally:
        proxy.send_signal(signal.SIGTERM)
        simulator.send_signal(signal.SIGTERM)
        status, stderr = await finish(proxy)
        await finish(simulator)
    assert status == 0, stderr


def test_demo_without_the_simulator_says_where_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The container image leaves the simulator out (.dockerignore)."""
    import sys

    import proxy.cli

    monkeypatch.setitem(sys.modules, "proxy.simulator", None)  # as if it were not there
    monkeypatch.delitem(sys.modules, "proxy.cli.demo", raising=False)
    monkeypatch.delattr(proxy.cli, "demo", raising=False)  # so that it is imported anew
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "leaves out (the container image does)" in err
    # The README's install line, not a package name the README never shows (issue 20, 16).
    assert "pip install -e . && instructure-auth-proxy demo" in err
    assert "pip install instructure-auth-proxy" not in err


# =========================================================== issue 20: the operator's words


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (
            ["serve", "--prot", "22081"],
            "unrecognized arguments: --prot 22081 (did you mean --port?)",
        ),
        (["--prot", "22081"], "unrecognized arguments: --prot 22081 (did you mean --port?)"),
        (["serve", "--lsten=8080"], "(did you mean --listen?)"),
        (["demo", "--simulator-lisen", "1"], "(did you mean --simulator-listen?)"),
        (["simulate", "--token-lifetme", "5"], "(did you mean --token-lifetime?)"),
        (["token", "--confg", "x.yaml"], "(did you mean --config?)"),
    ],
)
def test_a_mistyped_flag_gets_a_suggestion(
    argv: list[str], hint: str, clean_environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_main(argv, capsys)
    assert status == 2
    assert hint in err


@pytest.mark.parametrize("columns", ["60", "80", "100"])
@pytest.mark.parametrize("command", ["serve", "token"])
def test_help_never_cuts_a_url(
    command: str,
    columns: str,
    clean_environ: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    status, out, _ = run_main([command, "--help"], capsys)
    assert status == 0
    assert "https://api-gateway.instructure.com)" in out
    assert not [line for line in out.splitlines() if line.rstrip().endswith("-")]


def test_demo_help_offers_only_the_addresses_it_accepts(
    clean_environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_main(["demo", "--help"], capsys)
    assert status == 0
    assert "unix:" not in out
    assert "HOST:PORT" in out
    if sys.platform != "win32":
        status, _, err = run_main(["demo", "--listen", "unix:/tmp/demo.sock"], capsys)
        assert status == 2
        assert "the demo listens on HOST:PORT only" in err


async def test_demo_says_it_is_stopping_on_ctrl_c() -> None:
    process = await run_proxy("demo", "--port", "0", env={})
    assert process.stdout is not None
    printed = ""
    while "Press Ctrl-C" not in printed:
        printed += (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    process.send_signal(signal.SIGINT)
    status, stderr = await finish(process)
    assert status == 0
    assert "shutting down: no new connections" in stderr
    assert stderr.rstrip().endswith("stopped"), stderr

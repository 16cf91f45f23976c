"""Issue 13: reaching the gateway through an institution's egress HTTP proxy.

The rules (which proxy, NO_PROXY as curl reads it) are unit-tested on egress.py; the rest
runs against a real proxy on loopback (tests/connect_proxy.py) that maps the made-up host
``gateway.invalid`` to the simulator: a request that succeeds went through it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from proxy.config import load_config
from proxy.config.records import EgressConfig
from proxy.errors import ConfigError, TokenEndpointUnavailable
from proxy.upstream.egress import bypassed, host_port, masked, proxy_for

from .conftest import Gateway, ProxyFactory
from .connect_proxy import ConnectProxy

PASSWORD = "s3cret-proxy-pw"


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("api.example.edu", 443, "example.edu", True),
        ("api.example.edu", 443, ".example.edu", True),
        ("example.edu", 443, ".example.edu", True),
        ("badexample.edu", 443, "example.edu", False),  # a suffix of labels, not of text
        ("API.Example.EDU.", 443, "example.edu", True),  # case and the root's dot
        ("api.example.edu", 443, "example.edu:8443", False),
        ("api.example.edu", 8443, "example.edu:8443", True),
        ("anything.org", 443, "*", True),
        ("anything.org", 443, "a.com, *", True),
        ("anything.org", 443, "", False),
        ("10.1.2.3", 443, "10.1.2.3", True),
        ("10.1.2.30", 443, "10.1.2.3", False),  # IP literals match exactly
        ("10.1.2.3", 443, "2.3", False),  # never as a name suffix
        ("::1", 443, "::1", True),
        ("::1", 8080, "[::1]:8080", True),
        ("::1", 443, "[::1]:8080", False),
        ("127.0.0.1", 80, "localhost,127.0.0.1", True),
    ],
)
def test_no_proxy_follows_curl(host: str, port: int, no_proxy: str, expected: bool) -> None:
    entries = tuple(e.strip() for e in no_proxy.split(",") if e.strip())
    assert bypassed(host, port, entries) is expected


def test_which_proxy_for_which_target() -> None:
    https, http, setting = (URL(f"http://{n}:3128") for n in ("s", "p", "e"))
    env_only = EgressConfig(https_proxy=https, http_proxy=http, no_proxy=(".internal",))
    assert proxy_for(env_only, URL("https://api-gateway.instructure.com/x")) == https
    assert proxy_for(env_only, URL("http://api-gateway.instructure.com/x")) == http
    assert proxy_for(env_only, URL("https://dap.internal/x")) is None
    # The setting wins over the environment's variables, for every scheme; NO_PROXY holds.
    both = EgressConfig(proxy=setting, https_proxy=https, no_proxy=(".internal",))
    assert proxy_for(both, URL("https://api-gateway.instructure.com/")) == setting
    assert proxy_for(both, URL("http://storage.example/")) == setting
    assert proxy_for(both, URL("https://dap.internal/")) is None
    assert proxy_for(EgressConfig(), URL("https://api-gateway.instructure.com/")) is None


def _load(environ: dict[str, str]) -> Any:
    return load_config(None, {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "x", **environ})


def test_config_reads_either_case_and_masks_the_password(tmp_path: Path) -> None:
    config = _load(
        {
            "https_proxy": f"http://alice:{PASSWORD}@proxy.example:3128",
            "HTTP_PROXY": "proxy.example:8080",  # no scheme: http, as curl reads it
            "NO_PROXY": "localhost, .example.edu",
        }
    )
    egress = config.egress
    assert egress.https_proxy.password == PASSWORD
    assert egress.http_proxy == URL("http://proxy.example:8080")
    assert egress.no_proxy == ("localhost", ".example.edu")
    for shown in (repr(config), repr(egress), masked(egress.https_proxy)):
        assert PASSWORD not in shown
    assert masked(egress.https_proxy) == "http://alice:***@proxy.example:3128"
    assert host_port(egress.https_proxy) == "proxy.example:3128"
    # The setting wins over the variables.
    setting = _load({"HTTPS_PROXY": "http://a:3128", "DAP_PROXY_EGRESS_PROXY": "http://b:3128"})
    assert proxy_for(setting.egress, URL("https://x/")) == URL("http://b:3128")


def test_credentials_file_and_bad_values_never_echo_a_password(tmp_path: Path) -> None:
    secret_file = tmp_path / "proxy-credentials"
    secret_file.write_text(f"bob:{PASSWORD}\n")
    secret_file.chmod(0o600)
    config = _load(
        {
            "DAP_PROXY_EGRESS_PROXY": "http://proxy.example:3128",
            "DAP_PROXY_EGRESS_PROXY_CREDENTIALS_FILE": str(secret_file),
        }
    )
    assert config.egress.proxy.user == "bob"
    assert config.egress.proxy.password == PASSWORD
    assert PASSWORD not in repr(config)
    assert str(secret_file) in config.watched_files

    with pytest.raises(ConfigError) as caught:
        _load(
            {
                "DAP_PROXY_EGRESS_PROXY": f"https://u:{PASSWORD}@proxy.example:3128",
                "HTTPS_PROXY": f"ftp://u:{PASSWORD}@proxy.example:21",
            }
        )
    problems = "\n".join(caught.value.problems)
    assert "egress_proxy: expected an http:// proxy URL" in problems
    assert "HTTPS_PROXY: expected an http:// proxy URL" in problems
    assert PASSWORD not in problems

    secret_file.write_text("no colon here\n")
    with pytest.raises(ConfigError) as caught:
        _load(
            {
                "HTTPS_PROXY": "http://proxy.example:3128",
                "DAP_PROXY_EGRESS_PROXY_CREDENTIALS_FILE": str(secret_file),
            }
        )
    assert "expected one line, user:password" in str(caught.value)


@pytest.fixture
async def egress_proxy() -> AsyncIterator[ConnectProxy]:
    connect_proxy = ConnectProxy(credentials=("alice", PASSWORD))
    await connect_proxy.start()
    yield connect_proxy
    await connect_proxy.close()


def _through(egress_proxy: ConnectProxy, gateway: Gateway) -> str:
    """The gateway's URL under a name only the egress proxy can resolve."""
    port = URL(gateway.url).port
    assert port is not None
    egress_proxy.hosts["gateway.invalid"] = port
    return f"http://gateway.invalid:{port}"


async def test_token_and_api_requests_go_through_the_egress_proxy(
    gateway: Gateway,
    proxy_factory: ProxyFactory,
    egress_proxy: ConnectProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream = _through(egress_proxy, gateway)
    proxy = await proxy_factory(
        upstream, DAP_PROXY_EGRESS_PROXY=egress_proxy.url_with("alice", PASSWORD)
    )
    assert proxy.tokens.ready
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as response:
        assert response.status == 200
        assert "accounts" in (await response.json())["tables"]
    assert egress_proxy.seen == [
        f"POST {upstream}/ids/auth/login",
        f"GET {upstream}/dap/query/canvas/table",
    ]
    # The proxy's credentials stop at the egress proxy; the gateway's token goes on.
    assert all(b"proxy-authorization" not in h.lower() for h in egress_proxy.forwarded_heads)
    api = gateway.state.requests_to("list_tables")[-1]
    assert api.headers["Authorization"].startswith("Bearer ")
    assert "Proxy-Authorization" not in api.headers
    assert "egress proxy http://alice:***@127.0.0.1" in caplog.text
    assert PASSWORD not in caplog.text
    async with proxy.http.get(proxy.url + "/-/status") as response:
        status = await response.text()
    assert PASSWORD not in status
    assert json.loads(status)["egress"] == {
        "egress_proxy": f"http://alice:***@127.0.0.1:{egress_proxy.port}",
        "https_proxy": None,
        "http_proxy": None,
        "no_proxy": [],
    }


async def test_credentials_from_a_file(
    gateway: Gateway, proxy_factory: ProxyFactory, egress_proxy: ConnectProxy, tmp_path: Path
) -> None:
    secret_file = tmp_path / "egress-credentials"
    secret_file.write_text(f"alice:{PASSWORD}\n")
    secret_file.chmod(0o600)
    proxy = await proxy_factory(
        _through(egress_proxy, gateway),
        HTTP_PROXY=egress_proxy.url,
        DAP_PROXY_EGRESS_PROXY_CREDENTIALS_FILE=str(secret_file),
    )
    assert proxy.tokens.ready
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as response:
        assert response.status == 200


async def test_wrong_egress_credentials_are_an_egress_problem_not_rejected_credentials(
    gateway: Gateway,
    proxy_factory: ProxyFactory,
    egress_proxy: ConnectProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password"
    proxy = await proxy_factory(
        _through(egress_proxy, gateway),
        DAP_PROXY_EGRESS_PROXY=egress_proxy.url_with("alice", wrong),
    )
    error = proxy.tokens.state.error
    assert isinstance(error, TokenEndpointUnavailable)  # retried, never "rejected"
    expected = (
        f"the egress proxy 127.0.0.1:{egress_proxy.port} refused the credentials (407): "
        "check the user and password in egress_proxy"
    )
    assert expected in error.message
    assert expected in caplog.text  # the startup warning
    async with proxy.http.get(proxy.url + "/-/ready") as response:
        assert response.status == 503
        assert expected in (await response.json())["error"]["message"]
    assert gateway.state.token_requests == 0
    assert wrong not in caplog.text


async def test_an_unreachable_egress_proxy_is_named(
    gateway: Gateway, proxy_factory: ProxyFactory, unused_tcp_port: int
) -> None:
    proxy = await proxy_factory(
        "http://gateway.invalid:9", DAP_PROXY_EGRESS_PROXY=f"http://127.0.0.1:{unused_tcp_port}"
    )
    async with proxy.http.get(proxy.url + "/-/ready") as response:
        assert response.status == 503
        message = (await response.json())["error"]["message"]
    assert (
        f"the egress proxy 127.0.0.1:{unused_tcp_port} could not be reached: connection refused"
        in message
    )


async def test_no_proxy_goes_direct(
    gateway: Gateway, proxy_factory: ProxyFactory, egress_proxy: ConnectProxy
) -> None:
    proxy = await proxy_factory(
        gateway.url,
        HTTP_PROXY=egress_proxy.url_with("alice", PASSWORD),
        NO_PROXY="localhost,127.0.0.1",
    )
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as response:
        assert response.status == 200
    assert egress_proxy.seen == []


def test_api_requests_name_an_egress_failure_as_one() -> None:
    """The forwarder's words for a failure on the way to the gateway (not only the token
    client's): a refusing or unreachable egress proxy is named as such."""
    from unittest.mock import Mock

    import aiohttp

    from proxy.upstream.failures import describe as _name

    refused = aiohttp.ClientHttpProxyError(Mock(real_url="http://x"), (), status=407)
    assert _name(refused) == "the egress proxy refused the connection (HTTP 407)"
    unreachable = aiohttp.ClientProxyConnectionError(Mock(), ConnectionRefusedError(111, "x"))
    assert _name(unreachable) == "the egress proxy could not be reached: connection refused"


# ====================================================================== issue 20: the words


async def test_a_407_names_only_the_settings_in_use(
    gateway: Gateway, proxy_factory: ProxyFactory, egress_proxy: ConnectProxy, tmp_path: Path
) -> None:
    """Only HTTP_PROXY set, no login in it: the advice names HTTP_PROXY, not egress_proxy."""
    proxy = await proxy_factory(_through(egress_proxy, gateway), HTTP_PROXY=egress_proxy.url)
    message = proxy.tokens.state.error.message  # type: ignore[union-attr]
    assert (
        f"the egress proxy 127.0.0.1:{egress_proxy.port} refused the credentials (407): "
        "HTTP_PROXY has no user and password: add them to its URL (percent-encoded), or put "
        "user:password in egress_proxy_credentials_file"
    ) in message
    assert "egress_proxy's" not in message and "egress_proxy " not in message
    # With the credentials file: that file is what to check, by its path.
    wrong = tmp_path / "egress"
    wrong.write_text("alice:not-the-password\n")
    wrong.chmod(0o600)
    proxy = await proxy_factory(
        _through(egress_proxy, gateway),
        http_proxy=egress_proxy.url,
        DAP_PROXY_EGRESS_PROXY_CREDENTIALS_FILE=str(wrong),
    )
    message = proxy.tokens.state.error.message  # type: ignore[union-attr]
    assert f"check the user:password in egress_proxy_credentials_file ({wrong})" in message
    assert "not-the-password" not in message


async def test_an_unreachable_proxy_from_the_environment_names_that_variable(
    gateway: Gateway, proxy_factory: ProxyFactory, unused_tcp_port: int
) -> None:
    proxy = await proxy_factory(
        "http://gateway.invalid:9", http_proxy=f"http://127.0.0.1:{unused_tcp_port}"
    )
    message = proxy.tokens.state.error.message  # type: ignore[union-attr]
    assert "connection refused: check http_proxy, or exempt gateway.invalid with NO_PROXY" in (
        message
    )


async def test_a_direct_failure_says_no_proxy_made_it_direct(
    proxy_factory: ProxyFactory, unused_tcp_port: int
) -> None:
    proxy = await proxy_factory(
        f"http://127.0.0.1:{unused_tcp_port}",
        HTTP_PROXY="http://proxy.invalid:3128",
        no_proxy="localhost,127.0.0.1",
    )
    async with proxy.http.get(proxy.url + "/-/ready") as response:
        message = (await response.json())["error"]["message"]
    assert (
        f"the token endpoint at 127.0.0.1:{unused_tcp_port} could not be reached (connected "
        "directly, not through HTTP_PROXY proxy.invalid:3128: no_proxy exempts 127.0.0.1): "
        "connection refused"
    ) in message


async def test_a_forwarded_request_that_failed_directly_says_no_proxy_made_it_direct(
    gateway: Gateway, proxy_factory: ProxyFactory, unused_tcp_port: int
) -> None:
    """Issue 20, item 14: the API request's 502, not only the token endpoint's failure, says
    that NO_PROXY sent it past the egress proxy."""
    proxy = await proxy_factory(
        f"http://127.0.0.1:{unused_tcp_port}",  # the API gateway: nothing listens
        DAP_PROXY_TOKEN_URL=gateway.url + "/ids/auth/login",  # tokens come
        HTTP_PROXY="http://proxy.invalid:3128",
        no_proxy="localhost,127.0.0.1",
    )
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as response:
        assert response.status == 502
        message = (await response.json())["error"]["message"]
    assert (
        f"the gateway at 127.0.0.1:{unused_tcp_port} could not be reached: connection refused "
        "(connected directly, not through HTTP_PROXY proxy.invalid:3128: no_proxy exempts "
        "127.0.0.1)"
    ) in message


def _problems(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(environ)
    return "\n".join(caught.value.problems)


def test_an_unencoded_password_gets_the_way_to_write_it() -> None:
    raw = "p@ss:w0rd/Zq%"
    problems = _problems({"HTTPS_PROXY": f"http://alice:{raw}@proxy.example:3128"})
    assert (
        "HTTPS_PROXY: expected http://[user:password@]host:port, got "
        "'http://***@proxy.example:3128'; a user or password with @ : / ? # or % must be "
        "percent-encoded in the URL (@ as %40"
    ) in problems
    assert "or put user:password in egress_proxy_credentials_file instead" in problems
    assert "(from environment variable HTTPS_PROXY)" in problems
    assert raw not in problems and "w0rd" not in problems
    # Encoded as told, it works.
    from urllib.parse import quote

    config = _load({"HTTPS_PROXY": f"http://alice:{quote(raw, safe='')}@proxy.example:3128"})
    assert config.egress.https_proxy.password == raw


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "DAP_PROXY_EGRESS_PROXY"])
def test_a_proxy_without_a_port_is_refused_naming_curls_default(name: str) -> None:
    problems = _problems({name: f"http://bob:{PASSWORD}@127.0.0.1"})
    assert (
        "no port in 'http://***@127.0.0.1': write the egress proxy's port, as in "
        "http://127.0.0.1:3128 (curl would use 1080, this proxy will not guess)"
    ) in problems
    assert PASSWORD not in problems


def test_credentials_in_the_url_and_the_file_are_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "proxy-credentials"
    secret_file.write_text(f"bob:{PASSWORD}\n")
    secret_file.chmod(0o600)
    problems = _problems(
        {
            "HTTPS_PROXY": f"http://alice:{PASSWORD}@proxy.example:3128",
            "DAP_PROXY_EGRESS_PROXY_CREDENTIALS_FILE": str(secret_file),
        }
    )
    assert (
        "egress_proxy_credentials_file and the user:password in HTTPS_PROXY: the egress "
        "proxy's credentials are set twice; keep one"
    ) in problems
    assert "environment variable DAP_PROXY_EGRESS_PROXY_CREDENTIALS_FILE" in problems
    assert "from environment variable HTTPS_PROXY" in problems
    assert PASSWORD not in problems
    # An environment proxy that egress_proxy overrides is not in use: no conflict there.
    config = _load(
        {
            "HTTPS_PROXY": f"http://alice:{PASSWORD}@proxy.example:3128",
            "DAP_PROXY_EGRESS_PROXY": "http://egress.example:3128",
            "DAP_PROXY_EGRESS_PROXY_CREDENTIALS_FILE": str(secret_file),
        }
    )
    assert config.egress.proxy.user == "bob"


def test_a_login_sent_in_clear_is_warned_about_naming_the_hop(tmp_path: Path) -> None:
    config = load_config(
        None,
        {
            "DAP_CLIENT_ID": "id",
            "DAP_CLIENT_SECRET": "x",
            "DAP_PROXY_UPSTREAM": "http://gateway.example.edu",
            "https_proxy": f"http://alice:{PASSWORD}@proxy.example.edu:3128",
            "HTTP_PROXY": "http://proxy.example.edu:3128",  # no login: nothing to warn of
        },
    )
    warnings = "\n".join(config.warnings)
    assert (
        "upstream: http://gateway.example.edu is plain http://, so the gateway token on "
        "every request cross the network unencrypted"
    ) in warnings
    assert (
        "token_url: http://gateway.example.edu is plain http://, so the client id and secret"
        in (warnings)
    )
    assert (
        "https_proxy: the egress proxy http://alice:***@proxy.example.edu:3128 is spoken to in "
        "plain HTTP, so its login (the user:password in https_proxy) crosses the network"
    ) in warnings
    assert "HTTP_PROXY" not in warnings
    assert PASSWORD not in warnings
    # Loopback hops (the simulator, a local squid) are this machine's business: silence.
    local = _load(
        {
            "DAP_PROXY_UPSTREAM": "http://127.0.0.1:9000",
            "HTTPS_PROXY": f"http://alice:{PASSWORD}@localhost:3128",
        }
    )
    assert local.warnings == ()

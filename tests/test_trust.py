"""Issue 13: TLS behind an institution's network: a gateway whose certificate comes from a
private CA (``trustme``), trusted through ``ca_file`` or ``SSL_CERT_FILE``, reached directly
or through the egress proxy's ``CONNECT``; and what a user is told when it is not trusted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from proxy.config import load_config
from proxy.errors import ConfigError, TokenEndpointUnavailable
from proxy.simulator import SimulatorSettings, create_simulator_app

from .conftest import ProxyFactory
from .connect_proxy import ConnectProxy, PrivateCA

PASSWORD = "tls-proxy-pw"

TlsGateway = Callable[..., Coroutine[Any, Any, str]]


@pytest.fixture(scope="module")
def private_ca() -> PrivateCA:
    return PrivateCA()


@pytest.fixture
def tls_gateway(aiohttp_server: Any, private_ca: PrivateCA) -> TlsGateway:
    async def make(*names: str) -> str:
        """The simulator over TLS on 127.0.0.1, its certificate valid for ``names``."""
        app = create_simulator_app(SimulatorSettings(rate_limits=False))
        server = await aiohttp_server(app, ssl=private_ca.server_context(*names))
        return f"https://127.0.0.1:{server.port}"

    return make


@pytest.fixture
async def egress_proxy() -> AsyncIterator[ConnectProxy]:
    connect_proxy = ConnectProxy(credentials=("carol", PASSWORD))
    await connect_proxy.start()
    yield connect_proxy
    await connect_proxy.close()


async def _ready_message(proxy: Any) -> str:
    async with proxy.http.get(proxy.url + "/-/ready") as response:
        assert response.status == 503
        message: str = (await response.json())["error"]["message"]
        return message


async def test_a_private_ca_through_ca_file(
    tls_gateway: TlsGateway, private_ca: PrivateCA, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    gateway = await tls_gateway("127.0.0.1")
    proxy = await proxy_factory(gateway, DAP_PROXY_CA_FILE=private_ca.pem_file(tmp_path))
    assert proxy.tokens.ready
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as response:
        assert response.status == 200


async def test_ssl_cert_file_is_honoured(
    tls_gateway: TlsGateway, private_ca: PrivateCA, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    gateway = await tls_gateway("127.0.0.1")
    proxy = await proxy_factory(gateway, SSL_CERT_FILE=private_ca.pem_file(tmp_path))
    assert proxy.tokens.ready


async def test_an_untrusted_certificate_says_why_and_what_to_change(
    tls_gateway: TlsGateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    gateway = await tls_gateway("127.0.0.1")
    proxy = await proxy_factory(gateway)
    error = proxy.tokens.state.error
    assert isinstance(error, TokenEndpointUnavailable)
    where = f"the token endpoint at 127.0.0.1:{URL(gateway).port} could not be reached"
    message = await _ready_message(proxy)
    # The cause in the platform's words: OpenSSL's on Linux; macOS and Windows word it
    # their own way (truststore asks their trust stores).
    cause = "certificate verify failed" + (
        ": unable to get local issuer certificate" if sys.platform.startswith("linux") else ""
    )
    for shown in (message, caplog.text):
        assert where in shown
        assert cause in shown
        assert "set ca_file (DAP_PROXY_CA_FILE)" in shown


async def test_https_through_connect(
    tls_gateway: TlsGateway,
    private_ca: PrivateCA,
    proxy_factory: ProxyFactory,
    egress_proxy: ConnectProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = URL(await tls_gateway("gateway.invalid")).port
    assert port is not None
    egress_proxy.hosts["gateway.invalid"] = port
    proxy = await proxy_factory(
        f"https://gateway.invalid:{port}",
        HTTPS_PROXY=egress_proxy.url_with("carol", PASSWORD),
        DAP_PROXY_CA_FILE=private_ca.pem_file(tmp_path),
    )
    assert proxy.tokens.ready
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as response:
        assert response.status == 200
    assert f"CONNECT gateway.invalid:{port}" in egress_proxy.seen
    assert PASSWORD not in caplog.text


async def test_connect_refused_for_credentials_or_by_rule(
    tls_gateway: TlsGateway,
    private_ca: PrivateCA,
    proxy_factory: ProxyFactory,
    egress_proxy: ConnectProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = URL(await tls_gateway("gateway.invalid")).port
    assert port is not None
    egress_proxy.hosts["gateway.invalid"] = port
    wrong = egress_proxy.url_with("carol", "wrong-password")
    ca_file = private_ca.pem_file(tmp_path)
    upstream = f"https://gateway.invalid:{port}"
    proxy = await proxy_factory(upstream, HTTPS_PROXY=wrong, DAP_PROXY_CA_FILE=ca_file)
    message = await _ready_message(proxy)
    assert (
        f"the egress proxy 127.0.0.1:{egress_proxy.port} refused the credentials (407): "
        "check the user and password in HTTPS_PROXY" in message
    )
    assert "wrong-password" not in caplog.text

    egress_proxy.refuse_connect = True
    right = egress_proxy.url_with("carol", PASSWORD)
    proxy = await proxy_factory(upstream, DAP_PROXY_EGRESS_PROXY=right, DAP_PROXY_CA_FILE=ca_file)
    message = await _ready_message(proxy)
    assert (
        f"the egress proxy 127.0.0.1:{egress_proxy.port} refused to connect to "
        f"gateway.invalid:{port} (HTTP 403)" in message
    )
    assert PASSWORD not in caplog.text


def test_a_missing_or_invalid_ca_file_is_a_configuration_problem(tmp_path: Path) -> None:
    base = {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "x"}
    with pytest.raises(ConfigError, match=r"ca_file: .* is not a readable file"):
        load_config(None, {**base, "DAP_PROXY_CA_FILE": str(tmp_path / "absent.pem")})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM certificate bundle"):
        load_config(None, {**base, "DAP_PROXY_CA_FILE": str(garbage)})

"""The aiohttp internals the proxy relies on, checked when a runner is made."""

from __future__ import annotations

import tomllib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.server import aiohttp_support
from proxy.server.aiohttp_support import (
    INTERNALS,
    SUPPORTED,
    Internal,
    UnsupportedAiohttp,
    check_aiohttp,
)
from proxy.server.protocol import ProxyRunner


class FakeHandler:
    """A handler class from a release that renamed ``_close`` and changed handle_error."""

    _force_close = False

    def handle_error(self, request: object, status: int = 500) -> None: ...


def test_the_installed_aiohttp_has_everything() -> None:
    check_aiohttp()
    ProxyRunner(web.Application())


def test_the_declared_range_is_the_supported_one() -> None:
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert f"aiohttp{SUPPORTED}" in project["project"]["dependencies"]


def test_a_missing_attribute_is_named_with_the_version_and_the_range() -> None:
    internals = [
        Internal("FakeHandler", "_force_close", "present", lambda: FakeHandler),
        Internal("FakeHandler", "_close", "set when shutdown starts", lambda: FakeHandler),
    ]
    with pytest.raises(UnsupportedAiohttp) as raised:
        check_aiohttp(internals)
    message = str(raised.value)
    assert f"aiohttp {aiohttp.__version__} is not supported" in message
    assert f"supported: aiohttp{SUPPORTED}" in message
    assert "FakeHandler._close (set when shutdown starts)" in message
    assert "_force_close" not in message
    assert isinstance(raised.value, RuntimeError)


def test_a_changed_signature_is_named() -> None:
    parameters = ("self", "request", "status", "exc", "message")
    internals = [Internal("FakeHandler", "handle_error", "why", lambda: FakeHandler, parameters)]
    with pytest.raises(UnsupportedAiohttp, match=r"FakeHandler\.handle_error.*takes"):
        check_aiohttp(internals)


def test_an_owner_that_cannot_be_found_is_named() -> None:
    def gone() -> object:
        raise AttributeError("module 'aiohttp.web' has no attribute 'Server'")

    with pytest.raises(UnsupportedAiohttp, match=r"web\.Server instance \(AttributeError"):
        check_aiohttp([Internal("web.Server instance", "_kwargs", "why", gone)])


def test_the_runner_refuses_to_be_made_on_an_aiohttp_without_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = Internal("FakeHandler", "_close", "the drain", lambda: FakeHandler)
    monkeypatch.setattr(aiohttp_support, "INTERNALS", (*INTERNALS, missing))
    with pytest.raises(UnsupportedAiohttp, match=r"FakeHandler\._close \(the drain\)"):
        ProxyRunner(web.Application())


async def test_serve_refuses_to_start_on_such_an_aiohttp_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a traceback at the first SIGTERM: exit status 1 at once, naming what is missing."""
    from proxy import exit_status
    from proxy.config import load_config
    from proxy.server.serve import serve

    missing = Internal("FakeHandler", "_close", "the drain", lambda: FakeHandler)
    monkeypatch.setattr(aiohttp_support, "INTERNALS", (*INTERNALS, missing))
    config = load_config(
        None, {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "s"}, {"listen": "127.0.0.1:0"}
    )
    assert await serve(config) == exit_status.FAILED
    text = caplog.text
    assert "FakeHandler._close (the drain)" in text and f"aiohttp{SUPPORTED}" in text
    assert "Traceback" not in text

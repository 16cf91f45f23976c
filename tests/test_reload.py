"""Issue 19, items 6 and 8: a failed reload is visible until one succeeds; secret files are
read off the event loop, bounded, regular files only, and warned about as at startup."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from proxy.config import Config
from proxy.config.files import FileRefused, read_small_file
from proxy.server.reload import Reloader
from proxy.server.serve import RunningProxy, start

from .conftest import Gateway, proxy_config
from .test_observability import sample
from .waiting import until

KEY = "the-first-access-key-0123456789"
OTHER = "the-other-access-key-0123456789"
TABLES = "/dap/query/canvas/table"


class Keyed:
    """A running proxy whose access keys come from a file, and its reloader."""

    def __init__(self, running: RunningProxy, keys: Path, load: Callable[[], Config]) -> None:
        self.running, self.keys, self.load = running, keys, load
        self.reloader = Reloader(running.runner.app, load(), load, interval=0.05)
        self.http = aiohttp.ClientSession()

    async def status(self, key: str = KEY) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        async with self.http.get(self.running.url + TABLES, headers=headers) as resp:
            return resp.status

    async def get(self, path: str) -> tuple[str, str]:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with self.http.get(self.running.url + path, headers=headers) as resp:
            return (await resp.text()), resp.headers.get("Content-Type", "")


@pytest.fixture
async def keyed(gateway: Gateway, tmp_path: Path) -> AsyncIterator[Keyed]:
    keys = tmp_path / "access-keys"
    keys.write_text(f"{KEY}\n{OTHER}\n")
    keys.chmod(0o600)

    def load() -> Config:
        return proxy_config(gateway.url, DAP_PROXY_ACCESS_KEYS_FILE=str(keys))

    running = await start(load())
    await running.first_token()
    proxy = Keyed(running, keys, load)
    yield proxy
    await proxy.http.close()
    await running.stop()


async def test_a_failed_reload_keeps_the_keys_and_shows_until_one_succeeds(
    keyed: Keyed, caplog: pytest.LogCaptureFixture
) -> None:
    keyed.keys.write_text(f"{KEY}\nshort\n")  # OTHER removed, a too-short one added
    assert not await keyed.reloader.reload_off_loop()
    assert await keyed.status(OTHER) == 200, "the running configuration is kept"
    status, _ = await keyed.get("/-/status")
    assert (
        '"task":"configuration","error":"the last reload failed, the running configuration '
        'is kept: invalid access_keys (the log says why)"'
    ) in status
    metrics, _ = await keyed.get("/-/metrics")
    assert sample(metrics, "proxy_config_reload_failures_total") == 1
    assert sample(metrics, "proxy_config_last_reload_successful") == 0
    keyed.keys.write_text("")  # emptied: still failing, still shown
    assert not keyed.reloader.reload()
    metrics, _ = await keyed.get("/-/metrics")
    assert sample(metrics, "proxy_config_reload_failures_total") == 2
    assert "access_keys_file" in (await keyed.get("/-/status"))[0]

    keyed.keys.write_text(f"{KEY}\n")
    assert await keyed.reloader.reload_off_loop()
    assert '"problems":[]' in (await keyed.get("/-/status"))[0]
    metrics, _ = await keyed.get("/-/metrics")
    assert sample(metrics, "proxy_config_last_reload_successful") == 1
    assert await keyed.status(OTHER) == 401, "removed at the reload that succeeded"
    assert await keyed.status(KEY) == 200


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
async def test_a_fifo_in_a_secret_files_place_never_blocks(keyed: Keyed) -> None:
    keyed.keys.unlink()
    os.mkfifo(keyed.keys)  # no writer will ever come
    watching = asyncio.create_task(keyed.reloader.run())
    try:
        app = keyed.running.runner.app
        from proxy.server.keys import SUPERVISOR

        await until(lambda: "configuration" in app[SUPERVISOR].problems, "the refusal")
        for _ in range(3):  # the loop answers throughout
            async with keyed.http.get(keyed.running.url + "/-/healthy") as resp:
                assert resp.status == 200
        assert await keyed.status(KEY) == 200
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    with pytest.raises(FileRefused, match=r"is a FIFO \(named pipe\), not a regular file"):
        read_small_file(keyed.keys)


@pytest.mark.skipif(sys.platform == "win32", reason="file modes")
async def test_a_symlink_to_a_world_readable_file_warns_on_reload(
    keyed: Keyed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exposed = tmp_path / "exposed-keys"
    exposed.write_text(f"{KEY}\n")
    exposed.chmod(0o644)
    keyed.keys.unlink()
    keyed.keys.symlink_to(exposed)
    caplog.set_level(logging.WARNING, "proxy")
    assert await keyed.reloader.reload_off_loop()
    assert f"access_keys_file: {keyed.keys} can be read by other users" in caplog.text
    assert KEY not in caplog.text


def test_secret_files_are_read_within_a_bound(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"k" * 101)
    with pytest.raises(FileRefused, match="is larger than 100 bytes"):
        read_small_file(big, limit=100)
    assert read_small_file(big, limit=101)[0] == "k" * 101
    with pytest.raises(FileRefused, match="is a directory"):
        read_small_file(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_as_the_config_file_is_refused_at_once(tmp_path: Path) -> None:
    from proxy.config import load_config
    from proxy.errors import ConfigError

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as raised:
        load_config(fifo, {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "s"})
    assert raised.value.problems == [
        f"config file {fifo}: is a FIFO (named pipe), not a regular file"
    ]

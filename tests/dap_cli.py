"""Running the official ``dap`` CLI as a subprocess, for the end-to-end tests.

It runs with ``asyncio.create_subprocess_exec``, so servers in the test's own event loop
keep serving while we wait for it. ``DAP_TRACKING=false`` always: the client must never
report usage to a third-party host from a test.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

CLI_TIMEOUT = 60.0


def dap_executable() -> str:
    """``$DAP_CLI`` (``scripts/dap-cli`` prints one), else the ``dap`` of this environment.

    The CLI pins aiohttp exactly, so it lives in an environment of its own: the proxy's
    runs on whatever aiohttp it allows.
    """
    found = os.environ.get("DAP_CLI") or shutil.which("dap")
    found = found or str(Path(sys.executable).parent / "dap")
    if not Path(found).exists():
        pytest.fail(
            f"the official dap CLI is not at {found}: set DAP_CLI=$(scripts/dap-cli), "
            "or install instructure-dap-client"
        )
    return found


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run_dap(base_url: str, command: str, *, cwd: Path, client_id: str, secret: str) -> Result:
    """``dap --non-interactive COMMAND`` with ``DAP_API_URL=base_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    env |= {
        "DAP_API_URL": base_url,
        "DAP_CLIENT_ID": client_id,
        "DAP_CLIENT_SECRET": secret,
        "DAP_TRACKING": "false",
    }
    process = await asyncio.create_subprocess_exec(
        dap_executable(),
        "--non-interactive",
        *shlex.split(command),
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def ok(result: Result) -> Result:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def job_directory(output: Path) -> tuple[str, Path]:
    """The one ``job_<id>`` directory the CLI made, and the job id."""
    (directory,) = output.glob("job_*")
    return directory.name.removeprefix("job_"), directory

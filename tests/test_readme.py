"""Every README command runs as written (issue 20).

The commands are the README's indented code blocks (four spaces, outside ``` fences); a
block is one shell script, its lines joined as bash reads them (``\\`` continues a line).
Each command is classified by the first rule of ``RULES`` that matches it:

- ``RUN``: runs offline against ``instructure-auth-proxy demo`` (the gateway simulator with
  the proxy in front), started once for this module on a free port;
- ``SKIP``, with the reason: it needs something a test run cannot have (Docker, root, the
  network to install packages, the real gateway's credentials, an institution's egress
  proxy, minutes of benchmarking), or it is a synopsis, not a command.

A block runs only if every command in it is ``RUN`` (a block is a sequence: the rest of a
block after a skipped line depends on it); otherwise it is reported skipped with the reason
of its first skipped command. A command no rule matches fails the test: a new README line
must be classified here, so that it runs or is skipped knowingly, never silently.

As written, with two substitutions: ``127.0.0.1:8080`` becomes the demo's address (8080 may
be taken on the machine running the tests), and ``instructure-auth-proxy`` runs this
checkout (a shim on ``PATH``: ``python -m proxy``). ``dap`` is the official CLI named by
``DAP_CLI`` (or on ``PATH``); without it (or without curl), its block is skipped, saying
so. A block passes when it exits 0 and no command printed a gateway-shaped error body.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN = "run"
pytestmark = pytest.mark.system

RULES: tuple[tuple[str, str], ...] = (
    (r"#", "a comment"),
    (r"instructure-auth-proxy \[", "a synopsis of the command line, not a command"),
    (r"(python3 -m venv|py -m venv|pip install|\.venv\\)", "installs packages: the network"),
    (r"(docker|sudo|\(umask)", "needs Docker or root (the container's own setup)"),
    (r"export DAP_CLIENT_(ID|SECRET)=", "needs the real gateway's credentials"),
    (r"instructure-auth-proxy serve\b", "serves the real gateway: its credentials"),
    (r"export (HTTPS?_PROXY|NO_PROXY)=", "needs an institution's egress proxy"),
    (r"python -m benchmarks", "minutes of benchmarking, with nginx and wrk"),
    (
        r"instructure-auth-proxy (demo|simulate)\b",
        "runs until Ctrl-C (the demo is what this module runs the rest against; "
        "test_cli runs simulate's printed line)",
    ),
    (r"curl (-X POST )?http://127\.0\.0\.1:8080/", RUN),
    (r"export DAP_API_URL=http://127\.0\.0\.1:8080 ", RUN),
    (r"dap --non-interactive ", RUN),
)


class Block(NamedTuple):
    line: int  # where it starts in the README
    commands: list[str]  # logical lines: continuations joined

    @property
    def script(self) -> str:
        return "\n".join(self.commands)


def blocks(text: str) -> Iterator[Block]:
    """The indented code blocks outside fences, as commands."""
    fenced, current, start, previous_blank = False, [], 0, True
    for number, line in enumerate([*text.splitlines(), ""], 1):
        if line.startswith("```"):
            fenced = not fenced
        indented = not fenced and line.startswith("    ") and (previous_blank or current)
        if indented:
            start = start or number
            current.append(line[4:])
        elif current and line.strip() == "":
            yield Block(start, _joined(current))
            current, start = [], 0
        elif current:
            current, start = [], 0  # an indented list item's continuation, not code
        previous_blank = line.strip() == ""


def _joined(lines: list[str]) -> list[str]:
    commands: list[str] = []
    for line in lines:
        if commands and commands[-1].endswith("\\"):
            commands[-1] += "\n" + line
        else:
            commands.append(line)
    return commands


def verdict(command: str) -> str | None:
    """``RUN``, a reason to skip, or None when no rule knows the command."""
    return next((what for rule, what in RULES if re.match(rule, command.strip())), None)


ALL = list(blocks(README.read_text(encoding="utf-8")))


def test_every_readme_command_is_classified() -> None:
    unknown = [
        f"README.md:{block.line}: {command}"
        for block in ALL
        for command in block.commands
        if verdict(command) is None
    ]
    assert not unknown, "add a rule to tests/test_readme.py for:\n" + "\n".join(unknown)
    assert any(verdict(c) == RUN for block in ALL for c in block.commands), "none would run"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """``instructure-auth-proxy demo`` on a free port, and an environment whose ``PATH``
    runs this checkout as ``instructure-auth-proxy`` and has the ``dap`` CLI if known."""
    shims = tmp_path_factory.mktemp("bin")
    shim = shims / "instructure-auth-proxy"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m proxy "$@"\n')
    shim.chmod(0o755)
    dap = os.environ.get("DAP_CLI") or shutil.which("dap")
    path = [str(shims), *([str(Path(dap).parent)] if dap else []), os.environ["PATH"]]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    environ |= {"PATH": os.pathsep.join(path), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(  # noqa: S603 - our own command line
        [str(shim), "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=environ,
        text=True,
    )
    assert process.stdout is not None
    url = ""
    for line in process.stdout:
        if line.strip().startswith("proxy:"):
            url = line.split()[1]
        if "Press Ctrl-C" in line:
            break
    try:
        assert url.startswith("http://127.0.0.1:"), "the demo did not start"
        yield url, environ | {"HAS_DAP": "1" if dap else ""}
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


@pytest.mark.skipif(sys.platform == "win32", reason="the README's lines are POSIX shell")
@pytest.mark.parametrize("block", ALL, ids=[f"README.md:{block.line}" for block in ALL])
def test_the_readme_command_runs_as_written(
    block: Block, demo: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    skipped = [why for why in map(verdict, block.commands) if why not in (RUN, None)]
    if skipped:
        pytest.skip(f"README.md:{block.line} skipped by rule: {skipped[0]}")
    url, environ = demo
    if any(command.startswith("dap ") for command in block.commands) and not environ["HAS_DAP"]:
        pytest.skip(f"README.md:{block.line}: the dap CLI is not installed (set DAP_CLI)")
    if any(command.startswith("curl ") for command in block.commands) and not shutil.which("curl"):
        pytest.skip(f"README.md:{block.line}: curl is not installed")
    script = block.script.replace("http://127.0.0.1:8080", url)
    done = subprocess.run(  # noqa: S603 - the README's own lines
        ["bash", "-ec", script],  # noqa: S607
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"README.md:{block.line}\n{script}\n{done.stderr[-2000:]}"
    assert '"error":' not in done.stdout, done.stdout[-2000:]

"""What each feature costs a small GET: ours, and copies of it with one feature taken out.

    python -m benchmarks.feature_budget                  # the proxy at HEAD, six rounds
    python -m benchmarks.feature_budget --rev 698cc7c --rounds 8

Each copy is the proxy as committed at ``--rev`` with one patch (below), measured by the
harness as a ``--candidate`` in the same rounds as ours and the minimal proxy, at one
connection. A patch that no longer applies stops the run and names itself: the code it cuts
has changed, and the patch must follow it. The copies are for measuring only: they drop
checks the product must make.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .run import _export

__all__ = ["CUTS", "build", "main"]

Patch = tuple[str, str, str]  # a file under proxy/, a pattern (re.S) found once, its replacement

_NO_ACCESS_LOG: Patch = (
    "observe/logs.py",
    re.escape("        sent = request.get(BYTES_OUT)\n"),
    "        return\n        sent = request.get(BYTES_OUT)\n",
)
_NO_ADMISSION: Patch = (
    "server/app.py",
    re.escape("    refusal = app[GUARD].admit(request, route)\n"),
    "    refusal = None\n    request[REQUEST_ID] = 'x'\n",
)
# The minimal proxy's handler, in the forwarder: a token, the same header rules, no replay,
# waits, 429 handling, upstream metrics or error mapping.
_MINIMAL_FORWARDER: Patch = (
    "upstream/forward.py",
    re.escape('(body_filter.py)."""\n'),
    '(body_filter.py)."""\n'
    "        token = await self._tokens.token()\n"
    "        sent = headers.to_upstream(request.headers, token.authorization)\n"
    "        body = request.content if request.body_exists else None\n"
    "        async with self._session.request(request.method, self._target(raw_target),\n"
    "                headers=sent, data=body, allow_redirects=False) as up:\n"
    "            response = web.StreamResponse(status=up.status,\n"
    "                headers=headers.to_client(up.headers, self._upstream, request, ''))\n"
    "            await response.prepare(request)\n"
    "            async for chunk in up.content.iter_any():\n"
    "                await response.write(chunk)\n"
    "            await response.write_eof()\n"
    "            return response\n",
)
# aiohttp's own runner: no connection limits, head timeout, request factory or access log.
_PLAIN_RUNNER: Patch = (
    "server/serve.py",
    r"        runner = ProxyRunner\(.*?\n        \)\n",
    "        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)\n",
)
# Every request to the default profile's forwarder: no routing, profiles, admission, sharing.
_NO_ROUTING: Patch = (
    "server/app.py",
    re.escape("async def _dispatch(request: web.Request) -> web.StreamResponse:\n"),
    "async def _dispatch(request: web.Request) -> web.StreamResponse:\n"
    "    request[REQUEST_ID] = 'x'\n"
    "    return await request.app[FORWARDERS]['default'].forward(request, request.raw_path)\n",
)

CUTS: dict[str, tuple[Patch, ...]] = {
    "no-access-log": (_NO_ACCESS_LOG,),
    "no-admission": (_NO_ADMISSION,),
    "no-routing": (_NO_ROUTING,),
    "minimal-forwarder": (_MINIMAL_FORWARDER,),
    "plain-runner": (_PLAIN_RUNNER,),
    "all-off": (_NO_ACCESS_LOG, _MINIMAL_FORWARDER, _PLAIN_RUNNER, _NO_ROUTING),
}


def build(rev: str, root: Path) -> dict[str, Path]:
    """A patched copy of the proxy at ``rev`` per cut, under ``root``; name to directory."""
    copies = {}
    for name, patches in CUTS.items():
        copy = _export(rev, root / name)
        for file, old, new in patches:
            path = copy / "proxy" / file
            text = path.read_text(encoding="utf-8")
            pattern = re.compile(old, re.S)
            found = list(pattern.finditer(text))
            if len(found) != 1:
                raise SystemExit(f"{name}: the patch for {file} no longer applies: {old[:60]!r}")
            cut = found[0]
            path.write_text(text[: cut.start()] + new + text[cut.end() :], encoding="utf-8")
        copies[name] = copy
    return copies


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.feature_budget", description=__doc__
    )
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="iap-budget-"))
    argv = [sys.executable, "-m", "benchmarks", "--rounds", str(args.rounds), "--seconds", "2"]
    argv += ["--proxy-rev", args.rev, "--variants", "minimal,ours", "--workloads", "get-c1"]
    for name, copy in build(args.rev, root).items():
        argv += ["--candidate", f"{name}={copy}"]
    return subprocess.run([*argv, "--label", "feature-budget"], check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())

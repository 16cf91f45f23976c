"""The bench: upstreams on the load core, and each of the four variants on demand.

    with Lab(settings) as lab:
        lab.start_upstreams()
        with lab.variant("ours", lab.static_url) as endpoint:
            ...  # endpoint.url, endpoint.pids

Variants: ``direct`` (the upstream itself), ``nginx`` (the reference proxy), ``minimal``
(``benchmarks/minimal_proxy.py``) and ``ours`` (``python -m proxy serve``, started as a
user would, default configuration, access log to a file). Every proxy is started fresh,
pinned to the proxy core; upstreams, the token endpoint and the load run on the load core.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from . import nginx
from .procs import Proc, Processes, free_port, process_tree, wait_for_port

__all__ = ["VARIANTS", "Endpoint", "Lab", "LabSettings"]

VARIANTS = ("direct", "nginx", "minimal", "ours")
REPO = Path(__file__).resolve().parent.parent
SMALL_BODY = (
    b'{"tables": ["accounts", "assignments", "courses", "enrollments", "submissions", '
    b'"users"], "namespace": "canvas", "note": "a small JSON answer of about 200 bytes", '
    b'"ok": true, "n": 6}\n'
)


@dataclass(frozen=True)
class LabSettings:
    """Where things run and with what: cores, tools, the product's source, big-file size."""

    run_dir: Path
    proxy_core: int | None
    load_core: int | None
    nginx: str
    big_bytes: int
    proxy_path: Path | None = None  # a directory holding another ``proxy`` package to run
    # Extra variants "ours-NAME": the product from another directory (a patched copy),
    # measured in the same rounds as "ours" to weigh a change.
    candidates: dict[str, Path] = field(default_factory=dict)
    # Variant "ours-redis": ours with shared_state, against a redis-server on the load core.
    shared_state: bool = False


@dataclass
class Endpoint:
    """A running variant: the base URL a client uses and the proxy's processes (if any)."""

    variant: str
    url: str
    pids: list[int] = field(default_factory=list)
    proc: Proc | None = None
    core: int | None = None  # where the proxy runs


class Lab:
    """Upstreams and variants for one run; every process stops when the ``with`` ends."""

    def __init__(self, settings: LabSettings) -> None:
        self.settings = settings
        self.procs = Processes(settings.run_dir / "logs")
        (settings.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.static_url = ""
        self.sink_url = ""
        self.token_url = ""
        self.redis_url = ""
        self.big_path = settings.run_dir / "www" / "big.bin"

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.procs.stop_all()

    # ---------------------------------------------------------------- upstreams

    def _write_files(self) -> None:
        www = self.big_path.parent
        www.mkdir(parents=True, exist_ok=True)
        (www / "small.json").write_bytes(SMALL_BODY)
        block = bytes(range(256)) * 4096  # 1 MiB, not all zeros
        with self.big_path.open("wb") as out:
            remaining = self.settings.big_bytes
            while remaining > 0:
                out.write(block[: min(len(block), remaining)])
                remaining -= len(block)
        # The run directory is private (mkdtemp); nginx's worker must read www/.
        for path in (self.settings.run_dir, www):
            path.chmod(0o755)

    def start_upstreams(self) -> None:
        """Static nginx, the sink and the token endpoint, all on the load core."""
        self._write_files()
        core = self.settings.load_core
        port = free_port()
        argv = nginx.start_argv(
            self.settings.nginx,
            self.settings.run_dir / "nginx-upstream",
            nginx.upstream_conf(
                self.settings.run_dir / "nginx-upstream", port, self.big_path.parent
            ),
        )
        wait_for_port(port, self.procs.start("upstream-nginx", argv, core=core))
        self.static_url = f"http://127.0.0.1:{port}"

        port = free_port()
        proc = self.procs.start(
            "upstream-sink",
            [sys.executable, "-m", "benchmarks.upstream_sink", "--listen", f"127.0.0.1:{port}"],
            core=core,
            cwd=self.settings.run_dir,
        )
        wait_for_port(port, proc)
        self.sink_url = f"http://127.0.0.1:{port}"
        self.token_url, _ = self.start_token_endpoint(token_lifetime=3599)
        if self.settings.shared_state:
            port = free_port()
            argv = [which("redis-server") or "redis-server", "--port", str(port)]
            argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            wait_for_port(
                port, self.procs.start("redis", argv, core=core, cwd=self.settings.run_dir)
            )
            self.redis_url = f"redis://127.0.0.1:{port}/0"

    def start_token_endpoint(self, token_lifetime: int) -> tuple[str, str]:
        """The simulator's token endpoint: (token URL, stats URL)."""
        port, stats = free_port(), free_port()
        proc = self.procs.start(
            f"token-endpoint-{token_lifetime}s",
            [
                sys.executable,
                "-m",
                "benchmarks.token_endpoint",
                "--listen",
                f"127.0.0.1:{port}",
                "--stats",
                f"127.0.0.1:{stats}",
                "--token-lifetime",
                str(token_lifetime),
            ],
            core=self.settings.load_core,
            env=self._python_env(),
            cwd=self.settings.run_dir,
        )
        wait_for_port(stats, proc)
        wait_for_port(port, proc)
        return f"http://127.0.0.1:{port}/ids/auth/login", f"http://127.0.0.1:{stats}/"

    # ---------------------------------------------------------------- variants

    def proxy_origin(self, candidate: str | None = None) -> str:
        """Where ``python -m proxy`` comes from for ours (or ours-``candidate``): a check."""
        source = self.settings.candidates[candidate] if candidate else None
        done = subprocess.run(
            [sys.executable, "-c", "import proxy; print(proxy.__file__)"],
            capture_output=True,
            text=True,
            env=self._python_env(source),
            cwd=self.settings.run_dir,
            timeout=30,
            check=False,
        )
        return str(Path(done.stdout.strip()).parent) if done.returncode == 0 else "?"

    def _python_env(self, source: Path | None = None) -> dict[str, str]:
        # The product's default configuration: no DAP_PROXY_* from the caller's shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAP_", "PYTHON"))}
        paths = [str(REPO)]
        source = source or self.settings.proxy_path
        if source is not None:
            paths.insert(0, str(source))
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    @contextlib.contextmanager
    def variant(
        self,
        name: str,
        upstream_url: str,
        *,
        pool_size: int | None = None,
        token_url: str | None = None,
    ) -> Iterator[Endpoint]:
        """Start variant ``name`` in front of ``upstream_url``; stop it when done."""
        if name == "direct":
            yield Endpoint(name, upstream_url)
            return
        port = free_port()
        listen = f"127.0.0.1:{port}"
        core = self.settings.proxy_core
        env = self._python_env()
        if name == "nginx":
            prefix = self.settings.run_dir / f"nginx-proxy-{port}"
            upstream_port = int(upstream_url.rsplit(":", 1)[1])
            argv = nginx.start_argv(
                self.settings.nginx, prefix, nginx.proxy_conf(prefix, port, upstream_port)
            )
            proc = self.procs.start("nginx-proxy", argv, core=core)
        elif name == "minimal":
            argv = [sys.executable, "-m", "benchmarks.minimal_proxy", "--listen", listen]
            argv += ["--upstream", upstream_url, "--pool-size", str(pool_size or 100)]
            proc = self.procs.start("minimal", argv, core=core, env=env, cwd=self.settings.run_dir)
        elif name == "ours" or name.startswith("ours-"):
            if name == "ours-redis":
                env["DAP_PROXY_SHARED_STATE"] = self.redis_url
            elif name != "ours":
                env = self._python_env(self.settings.candidates[name.removeprefix("ours-")])
            env["DAP_CLIENT_ID"], env["DAP_CLIENT_SECRET"] = _demo_credentials()
            if pool_size is not None:
                env["DAP_PROXY_POOL_SIZE"] = str(pool_size)
            argv = [sys.executable, "-m", "proxy", "serve", "--listen", listen]
            argv += ["--upstream", upstream_url, "--token-url", token_url or self.token_url]
            proc = self.procs.start(name, argv, core=core, env=env, cwd=self.settings.run_dir)
        else:
            raise ValueError(f"unknown variant {name!r}")
        try:
            wait_for_port(port, proc)
            if name.startswith("ours"):
                _wait_ready(port, proc)
            if name == "nginx":
                time.sleep(0.2)  # the master forks its worker after it binds
            yield Endpoint(name, f"http://{listen}", process_tree(proc.pid), proc, core)
        finally:
            self.procs.stop(proc)


def _demo_credentials() -> tuple[str, str]:
    from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

    return DEMO_CLIENT_ID, DEMO_CLIENT_SECRET


def _wait_ready(port: int, proc: Proc, timeout: float = 20.0) -> None:
    """Wait until the product holds its first token (``/-/ready`` answers 200)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"ours exited early:\n{proc.log_tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/-/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError(f"ours not ready after {timeout:g} s:\n{proc.log_tail()}")


def which(tool: str) -> str | None:
    """``tool`` on PATH, or in /usr/sbin where Debian puts nginx."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/local/sbin")

"""The processes a run starts, pinned to a core, and what ``/proc`` says about them.

Every process is started in its own session (so its children can be signalled with it)
and registered with ``Processes``, which stops them all on exit, on an exception or on
Ctrl-C: SIGTERM to the process group, then SIGKILL after a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = [
    "Proc",
    "Processes",
    "RssSampler",
    "core_busy_seconds",
    "cpu_seconds",
    "free_port",
    "listen_overflows",
    "process_tree",
    "reset_peak_rss",
    "rss_kib",
    "wait_for_port",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """One started process: its name, ``Popen`` and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    core: int | None
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Starts processes and stops every one of them: ``with Processes(logdir) as procs:``."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._procs: list[Proc] = []
        self._count = 0

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        core: int | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        """Start ``argv`` pinned to ``core`` (``None``: unpinned); stdout+stderr to a log."""
        self._count += 1
        log_path = self._log_dir / f"{self._count:03d}-{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                # Pinned before exec, so no thread of the child ever runs elsewhere.
                preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
            )
        proc = Proc(name, popen, log_path, core)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        """SIGTERM the process's group, wait up to ``timeout`` s, then SIGKILL it."""
        if proc.stopped:
            return
        proc.stopped = True
        pgid = proc.pid  # start_new_session made the process its group's leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.popen.wait(timeout=5)
        # Children left in the group (nginx workers) go with their leader.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                self.stop(proc)
        self._procs.clear()


# python -m benchmarks --ports FIRST-LAST: the ports still to try; None: any port.
_chosen_ports: list[int] | None = None


def use_ports(first: int, last: int) -> None:
    """From now on, ``free_port`` takes ports from ``first``-``last`` only (a firewall or
    another service may rule the rest out)."""
    global _chosen_ports  # one setting for the whole run
    _chosen_ports = list(range(first, last + 1))


def free_port() -> int:
    """A port free on 127.0.0.1 now (the process that uses it binds it a moment later):
    the next free one of the chosen range, else one the OS picks."""
    if _chosen_ports is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    while _chosen_ports:
        port = _chosen_ports.pop(0)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: the next one
            return port
    raise RuntimeError("no free port left in the range of --ports: give a wider one")


def wait_for_port(port: int, proc: Proc | None, timeout: float = 20.0) -> None:
    """Return once 127.0.0.1:``port`` accepts; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.settimeout(0.5)
            sock.connect(("127.0.0.1", port))
            return
        time.sleep(0.05)
    tail = proc.log_tail() if proc is not None else ""
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s\n{tail}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (nginx: the master and its worker)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU seconds used so far by ``pids`` (fields 14 and 15 of stat)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


def core_busy_seconds(core: int | None) -> float:
    """CPU seconds core ``core`` has run processes (user, nice, system), from /proc/stat.

    Minus what the proxy used, this is what other processes took from the proxy's core:
    the machine's noise during a measurement. Interrupt and softirq time is left out (the
    proxy's own loopback traffic is processed there), and so is the hypervisor's steal.
    """
    if core is None:
        return 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                user, nice, system = (int(field) for field in line.split()[1:4])
                return (user + nice + system) / _CLK_TCK
    return 0.0


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full.

    Machine-wide (``TcpExt: ListenOverflows``); a dropped SYN is retried by the client
    after a second, which shows as a request a second slower, not as an error.
    """
    with contextlib.suppress(OSError, ValueError):
        lines = Path("/proc/net/netstat").read_text().splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            if names.startswith("TcpExt:"):
                fields = dict(zip(names.split()[1:], values.split()[1:], strict=True))
                return int(fields.get("ListenOverflows", 0))
    return 0


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_kib(pids: Iterable[int], key: str = "VmRSS") -> int:
    """Resident set size now (or ``key="VmHWM"``: its peak), summed over ``pids``, in KiB."""
    return sum(_status_kib(pid, key) for pid in pids)


def reset_peak_rss(pids: Iterable[int]) -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` 5); False where the kernel refuses."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


class RssSampler:
    """Samples summed VmRSS every ``interval`` s in a thread: ``with RssSampler(pids) as s:``.

    Peak RSS from ``VmHWM`` after ``reset_peak_rss`` is exact; the sampler is the fallback
    and a cross-check.
    """

    def __init__(self, pids: Sequence[int], interval: float = 0.02) -> None:
        self._pids = list(pids)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_kib = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, rss_kib(self._pids))
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        if self._pids:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self._pids:
            self.peak_kib = max(self.peak_kib, rss_kib(self._pids))

"""nginx as the load balancer in front of proxy replicas, run unprivileged in the foreground
with every path inside the run's own directory (as benchmarks/nginx.py runs it), and driven
by readiness the way a Kubernetes Service drives ingress-nginx.

Plain nginx has no active health checks: left alone, it keeps routing to a stopping replica
until a connection fails, and a POST it has already written into a connection the replica
then resets (a connection still in the accept backlog when the listener closes, or an idle
kept-alive one closed at the moment nginx reuses it) is answered 502, never retried. No
proxy-side change closes that race; only a balancer that stops routing to a replica before
it stops listening does. So :class:`Readiness` polls each replica's ``/-/ready`` (as a
kubelet's readiness probe does), and when the set of ready replicas changes, rewrites the
upstream block to list only those and reloads nginx (as ingress-nginx does on an endpoint
change). A reload lets the old worker finish its requests and close its idle upstream
connections from nginx's side. The replica's ``shutdown_delay`` must cover one poll and the
reload; the upstream ``keepalive_timeout`` is shorter than it as a second safeguard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

__all__ = ["NGINX", "POLL", "Readiness", "lb_argv"]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
POLL = 0.1  # seconds between readiness probes (a kubelet's periodSeconds, shortened)

# The part of the configuration that makes a rolling restart invisible; the Compose
# example's nginx.conf carries the same lines.
UPSTREAM = """
    upstream proxies {{
{servers}
        keepalive 16;
        keepalive_timeout 1s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://proxies;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
"""


def write_conf(prefix: Path, port: int, replicas: list[int]) -> Path:
    """The configuration under ``prefix``, routing to ``replicas`` (ports); its path."""
    prefix.mkdir(parents=True, exist_ok=True)
    servers = "\n".join(
        f"        server 127.0.0.1:{replica} max_fails=1 fail_timeout=1s;" for replica in replicas
    )
    # As root, nginx would switch its worker to "nobody", which cannot read these files.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {name}_temp_path {prefix}/{name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}
{UPSTREAM.format(servers=servers, port=port)}
}}
"""
    path = prefix / "nginx.conf"
    # Written whole, then renamed: a reload never reads half a file.
    staged = prefix / "nginx.conf.new"
    staged.write_text(conf, encoding="utf-8")
    staged.replace(path)
    return path


def lb_argv(prefix: Path, port: int, replicas: list[int]) -> list[str]:
    """Write the configuration under ``prefix``; the command line that runs nginx."""
    if NGINX is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
    path = write_conf(prefix, port, replicas)
    return [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(path)]


@dataclass
class Readiness:
    """The controller: probes every replica each :data:`POLL` seconds and routes nginx
    (its master process ``nginx_pid``) to the ready ones only. An upstream block needs one
    server at least: with none ready, the last list stays. ``routed`` is every list applied,
    in order, so a test can see the stop was routed around, not merely survived."""

    prefix: Path
    port: int
    replicas: list[int]
    nginx_pid: int
    routed: list[tuple[int, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.routed.append(tuple(self.replicas))  # what lb_argv started nginx with

    async def ready(self, http: aiohttp.ClientSession, replica: int) -> bool:
        probe = aiohttp.ClientTimeout(total=POLL * 5)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"http://127.0.0.1:{replica}/-/ready", timeout=probe) as resp:
                return resp.status == 200
        return False

    async def run(self) -> None:
        # A connection per probe, as a kubelet's: none kept alive to a stopping replica.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            while True:
                answers = await asyncio.gather(*(self.ready(http, r) for r in self.replicas))
                ready = tuple(r for r, ok in zip(self.replicas, answers, strict=True) if ok)
                if ready and ready != self.routed[-1]:
                    write_conf(self.prefix, self.port, list(ready))
                    os.kill(self.nginx_pid, signal.SIGHUP)  # nginx -s reload
                    self.routed.append(ready)
                await asyncio.sleep(POLL)

"""nginx as the load balancer in front of proxy replicas, run unprivileged in the foreground
with every path inside the run's own directory (as benchmarks/nginx.py runs it).

The upstream block is the one examples/docker-compose.replicas.yaml documents: a replica
that refuses connections (stopping, or not yet started again) is left for the others
(``proxy_next_upstream error``, ``max_fails``), and so is one that answers 502 or 503.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["NGINX", "lb_argv"]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

# The part of the configuration that makes a rolling restart invisible; the Compose
# example's nginx.conf carries the same lines.
UPSTREAM = """
    upstream proxies {{
{servers}
        keepalive 16;
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


def lb_argv(prefix: Path, port: int, replicas: list[int]) -> list[str]:
    """Write the configuration under ``prefix``; the command line that runs nginx."""
    if NGINX is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
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
    path.write_text(conf, encoding="utf-8")
    return [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(path)]

"""nginx configurations: the static upstream, and the reference reverse proxy.

Both run with one worker, in the foreground (``daemon off``), with every path (pid, logs,
temp files) inside the run's own directory, so a run needs no system configuration and
leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["proxy_conf", "start_argv", "storage_conf", "upstream_conf"]


def _main_block(prefix: Path) -> str:
    # As root, nginx would otherwise switch its worker to "nobody", which cannot read the
    # run's files; workers as the invoking user are what a benchmark wants anyway.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
"""


def _http_common(prefix: Path) -> str:
    return f"""    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
"""


def upstream_conf(prefix: Path, port: int, root: Path) -> str:
    """nginx serving the files under ``root`` on 127.0.0.1:``port``, sendfile on."""
    return (
        _main_block(prefix)
        + f"""http {{
{_http_common(prefix)}
    types {{ application/json json; application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""
    )


def storage_conf(
    prefix: Path, port: int, root: Path, api_port: int, api_paths: tuple[str, ...]
) -> str:
    """``upstream_conf``'s static files, plus ``proxy_pass`` of each of ``api_paths`` (URL
    prefixes such as ``/dap/``) to 127.0.0.1:``api_port``: one origin serving both an API
    and its objects, as a gateway serving objects from its own origin does.

    Upstream keep-alive; nginx's defaults otherwise (these answers are small).
    """
    locations = "".join(
        f"""        location {path} {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
"""
        for path in api_paths
    )
    return (
        _main_block(prefix)
        + f"""http {{
{_http_common(prefix)}
    types {{ application/json json; application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    upstream api {{
        server 127.0.0.1:{api_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
{locations}    }}
}}
"""
    )


def proxy_conf(prefix: Path, port: int, upstream_port: int) -> str:
    """The reference: nginx on 127.0.0.1:``port`` adding a static bearer token.

    Keep-alive to the upstream, no buffering either way, 64 KiB proxy buffers.
    """
    return (
        _main_block(prefix)
        + f"""http {{
{_http_common(prefix)}
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer x";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""
    )


def start_argv(nginx: str, prefix: Path, conf: str) -> list[str]:
    """Write ``conf`` under ``prefix`` and return the command line that runs it."""
    prefix.mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(conf, encoding="utf-8")
    return [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(path)]

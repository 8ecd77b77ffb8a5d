"""nginx as the reference reverse proxy: configured as a streaming LLM proxy would be."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.procs import HOST, Started, spawn

# One worker, pinned like the router: both get exactly one CPU.
_CONFIG = """\
{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream backend {{
        server {host}:{backend_port};
        # Pooled upstream connections, like the router's own client.
        keepalive 1024;
        keepalive_requests 10000000;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            # Keep-alive to the upstream needs HTTP/1.1 and no "Connection: close".
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Relay SSE events as they come instead of collecting the body.
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx_version() -> str:
    result = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return (
        (result.stderr or result.stdout)
        .strip()
        .removeprefix("nginx version: ")
        .removeprefix("nginx/")
    )


def start_nginx(tmp: Path, port: int, backend_port: int, cpu: int | None) -> Started:
    # As root nginx would switch its worker to "nobody", who cannot write the temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    config = tmp / "nginx.conf"
    config.write_text(
        _CONFIG.format(user=user, tmp=tmp, host=HOST, port=port, backend_port=backend_port)
    )
    # -e: the default error log (/var/log/nginx) may not be writable before the config is read.
    command = [
        "nginx",
        "-p",
        str(tmp),
        "-c",
        str(config),
        "-e",
        str(tmp / "nginx-error.log"),
        "-g",
        "daemon off;",
    ]
    return spawn("nginx", command, tmp, cpu, with_children=True)

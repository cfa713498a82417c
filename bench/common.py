"""What every benchmark needs: free ports, waiting for a listener, the machine's name, wrk."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run_wrk(url: str, connections: int, seconds: float, run_name: str) -> dict[str, float]:
    """wrk's load on URL (which has a query: bench/unique_ymid.lua appends `&uid=`)."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
        "-s", str(HERE / "unique_ymid.lua"), url, "--", run_name,
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "requests_per_second": float(_number(r"Requests/sec:\s+([\d.]+)", output)),
        "p50_ms": _latency(output, "50%"),
        "p99_ms": _latency(output, "99%"),
        "requests": float(_number(r"(\d+) requests in", output)),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": float(sum(map(int, socket_errors.groups()))) if socket_errors else 0.0,
    }


def _number(pattern: str, output: str) -> str:
    match = re.search(pattern, output)
    assert match, output
    return match.group(1)


def _latency(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    assert match, output
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


NGINX_CONFIG = """
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type text/plain; return 200 "OK"; }}
  }}
}}
"""


def start_upstream(port: int) -> tuple[subprocess.Popen[bytes], str]:
    """The app behind the proxies: nginx answering `OK` when it is installed (one worker, a
    few percent of a core at these rates), else bench/fast_upstream.py, whose Python takes
    CPU the comparison needs. Returns the process and which one it is."""
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        command = [sys.executable, str(HERE / "fast_upstream.py"), str(port)]
        return subprocess.Popen(command), "python (bench/fast_upstream.py)"
    workdir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    config = workdir / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(workdir=workdir, port=port))
    process = subprocess.Popen([nginx, "-c", str(config), "-e", str(workdir / "error.log")])
    return process, "nginx"

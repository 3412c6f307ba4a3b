#!/usr/bin/env python3
"""Container health check for the ia-atendimento-bot image (no curl in python:slim).

Usage: atendimento-healthcheck [PATH]   (default /monitoring/live)

The port is the one of the service this container runs: PID 1's command line names the module
(`services.gateway`, `services.worker`, `services.monitor`) and the matching *_PORT variable (or
its default) gives the port. HEALTHCHECK_PORT overrides that. Exit 0 on HTTP 2xx, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

# The container's main process; its command line says which service this is.
CMDLINE = Path("/proc/1/cmdline")
PORTS = {
    "services.gateway": ("GATEWAY_PORT", 8080),
    "services.worker": ("WORKER_PORT", 8081),
    "services.monitor": ("MONITOR_PORT", 8082),
}


def service_port() -> int:
    override = os.environ.get("HEALTHCHECK_PORT", "").strip()
    if override:
        return int(override)
    try:
        cmdline = CMDLINE.read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    args = [part.decode(errors="replace") for part in cmdline]
    for module, (variable, default) in PORTS.items():
        if module in args:
            return int(os.environ.get(variable, "").strip() or default)
    return int(os.environ.get("GATEWAY_PORT", "").strip() or 8080)


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/monitoring/live"
    url = f"http://127.0.0.1:{service_port()}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        return 0
    print(f"healthcheck: {url}: HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

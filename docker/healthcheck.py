#!/usr/bin/env python3
"""Container HEALTHCHECK for both learnloop processes: GET /healthz on the local port.

The image runs either ``learnloop worker`` (health on LEARNLOOP_WORKER_WEB_PORT,
default 6066) or ``learnloop api`` (LEARNLOOP_API_PORT, default 8080); which one is
read from PID 1's command line, so one HEALTHCHECK line serves both. Standard
library only, exits 0 when healthy and 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def _port() -> int:
    try:
        with open("/proc/1/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        argv = []
    if b"worker" in argv:
        return int(os.environ.get("LEARNLOOP_WORKER_WEB_PORT", "6066"))
    return int(os.environ.get("LEARNLOOP_API_PORT", "8080"))


def main() -> int:
    url = f"http://127.0.0.1:{_port()}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Container HEALTHCHECK for every role of the lwl-vos image (installed as /usr/local/bin/lwl-healthcheck).

The api (and `lwl serve`) answer /healthz on LWL_PORT; a worker answers /healthz on
LWL_WORKER_METRICS_PORT. Only one of the two listens in a given container, so the check
passes when either answers 200. Standard library only: the image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def _probe(host: str, port: str, timeout: float) -> bool:
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed http URL)
            return resp.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def main() -> int:
    host = os.environ.get("LWL_HOST", "0.0.0.0").strip()
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    api_port = os.environ.get("LWL_PORT", "8000")
    worker_port = os.environ.get("LWL_WORKER_METRICS_PORT", "9100")
    targets = [(host, api_port), ("127.0.0.1", worker_port)]
    if any(_probe(h, p, timeout=3.0) for h, p in targets):
        return 0
    print(f"unhealthy: no /healthz answered on {targets}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

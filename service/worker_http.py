"""The worker's own small HTTP endpoint: /metrics and /healthz on LWL_WORKER_METRICS_PORT (a daemon
thread; Prometheus scrapes it). `lwl serve` has none: its api serves both."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from service.worker import Worker


def serve_worker_http(worker: Worker, port: int) -> ThreadingHTTPServer:
    """Start the endpoint on `port`; returns the server (shut it down to stop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                ok = not worker.stopped.is_set()
                body = json.dumps({"status": "ok" if ok else "stopped", **worker.info()}).encode()
                ctype, code = "application/json", 200 if ok else 503
            else:
                body, ctype, code = b'{"detail":"not found"}', "application/json", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    srv = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True, name="lwl-worker-http").start()
    return srv

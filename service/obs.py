"""Observability: Prometheus metrics (shared names for api and worker) and one-JSON-object-per-line logs."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from prometheus_client import Counter, Gauge, Histogram

FRAMES = Counter("lwl_frames_segmented_total", "Frames segmented by this process's worker")
LATENCY = Histogram(
    "lwl_frame_latency_seconds", "Per-frame latency by stage", ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ACTIVE_SESSIONS = Gauge("lwl_active_sessions", "Sessions held (worker) or known (api)")
QUEUE_DEPTH = Gauge("lwl_queue_depth", "Work waiting (worker: frames read and queued for its lanes; api: all "
                    "workers' work streams)")
JOBS = Gauge("lwl_jobs", "Video jobs by state", ["state"])
DEVICE_MEMORY = Gauge("lwl_device_memory_bytes", "Device memory in use (CUDA allocated, else process RSS)")
STATE_BYTES = Gauge("lwl_tracker_state_bytes", "Tracker memory bound of the sessions a worker holds (admission)")
STORE_BYTES = Gauge("lwl_store_bytes", "Bytes a worker's sessions keep in the store (snapshots + replay logs): "
                    "total, and the largest session", ["scope"])
ERRORS = Counter("lwl_errors_total", "Errors by kind", ["kind"])
FAILOVER = Histogram(
    "lwl_failover_seconds", "A moved session's gap: its old worker's last heartbeat (died) or hand-over "
    "(drain) until the new worker has restored it; observed by the new worker", ["cause"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 12, 20, 30, 60),
)
BATCH_SIZE = Histogram("lwl_batch_frames", "Frames of different sessions stepped together by a worker",
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))
LANE_BUSY = Counter("lwl_lane_busy_seconds", "Seconds each lane of a worker spent stepping frames: its rate() "
                    "is the share of time the lane was busy (a GPU worker has one lane)", ["lane"])

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields (session_id, job_id, worker_id, ...) become keys."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_TOKEN = re.compile(r"(token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Session tokens travel in WebSocket URLs (browsers cannot set headers): keep them out of logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "token=" in msg:
            record.msg, record.args = _TOKEN.sub(r"\1***", msg), None
        return True


def setup_logging(level: str = "info", as_json: bool = True) -> None:
    """Configure the root logger once per process (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactTokens())
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True


def device_memory_bytes() -> int:
    """CUDA memory allocated when a GPU is used, else the resident set size of this process."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.memory_allocated())
    except Exception:  # noqa: BLE001 - metrics never break the service
        pass
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0

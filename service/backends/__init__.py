"""The two small interfaces the service logic runs on, each with a Redis and an in-process implementation.

- Store: session metadata, tracker snapshots + replay logs, worker registry, video-job records.
- Broker: per-worker work streams, per-session result streams, request replies, the job queue.

`lwl api` / `lwl worker` use Redis (`redis_store.py`); `lwl serve` uses the in-process pair (`memory.py`).
Both implement `base.py`'s protocol, so the api and worker code is the same in both cases. Redis keys
(prefix P = LWL_KEY_PREFIX, default "lwl") are listed in docs/ARCHITECTURE.md.
"""

from service.backends.base import (
    RESULT_MAXLEN,
    STORE_ERRORS,
    Answer,
    Broker,
    Commit,
    Input,
    Msg,
    Result,
    Store,
    id_order,
)
from service.backends.memory import MemoryBackend
from service.backends.redis_store import RedisBackend

Backend = RedisBackend | MemoryBackend  # what the api and the worker are given


def make_backend(redis_url: str, prefix: str = "lwl", name: str = "") -> Backend:
    """Redis when a URL is set, else the in-process implementation."""
    return RedisBackend(redis_url, prefix, name) if redis_url else MemoryBackend()


__all__ = ["RESULT_MAXLEN", "STORE_ERRORS", "Answer", "Backend", "Broker", "Commit", "Input", "MemoryBackend", "Msg",
           "RedisBackend", "Result", "Store", "id_order", "make_backend"]

"""A worker's health: its heartbeat (what the api places sessions by), store outages (back off, retry
what must not be lost, drop what the store no longer has once it is back) and the eviction of idle
sessions. Nothing here ends on a store error."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from service import obs
from service.backends import STORE_ERRORS

if TYPE_CHECKING:
    from service.worker import Worker

log = logging.getLogger("lwl.worker")
T = TypeVar("T")


class WorkerHealth:
    """Heartbeat, store outages and retries, eviction of one worker."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.store_down_since: float | None = None  # monotonic time of the first failure of an outage

    async def heartbeat(self) -> bool:
        """One beat; it also puts the worker back in the registry after the store lost its data.
        False when the store is down (never raises for that: callers go on)."""
        info = self.w.info()
        obs.ACTIVE_SESSIONS.set(info["sessions"])
        obs.DEVICE_MEMORY.set(info["memory_bytes"])
        obs.STATE_BYTES.set(info["state_bytes"])
        for scope in ("total", "max_session"):
            obs.STORE_BYTES.labels(scope).set(info["store_bytes"][scope])
        try:
            await self.w.b.heartbeat(self.w.id, info, ttl_s=3 * self.w.s.heartbeat_s)
        except STORE_ERRORS:
            await self.store_failed("heartbeat")
            return False
        return True

    async def heartbeat_loop(self) -> None:
        """A beat every LWL_HEARTBEAT_S; the first after an outage also drops what the store lost."""
        while True:
            try:
                outage = self.store_down_since is not None
                if await self.heartbeat() and outage:
                    await self._store_back()
            except Exception:  # noqa: BLE001 - the heartbeat never stops
                obs.ERRORS.labels("heartbeat").inc()
                log.exception("heartbeat failed", extra={"worker_id": self.w.id})
            await asyncio.sleep(self.w.s.heartbeat_s)

    async def store_failed(self, what: str) -> None:
        """Count a store failure, drop idle connections (dead after a Redis restart); log the first
        failure of an outage only (the loops retry quietly)."""
        obs.ERRORS.labels("store_down").inc()
        await self.w.b.reset_idle()
        if self.store_down_since is None:
            self.store_down_since = time.monotonic()
            log.warning("store unavailable, retrying", extra={"worker_id": self.w.id, "during": what})

    async def _store_back(self) -> None:
        """After an outage the store may have restarted empty: sessions it lost (or that name another
        worker now) are dropped, so their slots are free again and nothing reads their streams."""
        down = time.monotonic() - (self.store_down_since or time.monotonic())
        lost = 0
        for sid in list(self.w.sessions):
            meta = await self.w.b.get_session(sid)
            if meta is None or meta.get("worker") != self.w.id:
                self.w.ops.lost(sid)
                lost += 1
        self.store_down_since = None
        log.warning("store back", extra={"worker_id": self.w.id, "down_s": round(down, 1), "sessions_lost": lost,
                                         "sessions": len(self.w.sessions)})
        if lost:
            await self.heartbeat()

    async def retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """A store call the worker must not skip (a result, a snapshot, a job's state): retried with
        backoff while the store is down or restarting, so no answer is lost. Raises once stopping."""
        delay = 0.1
        while True:
            try:
                return await call()
            except STORE_ERRORS:
                if self.w.stopping:
                    raise
                await self.store_failed(what)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def evict_loop(self) -> None:
        """Sessions idle past LWL_SESSION_TTL_S are forgotten (tracker and stored data)."""
        while True:
            await asyncio.sleep(min(1.0, self.w.s.session_ttl_s / 4))
            now = time.monotonic()
            for sid, hs in list(self.w.sessions.items()):
                if now - hs.last_active > self.w.s.session_ttl_s:
                    try:
                        await self.w.ops.forget(sid, reason="ttl")
                    except STORE_ERRORS:  # the tracker is gone; its keys expire on their own
                        await self.store_failed("evict")

"""The worker's frame scheduler: frames read from the sessions' streams wait in per-session queues (the
session waiting longest first); lanes take the next round as soon as they are free and hand it to one
frame path (`step`: decode -> model step -> encode -> publish, service.worker).

A round is the next frame of each free session: up to LWL_MAX_BATCH sessions stepped together on one
lane (a GPU: the batch fills the device), or one session per lane on a CPU (LWL_CPU_LANES lanes, each
on its share of the torch threads; small convolutions scale badly over threads, so two 1-thread lanes
do more than one frame on 2 threads). A lone session on an idle CPU worker gets every thread (`wide`).
A session is on one lane at a time, so its frames stay in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from service import obs
from service.backends import STORE_ERRORS
from service.session_ops import HeldSession

log = logging.getLogger("lwl.worker")


@dataclass
class Queued:
    """A frame read from a session's stream and not stepped yet."""

    sid: str
    hs: HeldSession
    eid: str  # its id in the frames stream
    header: dict[str, Any]
    blobs: list[bytes]


Step = Callable[[list[Queued], int], Awaitable[None]]  # (round, torch threads; 0 = the compute thread's)


class LaneScheduler:
    """Queues, lanes and rounds. `sessions` is the worker's dict of held sessions (a queued frame of a
    session dropped meanwhile is not stepped); `closing()` says the worker stops taking work."""

    def __init__(self, sessions: dict[str, HeldSession], lanes: int, cpu: bool, threads: int, max_batch: int,
                 closing: Callable[[], bool], on_store_error: Callable[[str], Awaitable[None]]) -> None:
        self.sessions = sessions
        self.cpu = cpu and lanes >= 2  # CPU lanes, each on its own thread; else one lane on the compute thread
        self.lane_count = lanes if self.cpu else 1
        self.threads, self.max_batch = threads, max_batch
        self.closing_worker, self.on_store_error = closing, on_store_error
        self.queued: dict[str, deque[Queued]] = {}  # frames waiting, per session, the longest waiting first
        self.busy: set[str] = set()  # sessions a lane is stepping now
        self.wide = False  # a lone session is being stepped with every thread: the other lanes wait
        self.open = False  # the lane tasks take work
        self.cond = asyncio.Condition()  # guards queued/busy/wide; notified on every change

    def closing(self) -> bool:
        return self.closing_worker() or not self.open

    async def wake(self) -> None:
        """Lanes and waiters re-check: work was queued, or the worker started draining or stopping."""
        async with self.cond:
            self.cond.notify_all()

    def add(self, q: Queued) -> None:
        """Queue a frame (the caller wakes the lanes once per read)."""
        self.queued.setdefault(q.sid, deque()).append(q)

    def count(self) -> None:
        obs.QUEUE_DEPTH.set(sum(len(q) for q in self.queued.values()))

    async def before_op(self, sid: str) -> None:
        """An op on a session waits until that session's frames read before it are stepped (or, when
        closing, its step in progress is done); other sessions' frames go on meanwhile."""
        async with self.cond:
            self.cond.notify_all()
            await self.cond.wait_for(lambda: sid not in self.busy and (sid not in self.queued or self.closing()))

    def start(self, step: Step) -> list[asyncio.Task]:
        """The lane tasks, each running `step` on its rounds until close()."""
        self.open = True
        return [asyncio.create_task(self._lane(str(k), step)) for k in range(self.lane_count)]

    async def close(self, lanes: list[asyncio.Task]) -> None:
        """No new steps; the ones in progress finish. Frames still queued stay in their streams (the next
        owner, or this worker's next read, takes them from after the last applied frame)."""
        async with self.cond:
            self.open = False
            self.cond.notify_all()
        await asyncio.gather(*lanes, return_exceptions=True)
        self.queued.clear()
        for hs in self.sessions.values():  # read again from after what is applied
            hs.read_id = hs.frame_id

    async def _lane(self, name: str, step: Step) -> None:
        """One lane: takes the next round as soon as it is free, so no lane idles while another still has
        work. Its busy seconds are lwl_lane_busy_seconds{lane=name}."""
        busy = obs.LANE_BUSY.labels(name)
        busy.inc(0)  # the lane shows in /metrics from the start
        while True:
            async with self.cond:
                await self.cond.wait_for(lambda: self.closing() or self._round_ready())
                if self.closing():
                    return
                group, threads, wide = self._take_round()
            t0 = time.perf_counter()
            try:
                await step(group, threads)
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS:
                await self.on_store_error("work")
                await asyncio.sleep(0.5)
            except Exception:  # noqa: BLE001 - one bad round must not end the lane
                obs.ERRORS.labels("worker").inc()
                log.exception("lane error")
                await asyncio.sleep(0.5)
            finally:
                busy.inc(time.perf_counter() - t0)
                async with self.cond:
                    self.busy.difference_update(q.sid for q in group)
                    self.wide = self.wide and not wide
                    self.cond.notify_all()

    def _round_ready(self) -> bool:
        return not self.wide and any(sid not in self.busy for sid in self.queued)

    def _drop_stale(self) -> None:
        """Frames of a session dropped, lost or moved meanwhile are not ours to step."""
        for sid, q in list(self.queued.items()):
            held = self.sessions.get(sid)
            if any(entry.hs is not held for entry in q):
                kept = deque(entry for entry in q if entry.hs is held)
                if kept:
                    self.queued[sid] = kept
                else:
                    del self.queued[sid]

    def _take_round(self) -> tuple[list[Queued], int, bool]:
        """The next frame of each free session with one, the longest waiting first. Returns (round, torch
        threads, 0 = the compute thread's; wide)."""
        self._drop_stale()
        free = [sid for sid in self.queued if sid not in self.busy]
        wide = self.cpu and not self.busy and len(free) == 1
        group = []
        for sid in free[: 1 if self.cpu else self.max_batch]:
            q = self.queued.pop(sid)
            group.append(q.popleft())
            if q:  # to the back of the line: the next round starts with those not stepped in this one
                self.queued[sid] = q
        self.busy.update(q.sid for q in group)
        self.wide = wide
        self.count()
        threads = 0 if not self.cpu or wide else max(1, self.threads // self.lane_count)
        return group, threads, wide

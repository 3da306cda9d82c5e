"""The worker: owns one device, holds per-session trackers, consumes its work stream, runs video jobs.

Frames do not pass through the work stream: the api appends each one to its session's frames stream
(`P:frames:<sid>`), and the worker reads its work stream and the frames streams of the sessions it
holds in one blocking read. A frame costs the worker that read (shared by whatever arrived at once)
and one write, a script that publishes the result and touches the session. Every LWL_SNAPSHOT_EVERY
frames, after that frame's result is out, a second script stores the tracker state and trims the
frames it covers; it runs while the next frame is stepped, so the snapshot (tens of MB) delays no
answer.

Recovery: the frames stream after the last snapshot is the replay log. A worker that is handed a
session it does not hold (`adopt`, or any op for it) restores the snapshot, steps the frames after
it, publishes the results the client has not seen, and carries on reading the stream. Every write
checks that the session still names this worker, so a worker that lost a session stops touching it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import zipfile
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from model.errors import InputError
from model.threads import resolve_threads
from model.tracker import step_many
from model.video import Annotation
from service import jobs as jobfiles
from service import obs
from service.backends import STORE_ERRORS, Answer, Commit, Input, MemoryBackend, RedisBackend, id_order
from service.codec import b64, binary_png, frame_bytes, pack, parse_frame_bytes, rle_encode, unpack
from service.settings import Settings, parse_crop

log = logging.getLogger("lwl.worker")
T = TypeVar("T")


class OpError(Exception):
    """An op that fails with an HTTP-like status (404 unknown session, 503 full, ...)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass
class HeldSession:
    """A session's tracker and bookkeeping, in this worker's memory."""

    tracker: Any
    last_seq: int = 0
    recent: list[int] = field(default_factory=list)  # seqs applied lately: resent frames are skipped
    frames_since_snapshot: int = 0
    last_active: float = field(default_factory=time.monotonic)
    frame_id: str = "0"  # id of the last entry of the session's frames stream handled here
    read_id: str = "0"  # id of the last entry read and queued for a lane (ahead of frame_id while queued)
    store_bytes: list[int] = field(default_factory=lambda: [0, 0])  # in the store: [snapshot, replay log]
    snapshot_write: asyncio.Task | None = field(default=None, repr=False, compare=False)  # in flight, if any

    def applied(self, seq: int, frame_id: str, nbytes: int = 0) -> None:
        """Remember a frame as applied (bounded memory) and where the frames stream continues; its bytes
        stay in the store's replay log until the next snapshot."""
        self.store_bytes[1] += nbytes
        self.last_seq = max(self.last_seq, seq)
        self.recent.append(seq)
        del self.recent[:-256]
        self.frame_id = frame_id
        self.frames_since_snapshot += 1

    @property
    def read_after(self) -> str:
        """Where the next read of the session's frames stream starts: after what is applied or queued."""
        return self.read_id if id_order(self.read_id) > id_order(self.frame_id) else self.frame_id

    def snapshot(self) -> bytes:
        """The tracker state with what a restoring worker needs to skip and replay the right frames."""
        head = {"seq": self.last_seq, "recent": self.recent, "frame_id": self.frame_id}
        return frame_bytes(head, self.tracker.write_state)


Done = tuple[dict[str, Any] | None, Commit | None]  # an op's message to answer, and the session writes with it


def _timed_model(call: Any) -> tuple[Any, float]:
    """Run one model call; its result and milliseconds (also observed as the `model` stage)."""
    t = time.perf_counter()
    res = call()
    dt = time.perf_counter() - t
    obs.LATENCY.labels("model").observe(dt)
    return res, dt * 1000


def _error_message(e: Exception, sid: str, op: str) -> dict[str, Any]:
    """An op's or frame's failure as the error message a client gets (and the metric it counts in)."""
    if isinstance(e, OpError):
        out = {"type": "error", "status": e.status, "code": e.code, "detail": e.detail}
    elif isinstance(e, MemoryError) or "out of memory" in str(e).lower() or "can't allocate" in str(e):
        log.error("op ran out of memory", exc_info=e, extra={"session_id": sid, "op": op})
        out = {"type": "error", "status": 503, "code": "out_of_memory", "detail": "the worker ran out of memory "
               "for this request; retry later or with fewer objects, smaller frames or a smaller crop"}
    elif isinstance(e, InputError):
        out = {"type": "error", "status": 400, "code": "bad_input", "detail": str(e)}
    elif isinstance(e, STORE_ERRORS):
        out = {"type": "error", "status": 503, "code": "store_down",
               "detail": "the store (Redis) is unavailable; retry shortly"}
    else:
        log.error("op failed", exc_info=e, extra={"session_id": sid, "op": op})
        out = {"type": "error", "status": 500, "code": "internal", "detail": "internal error (logged by the worker)"}
    obs.ERRORS.labels(out["code"]).inc()
    return out


def encode_result(res: Any, fmt: str, compute_ms: float) -> dict[str, Any]:
    """FrameResult -> the JSON result message (png: merged DAVIS PNG + 1-bit PNG per object; rle: COCO)."""
    from model.media import encode_label_png

    labels = res.labels
    objs = []
    for oid, o in res.objects.items():
        m = labels == oid
        objs.append({
            "id": int(oid),
            "box": [float(v) for v in o.box] if o.box is not None else None,
            "score": float(o.score),
            "area": int(o.area),
            "mask": b64(binary_png(m)) if fmt == "png" else rle_encode(m),
        })
    out: dict[str, Any] = {
        "type": "result", "frame_index": int(res.frame_index),
        "size": [int(labels.shape[0]), int(labels.shape[1])], "objects": objs,
        "compute_ms": round(compute_ms, 3), "format": fmt,
    }
    if fmt == "png":
        out["labels"] = b64(encode_label_png(labels))
    return out


class Worker:
    """One device, many sessions; same code for `lwl worker` (Redis) and `lwl serve` (in-process)."""

    def __init__(self, settings: Settings, backend: RedisBackend | MemoryBackend, model: Any = None,
                 worker_id: str | None = None) -> None:
        self.s = settings
        self.b = backend
        self.model = model
        self.id = worker_id or settings.resolved_worker_id
        self.sessions: dict[str, HeldSession] = {}
        # torch's CPU thread count is per calling thread (an OpenMP pool each): resolved once here (the
        # cores this process may use, unless LWL_TORCH_THREADS says otherwise), applied by each executor
        self.threads = resolve_threads(settings.torch_threads)
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="lwl-compute", initializer=self._torch_threads)
        self.job_pool = ThreadPoolExecutor(1, thread_name_prefix="lwl-job", initializer=self._torch_threads)
        self.lanes: ThreadPoolExecutor | None = None  # CPU: frames of waiting sessions, stepped side by side
        self.lane_count = 1
        # frames read and not yet stepped, per session, the session waiting longest first; lanes take them
        self.queued: dict[str, deque[tuple[HeldSession, str, dict[str, Any], list[bytes]]]] = {}
        self.busy: set[str] = set()  # sessions a lane is stepping now
        self.wide = False  # a lone session is being stepped with every thread: the other lanes wait
        self.lanes_open = False  # the lane tasks take work (set by the work loop)
        self.sched = asyncio.Condition()  # guards queued/busy/wide; notified on every change
        self.draining = False
        self.stopping = False
        self.stopped = asyncio.Event()
        self.running_jobs = 0
        self.tasks: list[asyncio.Task] = []
        self.snapshot_writes: set[asyncio.Task] = set()  # background snapshot writes in flight
        self.work_task: asyncio.Task | None = None
        self.receiving = False  # the work loop waits in its blocking read (safe to cancel there)
        self.store_down_since: float | None = None  # monotonic time of the first failure of an outage
        self.last_id = "0"
        self.started = time.time()
        self.device = "cpu"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the model (in a thread) and start the loops."""
        if self.model is None:
            self.model = await asyncio.get_running_loop().run_in_executor(self.compute, self._load_model)
        self.device = str(getattr(self.model, "device", "cpu"))
        await self._run(lambda: None)  # the compute thread has started: its thread count is known
        self.lanes = self._lane_pool()
        await self._retry("start", lambda: self.b.drop_work(self.id))  # waits for the store if it is down
        await self._heartbeat_once()
        self.work_task = asyncio.create_task(self._work_loop())
        self.tasks.append(self.work_task)
        for coro in (self._heartbeat_loop(), self._evict_loop(), self._job_loop()):
            self.tasks.append(asyncio.create_task(coro))
        log.info("worker started", extra={"worker_id": self.id, "device": self.device,
                                          "model": self.model.name, "threads": self.threads})

    def _torch_threads(self) -> None:
        """Executor thread start: the resolved thread count for the torch work of this thread. Set in the
        main thread it would not reach here (torch keeps the count per thread)."""
        import torch

        from model.threads import set_cpu_threads

        try:  # an initializer that raises would break the executor for good
            set_cpu_threads(self.threads)
            log.info("torch cpu threads", extra={"worker_id": self.id, "threads": torch.get_num_threads(),
                                                 "executor": threading.current_thread().name})
        except Exception:  # noqa: BLE001 - torch's default count is slower, not wrong
            log.exception("could not set torch cpu threads", extra={"worker_id": self.id})

    def _lane_pool(self) -> ThreadPoolExecutor | None:
        """On a CPU, sessions with frames waiting are stepped by lanes side by side, one torch thread (or
        more) each: small convolutions scale badly over threads, so two 1-thread lanes do more than one
        frame on 2 threads (docs/DEPLOY.md "Sizing"). A lone session still gets every thread. On a GPU
        the batch is the way to fill the device: one lane, no lane threads."""
        lanes = self.s.cpu_lanes or self.threads
        if not self.device.startswith("cpu") or lanes < 2:
            return None
        self.lane_count = lanes
        log.info("cpu lanes", extra={"worker_id": self.id, "lanes": lanes})
        return ThreadPoolExecutor(lanes, thread_name_prefix="lwl-lane")

    def _load_model(self) -> Any:
        from model.api import load_model

        dev = None if self.s.device in ("", "auto") else self.s.device
        return load_model(weights=self.s.weights or None, device=dev, exact=self.s.exact, threads=None)

    async def drain(self) -> None:
        """SIGTERM: stop taking sessions and jobs, finish the frames or op at hand, hand every held session
        over to another worker at once (idle ones included: waiting for sessions to end would hold a
        rolling deploy for their whole life), wait for a running job (at most LWL_DRAIN_TIMEOUT_S), stop."""
        if self.draining:
            return
        self.draining = True  # the heartbeat says so (no new sessions) and the work loop ends
        await self._wake()  # lanes take no new frames; the steps in progress finish
        t0 = time.monotonic()
        log.info("draining", extra={"worker_id": self.id, "sessions": len(self.sessions)})
        await self._heartbeat_once()
        if self.work_task is not None:
            if self.receiving:  # waiting for input, nothing half done: no need to wait for the read
                self.work_task.cancel()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.work_task), self.s.drain_timeout_s)
        handed = await self._hand_over()
        deadline = time.monotonic() + self.s.drain_timeout_s
        while self.running_jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await self.stop()
        log.info("drained", extra={"worker_id": self.id, "handed_over": handed,
                                   "seconds": round(time.monotonic() - t0, 3)})

    async def _hand_over(self) -> int:
        """Give each held session to the live worker with the most room: snapshot it, name that worker in
        the session in the same fenced write (with when and why, for lwl_failover_seconds), then `adopt`
        has it restored now. Its frames stream after the snapshot is the replay log, so frames sent
        meanwhile are answered there. With no other worker (or the store down) sessions stay here and
        stop() snapshots them; the api moves them once this worker has left the registry."""
        if not self.sessions:
            return 0
        try:
            live = [w for w in await self.b.live_workers() if w.get("id") != self.id and not w.get("draining")]
        except STORE_ERRORS:
            return 0
        if not live:
            return 0
        since, n = f"{time.time():.3f}", 0
        for sid in list(self.sessions):
            target = max(live, key=lambda w: int(w.get("free", 0)))
            hs = self.sessions.get(sid)
            if hs is None:  # evicted or lost meanwhile
                continue
            await self._settled(hs)
            snap = await self._run(self._take_snapshot, hs)
            commit = self._commit(sid, hs, [], snap, worker=target["id"], moved_since=since, moved_cause="drain")
            try:
                moved = await self.b.commit(commit)
                self.sessions.pop(sid, None)  # handed over, or no longer this worker's
                if moved:
                    target["free"] = int(target.get("free", 0)) - 1
                    await self.b.send_work(target["id"], *pack({"op": "adopt", "sid": sid}))
                    n += 1
                    log.info("session handed over", extra={"session_id": sid, "worker_id": self.id,
                                                           "to": target["id"]})
            except STORE_ERRORS:
                continue  # stop() snapshots it if the store comes back in time
        return n

    async def stop(self) -> None:
        """Finish the op at hand, snapshot held sessions (so another worker can resume them) and stop."""
        self.stopping = True
        await self._wake()
        if self.work_task is not None and self.receiving:
            self.work_task.cancel()
        if self.work_task is not None:  # the work loop ends after its current op: no frame half recorded
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.work_task), 10)
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for sid in list(self.sessions):
            with contextlib.suppress(Exception):
                await self._snapshot(sid)
        self.sessions.clear()
        with contextlib.suppress(Exception):
            await self.b.remove_worker(self.id)
        self.compute.shutdown(wait=False, cancel_futures=True)
        self.job_pool.shutdown(wait=False, cancel_futures=True)
        if self.lanes is not None:
            self.lanes.shutdown(wait=False, cancel_futures=True)
        self.stopped.set()
        log.info("worker stopped", extra={"worker_id": self.id})

    # ------------------------------------------------------------------ heartbeat / eviction
    def info(self) -> dict[str, Any]:
        """What the api needs to place sessions: capacity, memory, model, draining."""
        n = len(self.sessions)
        return {
            "id": self.id, "sessions": n, "max_sessions": self.s.max_sessions_per_worker,
            "free": 0 if self.draining else max(0, self.s.max_sessions_per_worker - n),
            "memory_bytes": obs.device_memory_bytes(), "device": self.device,
            "model": getattr(self.model, "name", ""), "draining": self.draining,
            "box_init": bool(getattr(self.model, "has_box_encoder", False)),
            "crop_size": "x".join(str(v) for v in getattr(self.model, "default_crop_size", ())),
            "jobs_running": self.running_jobs, "started": self.started, "ts": time.time(),
            "state_bytes": self.held_state_bytes(), "state_budget_bytes": self.s.worker_state_bytes,
            "store_bytes": self.store_bytes(),
            "max_crop_pixels": self.max_crop_pixels, "max_objects": self.s.max_objects,
            "threads": self.threads, "exact": bool(getattr(self.model, "exact", False)),
        }

    async def _heartbeat_once(self) -> bool:
        """One beat; it also puts the worker back in the registry after the store lost its data.
        False when the store is down (never raises for that: callers go on)."""
        info = self.info()
        obs.ACTIVE_SESSIONS.set(info["sessions"])
        obs.DEVICE_MEMORY.set(info["memory_bytes"])
        obs.STATE_BYTES.set(info["state_bytes"])
        for scope in ("total", "max_session"):
            obs.STORE_BYTES.labels(scope).set(info["store_bytes"][scope])
        try:
            await self.b.heartbeat(self.id, info, ttl_s=3 * self.s.heartbeat_s)
        except STORE_ERRORS:
            await self._store_failed("heartbeat")
            return False
        return True

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                outage = self.store_down_since is not None
                if await self._heartbeat_once() and outage:
                    await self._store_back()
            except Exception:  # noqa: BLE001 - the heartbeat never stops
                obs.ERRORS.labels("heartbeat").inc()
                log.exception("heartbeat failed", extra={"worker_id": self.id})
            await asyncio.sleep(self.s.heartbeat_s)

    async def _store_failed(self, what: str) -> None:
        """Count a store failure, drop idle connections (dead after a Redis restart); log the first
        failure of an outage only (the loops retry quietly)."""
        obs.ERRORS.labels("store_down").inc()
        await self.b.reset_idle()
        if self.store_down_since is None:
            self.store_down_since = time.monotonic()
            log.warning("store unavailable, retrying", extra={"worker_id": self.id, "during": what})

    async def _store_back(self) -> None:
        """After an outage the store may have restarted empty: sessions it lost (or that name another
        worker now) are dropped, so their slots are free again and nothing reads their streams."""
        down = time.monotonic() - (self.store_down_since or time.monotonic())
        lost = 0
        for sid in list(self.sessions):
            meta = await self.b.get_session(sid)
            if meta is None or meta.get("worker") != self.id:
                self._lost(sid)
                lost += 1
        self.store_down_since = None
        log.warning("store back", extra={"worker_id": self.id, "down_s": round(down, 1), "sessions_lost": lost,
                                         "sessions": len(self.sessions)})
        if lost:
            await self._heartbeat_once()

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """A store call the worker must not skip (a result, a snapshot, a job's state): retried with
        backoff while the store is down or restarting, so no answer is lost. Raises once stopping."""
        delay = 0.1
        while True:
            try:
                return await call()
            except STORE_ERRORS:
                if self.stopping:
                    raise
                await self._store_failed(what)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.s.session_ttl_s / 4))
            now = time.monotonic()
            for sid, hs in list(self.sessions.items()):
                if now - hs.last_active > self.s.session_ttl_s:
                    try:
                        await self._forget(sid, reason="ttl")
                    except STORE_ERRORS:  # the tracker is gone; its keys expire on their own
                        await self._store_failed("evict")

    async def _forget(self, sid: str, reason: str) -> None:
        """Drop a session's tracker and all its stored data."""
        hs = self.sessions.pop(sid, None)
        if hs is not None:
            await self._settled(hs)  # a snapshot landing after the delete would outlive the session
        await self.b.delete_session(sid)
        await self.b.drop_results(sid)
        log.info("session ended", extra={"session_id": sid, "worker_id": self.id, "reason": reason})
        await self._heartbeat_once()

    # ------------------------------------------------------------------ work loop
    async def _work_loop(self) -> None:
        """Read, queue, repeat until stopping or draining, while the lanes step what is queued. Nothing
        ends it: a store error backs off and retries (results are retried where they are written), any
        other error is logged. On its way out it waits for the steps in progress (none is cut in half)."""
        self.lanes_open = True
        lanes = [asyncio.create_task(self._lane_loop(str(k))) for k in range(self.lane_count)]
        try:
            while not (self.stopping or self.draining):
                try:
                    self.receiving = True
                    try:
                        batch = await self._receive()
                    finally:
                        self.receiving = False
                    await self._handle_batch(batch)
                except asyncio.CancelledError:
                    raise
                except STORE_ERRORS:
                    await self._store_failed("work")
                    await asyncio.sleep(0.5)
                except Exception:  # noqa: BLE001 - one bad read or op must not end the loop
                    obs.ERRORS.labels("worker").inc()
                    log.exception("work loop error", extra={"worker_id": self.id})
                    await asyncio.sleep(0.5)
        finally:
            await asyncio.shield(self._close_lanes(lanes))

    async def _close_lanes(self, lanes: list[asyncio.Task]) -> None:
        """No new steps; the ones in progress finish. Frames still queued stay in their streams (the next
        owner, or this worker's next read, takes them from after the last applied frame)."""
        async with self.sched:
            self.lanes_open = False
            self.sched.notify_all()
        await asyncio.gather(*lanes, return_exceptions=True)
        self.queued.clear()
        for hs in self.sessions.values():  # read again from after what is applied
            hs.read_id = hs.frame_id

    async def _wake(self) -> None:
        """Lanes and waiters re-check: work was queued, or the worker started draining or stopping."""
        async with self.sched:
            self.sched.notify_all()

    async def _receive(self) -> list[Input]:
        """Ops on this worker's work stream and frames of the sessions it holds: one blocking read, after
        the frames already queued (the lanes step those meanwhile)."""
        frames_after = {sid: hs.read_after for sid, hs in self.sessions.items()}
        return await self.b.read_inputs(self.id, self.last_id, frames_after, 1.0)

    async def _handle_batch(self, batch: list[Input]) -> None:
        """Everything one read returned: frames are queued for the lanes, which step them while the next
        read waits; an op on a session is handled once that session's frames before it are stepped (and
        before those after it)."""
        ops = 0
        for m in batch:
            if self.stopping or self.draining:  # what is left stays in the streams for the next owner
                break
            if not m.sid:
                h, blobs = unpack(m.header, m.body)
                await self._before_op(h)
                self.last_id = m.eid
                ops += 1
                await self._handle(h, blobs)
                continue
            hs = self.sessions.get(m.sid)
            if hs is None or id_order(m.eid) <= id_order(hs.read_after):
                continue
            hs.read_id = m.eid
            self.queued.setdefault(m.sid, deque()).append((hs, m.eid, *unpack(m.header, m.body)))
        self._count_queued()
        await self._wake()
        if ops:
            await self.b.trim_work(self.id, self.last_id)

    def _count_queued(self) -> None:
        obs.QUEUE_DEPTH.set(sum(len(q) for q in self.queued.values()))

    def _closing(self) -> bool:
        return self.stopping or self.draining or not self.lanes_open

    async def _before_op(self, h: dict[str, Any]) -> None:
        """An op on a session waits until that session's frames read before it are stepped (or, when
        closing, its step in progress is done); other sessions' frames go on meanwhile. An op on no
        session, or `adopt` of a session held here (the api asks that of a live worker whenever a
        stream has waited a second for an answer, a no-op then), waits for nothing: under load every
        stream sends it, and waiting for the queue to empty each time left the lanes starved."""
        sid = h.get("sid", "")
        if not sid or (h.get("op") == "adopt" and sid in self.sessions):
            return
        async with self.sched:
            self.sched.notify_all()
            await self.sched.wait_for(lambda: sid not in self.busy and (sid not in self.queued or self._closing()))

    async def _lane_loop(self, name: str) -> None:
        """One lane: takes the next round of queued frames as soon as it is free, so no lane idles while
        another still has work (stepping each read's frames as one block left a lane idle a fifth of
        the time, waiting for the other to finish). Runs until the work loop ends; its busy seconds are
        lwl_lane_busy_seconds{lane=name}."""
        busy = obs.LANE_BUSY.labels(name)
        busy.inc(0)  # the lane shows in /metrics from the start
        while True:
            async with self.sched:
                await self.sched.wait_for(lambda: self._closing() or self._round_ready())
                if self._closing():
                    return
                group, threads, wide = self._take_round()
            sids = list(group)  # _frames empties the group
            t0 = time.perf_counter()
            try:
                await self._frames(group, threads)
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS:
                await self._store_failed("work")
                await asyncio.sleep(0.5)
            except Exception:  # noqa: BLE001 - one bad round must not end the lane
                obs.ERRORS.labels("worker").inc()
                log.exception("lane error", extra={"worker_id": self.id})
                await asyncio.sleep(0.5)
            finally:
                busy.inc(time.perf_counter() - t0)
                async with self.sched:
                    self.busy.difference_update(sids)
                    self.wide = self.wide and not wide
                    self.sched.notify_all()

    def _round_ready(self) -> bool:
        return not self.wide and any(sid not in self.busy for sid in self.queued)

    def _take_round(self) -> tuple[dict[str, tuple[HeldSession, str, dict[str, Any], list[bytes]]], int, bool]:
        """The next frame of each free session with one, the longest waiting first: up to LWL_MAX_BATCH
        sessions on one device (stepped as one batch), one session per CPU lane. A lone session on an
        idle CPU worker gets every thread (`wide`); otherwise each lane steps on its share of them.
        Returns (group, torch threads, 0 = the compute thread's; wide)."""
        for sid, q in list(self.queued.items()):  # a session dropped, lost or moved meanwhile: not ours
            held = self.sessions.get(sid)
            if any(entry[0] is not held for entry in q):
                kept = deque(entry for entry in q if entry[0] is held)
                if kept:
                    self.queued[sid] = kept
                else:
                    del self.queued[sid]
        free = [sid for sid in self.queued if sid not in self.busy]
        wide = self.lanes is not None and not self.busy and len(free) == 1
        take = free[: 1 if self.lanes is not None else self.s.max_batch]
        group = {}
        for sid in take:
            q = self.queued.pop(sid)
            group[sid] = q.popleft()
            if q:  # to the back of the line: the next round starts with those not stepped in this one
                self.queued[sid] = q
        self.busy.update(group)
        self.wide = wide
        self._count_queued()
        threads = 0 if self.lanes is None or wide else max(1, self.threads // self.lane_count)
        return group, threads, wide

    async def _frames(self, group: dict[str, tuple[HeldSession, str, dict[str, Any], list[bytes]]],
                      threads: int = 0) -> None:
        """One frame each of several sessions: stepped together (model.tracker.step_many) on the compute
        thread (threads=0) or on a lane with that many torch threads, published each."""
        items = [(sid, hs, eid, h, blobs) for sid, (hs, eid, h, blobs) in group.items()]
        group.clear()
        if len(items) == 1 and not threads:
            return await self._frame(items[0][0], items[0][1], items[0][2], items[0][3], items[0][4])
        todo = []
        for sid, hs, eid, h, blobs in items:
            hs.last_active = time.monotonic()
            if int(h["seq"]) in hs.recent:  # already applied; its answer went out then
                hs.frame_id = eid
                continue
            todo.append((sid, hs, eid, h, blobs))
        if not todo:
            return
        await self._step_group(todo, threads)
        for sid, hs, *_ in todo:
            await self._snapshot_if_due(sid, hs)

    async def _step_group(self, todo: list[tuple[str, HeldSession, str, dict[str, Any], list[bytes]]],
                          threads: int) -> None:
        """Step these sessions' frames together, on the compute thread (threads=0) or on a lane with that
        many torch threads, and publish their answers as soon as they are ready."""
        work = [(hs, eid, int(h["seq"]), blobs[0], h.get("fmt", "png")) for _, hs, eid, h, blobs in todo]
        loop = asyncio.get_running_loop()
        if threads:
            outs = await loop.run_in_executor(self.lanes, self._compute_frames, work, threads)
        else:
            outs = await self._run(self._compute_frames, work)
        for (sid, hs, _, h, _), out in zip(todo, outs, strict=True):
            await self._publish_frame(sid, hs, self._answer(out, sid, int(h["seq"]), h.get("req", ""), h.get("id")))

    def _compute_frames(self, work: list[tuple[HeldSession, str, int, bytes, str]],
                        threads: int = 0) -> list[dict[str, Any]]:
        """Compute thread or a lane (`threads` torch threads), several sessions: decode each, step the good
        ones together, encode each. A frame that fails alone (a bad image, a wrong size) is answered
        with its error; the others go on."""
        if threads:
            from model.threads import set_cpu_threads

            set_cpu_threads(threads)  # per calling thread: lanes differ in count with the sessions waiting
        frames: dict[int, np.ndarray] = {}
        outs: dict[int, dict[str, Any]] = {}
        for k, (hs, _, _, image, _) in enumerate(work):
            try:
                frames[k] = self._decode(image)
                hs.tracker._check_frame(frames[k])
            except Exception as e:  # noqa: BLE001 - this frame only
                frames.pop(k, None)
                outs[k] = _error_message(e, sid="", op="frame")
        good = sorted(frames)
        if good:
            try:
                results, ms = _timed_model(lambda: step_many([(work[k][0].tracker, frames[k]) for k in good],
                                                             max_batch=self.s.max_batch))
                obs.BATCH_SIZE.observe(len(good))
                for k, res in zip(good, results, strict=True):
                    outs[k] = self._encode(res, work[k][4], ms / len(good))
                    obs.FRAMES.inc()
            except Exception:  # noqa: BLE001 - step them one by one so one failure stays one failure
                for k in good:
                    outs[k] = self._step_one(work[k][0], frames[k], work[k][4])
        for hs, eid, seq, image, _ in work:
            hs.applied(seq, eid, len(image))
        return [outs[k] for k in range(len(work))]

    def _step_one(self, hs: HeldSession, frame: np.ndarray, fmt: str) -> dict[str, Any]:
        try:
            res, ms = self._model_step(hs.tracker, frame)
            obs.FRAMES.inc()
            return self._encode(res, fmt, ms)
        except Exception as e:  # noqa: BLE001
            return _error_message(e, sid="", op="frame")

    # ------------------------------------------------------------------ one frame
    async def _frame(self, sid: str, hs: HeldSession, eid: str, h: dict[str, Any], blobs: list[bytes]) -> None:
        """One frame of a held session: decode -> model step -> encode (compute thread) -> publish."""
        seq, req = int(h["seq"]), h.get("req", "")
        hs.last_active = time.monotonic()
        if seq in hs.recent:  # already applied; its answer went out then
            hs.frame_id = eid
            return
        out = await self._run(self._compute_frame, hs, eid, seq, blobs[0], h.get("fmt", "png"))
        await self._publish_frame(sid, hs, self._answer(out, sid, seq, req, h.get("id")))
        await self._snapshot_if_due(sid, hs)

    def _compute_frame(self, hs: HeldSession, eid: str, seq: int, image: bytes, fmt: str) -> dict[str, Any]:
        """Compute thread: the frame's result message (or error message). The frame counts as applied
        either way, so a replay after failover does the same."""
        try:
            frame = self._decode(image)
            res, ms = self._model_step(hs.tracker, frame)
            out = self._encode(res, fmt, ms)
            obs.FRAMES.inc()
        except Exception as e:  # noqa: BLE001 - one bad frame must not end the session
            out = _error_message(e, sid="", op="frame")
        hs.applied(seq, eid, len(image))
        return out

    def _decode(self, image: bytes) -> np.ndarray:
        """The only full decode of a frame (the api reads its header only)."""
        from model.media import read_image

        t = time.perf_counter()
        try:
            frame = read_image(image)
        except InputError as e:
            raise OpError(400, "bad_image", str(e)) from None
        if frame.shape[0] * frame.shape[1] > self.s.max_frame_pixels:
            raise OpError(413, "frame_too_large", f"frame has {frame.shape[1]}x{frame.shape[0]} pixels, "
                          f"more than LWL_MAX_FRAME_PIXELS={self.s.max_frame_pixels}")
        obs.LATENCY.labels("decode").observe(time.perf_counter() - t)
        return frame

    @staticmethod
    def _model_step(tracker: Any, frame: np.ndarray) -> tuple[Any, float]:
        """tracker.step, timed: the FrameResult and its milliseconds."""
        return _timed_model(lambda: tracker.step(frame))

    @staticmethod
    def _encode(res: Any, fmt: str, model_ms: float) -> dict[str, Any]:
        t = time.perf_counter()
        out = encode_result(res, fmt, model_ms)
        out["threads"] = torch.get_num_threads()  # this step's (compute thread or lane) torch threads
        obs.LATENCY.labels("encode").observe(time.perf_counter() - t)
        return out

    def _take_snapshot(self, hs: HeldSession) -> bytes:
        hs.frames_since_snapshot = 0
        snap = hs.snapshot()
        hs.store_bytes = [len(snap), 0]  # the commit that writes it trims the replay log up to here
        return snap

    def _answer(self, out: dict[str, Any], sid: str, seq: int | None, req: str | None, cid: Any = None) -> Answer:
        """The message's final JSON text, written once: the api relays these bytes. `cid`: the id a
        WebSocket client gave the frame, kept in the frame's header so a resumed stream still has it."""
        out.setdefault("session_id", sid)
        out["worker_id"] = self.id
        if seq:
            out["seq"] = seq
        if cid is not None:
            out["id"] = cid
        body = json.dumps(out, separators=(",", ":")).encode()
        return Answer(body, str(out.get("type", "")), int(seq or 0), req or "")

    async def _publish_frame(self, sid: str, hs: HeldSession, answer: Answer) -> None:
        """The frame's one write: result (or reply) and session touch (retried while the store is down: a
        retry that writes the result twice is harmless, the relay forwards a seq once)."""
        commit = self._commit(sid, hs, [answer])
        if not await self._retry("result", lambda: self.b.commit(commit)):
            self._lost(sid)

    async def _snapshot_if_due(self, sid: str, hs: HeldSession) -> None:
        """Every LWL_SNAPSHOT_EVERY frames, after the frame's answer is out: serialise the state (compute
        thread, before the next step changes it) and store it in the background, while the next frame
        is stepped. One write in flight per session, so snapshots land in order. If the worker dies
        before it lands, the previous snapshot and the longer replay log restore the same state."""
        if hs.frames_since_snapshot < self.s.snapshot_every or self.sessions.get(sid) is not hs:
            return
        await self._settled(hs)
        snap = await self._run(self._take_snapshot, hs)
        commit = self._commit(sid, hs, [], snap, touch=False)
        hs.snapshot_write = task = asyncio.create_task(self._write_snapshot(sid, commit))
        self.snapshot_writes.add(task)  # held here too: a session dropped meanwhile must not drop its task
        task.add_done_callback(self.snapshot_writes.discard)

    async def _write_snapshot(self, sid: str, commit: Commit) -> None:
        try:
            if not await self._retry("snapshot", lambda: self.b.commit(commit)):
                self._lost(sid)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the replay log still covers these frames
            obs.ERRORS.labels("worker").inc()
            log.exception("snapshot write failed", extra={"session_id": sid, "worker_id": self.id})

    @staticmethod
    async def _settled(hs: HeldSession) -> None:
        """Wait for the session's snapshot write in flight (a newer state is about to be written or read)."""
        task, hs.snapshot_write = hs.snapshot_write, None
        if task is not None and not task.done():
            await asyncio.wait({task})  # never raises the write's outcome; a cancellation of ours still does

    def _commit(self, sid: str, hs: HeldSession, answers: list[Answer], snap: bytes | None = None,
                touch: bool = True, **extra: str) -> Commit:
        """The writes of one op. `touch=False` (a background snapshot) leaves the session's fields alone:
        landing after the next frame's commit, it must not write older values over newer ones."""
        fields = {"last_active": f"{time.time():.3f}", "frames": str(hs.tracker.frame_index + 1),
                  "objects": json.dumps(hs.tracker.object_ids), "last_seq": str(hs.last_seq),
                  **extra} if touch else {}
        return Commit(sid, self.id, self.s.session_ttl_s, fields, answers, snap,
                      hs.frame_id if snap is not None and hs.frame_id != "0" else "")

    def _lost(self, sid: str) -> None:
        """The session expired or another worker owns it now: forget the tracker, touch nothing."""
        if self.sessions.pop(sid, None) is not None:
            log.info("session lost", extra={"session_id": sid, "worker_id": self.id})

    # ------------------------------------------------------------------ ops on the work stream
    async def _handle(self, h: dict[str, Any], blobs: list[bytes]) -> None:
        op, sid, req = h.get("op"), h.get("sid", ""), h.get("req")
        commit: Commit | None = None
        try:
            out, commit = await getattr(self, f"_op_{op}")(h, blobs)
        except Exception as e:  # noqa: BLE001 - one bad op must not kill the worker
            out = _error_message(e, sid, str(op))
        if out is None:
            return
        answer = self._answer(out, sid, h.get("seq"), req)
        if commit is None:
            await self._retry("reply", lambda: self.b.deliver(sid, [answer]))
            return
        commit.answers.append(answer)
        if not await self._retry("reply", lambda: self.b.commit(commit)):  # the answer went nowhere: say why
            self._lost(sid)
            err = {"type": "error", "status": 503, "code": "worker_lost",
                   "detail": f"session {sid} moved to another worker or expired; retry"}
            await self._retry("reply", lambda: self.b.deliver(sid, [self._answer(err, sid, h.get("seq"), req)]))

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.compute, fn, *args)

    async def _held(self, sid: str) -> HeldSession:
        """The session's tracker, restoring it from snapshot + replay when this worker does not hold it."""
        hs = self.sessions.get(sid)
        if hs is not None:
            hs.last_active = time.monotonic()
            return hs
        meta = await self.b.get_session(sid)
        snap = await self.b.get_snapshot(sid)
        if meta is None or snap is None:
            raise OpError(404, "unknown_session", f"unknown session {sid} (deleted or expired)")
        return await self._restore(sid, snap, meta)

    async def _restore(self, sid: str, snap: bytes, meta: dict[str, str] | None = None) -> HeldSession:
        """Snapshot, then the frames after it (the replay log); results the client has not seen go out.
        A session moved here (its worker died or drained) counts in lwl_failover_seconds: from the old
        worker's last heartbeat (or its hand-over) to this commit, after which the session is served."""
        sh, sblobs = parse_frame_bytes(snap)
        tracker = await self._run(self.model.restore_tracker, sblobs[0])
        hs = HeldSession(tracker=tracker, last_seq=int(sh["seq"]), recent=list(sh.get("recent", [])),
                         frame_id=sh.get("frame_id", "0"), store_bytes=[len(snap), 0])
        last = await self.b.last_result(sid)
        published = last.seq if last else 0
        answers, replayed = [], 0
        for eid, hraw, body in await self.b.read_frames(sid, hs.frame_id):
            h, blobs = unpack(hraw, body)
            seq = int(h["seq"])
            if seq in hs.recent:
                hs.frame_id = eid
                continue
            out = await self._run(self._compute_frame, hs, eid, seq, blobs[0], h.get("fmt", "png"))
            replayed += 1
            if seq > published or h.get("req"):
                answers.append(self._answer(out, sid, seq, h.get("req"), h.get("id")))
        self.sessions[sid] = hs
        moved = float((meta or {}).get("moved_since") or 0)
        commit = self._commit(sid, hs, answers, state="active", **({"moved_since": ""} if moved else {}))
        if not await self._retry("restore", lambda: self.b.commit(commit)):
            self._lost(sid)
            raise OpError(503, "worker_lost", f"session {sid} moved to another worker or expired; retry")
        if moved:  # wall clocks of two hosts: clamped, NTP keeps them close
            cause = (meta or {}).get("moved_cause") or "worker_died"
            obs.FAILOVER.labels(cause).observe(max(0.0, time.time() - moved))
        log.info("session restored", extra={"session_id": sid, "worker_id": self.id, "replayed": replayed,
                                            "failover_s": round(time.time() - moved, 3) if moved else None})
        await self._heartbeat_once()
        return hs

    async def _snapshot(self, sid: str) -> None:
        hs = self.sessions[sid]
        await self._settled(hs)
        snap = await self._run(self._take_snapshot, hs)
        commit = self._commit(sid, hs, [], snap)
        await self._retry("snapshot", lambda: self.b.commit(commit))

    @staticmethod
    def _objects_args(h: dict[str, Any], blobs: list[bytes]) -> tuple[np.ndarray | None, dict | None]:
        from model.media import read_label_png

        mask = read_label_png(blobs[1]) if len(blobs) > 1 and blobs[1] else None
        boxes = {int(k): tuple(v) for k, v in h["boxes"].items()} if h.get("boxes") else None
        return mask, boxes

    # ------------------------------------------------------------------ ops
    async def _op_create(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        sid = h["sid"]
        if self.draining or len(self.sessions) >= self.s.max_sessions_per_worker:
            raise OpError(503, "worker_full", f"worker {self.id} has no free session slot")
        if h.get("model") and h["model"] != self.model.name:
            raise OpError(400, "unknown_model", f"model {h['model']!r} is not served here "
                          f"(this worker serves {self.model.name!r})")
        crop = self._crop(h.get("crop_size"))
        fmt = h.get("fmt", "png")

        def create() -> tuple[HeldSession, dict[str, Any], bytes]:
            frame = self._decode(blobs[0])
            mask, boxes = self._objects_args(h, blobs)
            self._admit(frame.shape[:2], len(Annotation(mask, boxes).ids()), crop)  # before any model work
            tracker = self.model.new_tracker(crop_size=crop)
            res, ms = _timed_model(lambda: tracker.step(frame, mask=mask, boxes=boxes))
            obs.FRAMES.inc()
            hs = HeldSession(tracker=tracker, last_seq=0)
            return hs, self._encode(res, fmt, ms), self._take_snapshot(hs)

        hs, out, snap = await self._run(create)
        self.sessions[sid] = hs
        log.info("session created", extra={"session_id": sid, "worker_id": self.id})
        await self._heartbeat_once()
        return out, self._commit(sid, hs, [], snap, worker=self.id, state="active")

    def _crop(self, text: str | None) -> tuple[int, int] | None:
        """The session's crop: the client's (within LWL_MAX_CROP_PIXELS), the deployment's or the model's."""
        try:
            crop = parse_crop(text) or self.s.crop_tuple()
        except ValueError as e:
            raise OpError(400, "bad_crop_size", str(e)) from None
        if crop is not None and crop[0] * crop[1] > self.max_crop_pixels:
            raise OpError(400, "crop_too_large", f"crop {crop[0]}x{crop[1]} has more than "
                          f"{self.max_crop_pixels} pixels (LWL_MAX_CROP_PIXELS)")
        return crop

    @property
    def max_crop_pixels(self) -> int:
        """LWL_MAX_CROP_PIXELS, or by default 4x the model's own crop area."""
        default = getattr(self.model, "default_crop_size", (480, 832))
        return self.s.max_crop_pixels or 4 * default[0] * default[1]

    def _state_bytes(self, frame_hw: tuple[int, int], n_objects: int, crop: tuple[int, int] | None) -> int:
        """What a session of this size holds once its few-shot memory is full (the model's own bound)."""
        estimate = getattr(self.model, "state_bytes", None)
        return int(estimate(tuple(frame_hw), n_objects, crop)) if estimate else 0

    def store_bytes(self) -> dict[str, int]:
        """Bytes this worker's sessions keep in the store: snapshots and replay logs (total and the largest
        session), reported in the heartbeat and as lwl_store_bytes."""
        per = [sum(hs.store_bytes) for hs in list(self.sessions.values())]
        return {"total": sum(per), "max_session": max(per, default=0),
                "snapshots": sum(hs.store_bytes[0] for hs in list(self.sessions.values()))}

    def held_state_bytes(self, skip: str = "") -> int:
        """The state bound of every session held here (but `skip`)."""
        return sum(self._state_bytes(hs.tracker.frame_hw or (0, 0), len(hs.tracker.object_ids), hs.tracker.crop_hw)
                   for sid, hs in list(self.sessions.items()) if sid != skip)

    def _admit(self, frame_hw: tuple[int, int], n_objects: int, crop: tuple[int, int] | None,
               sid: str = "") -> None:
        """Admission control before any model work: at most LWL_MAX_OBJECTS objects, the session within
        LWL_MAX_SESSION_STATE_MB and this worker within LWL_WORKER_STATE_MB (else 503: the api tries another
        worker, then answers no_capacity with Retry-After)."""
        if n_objects > self.s.max_objects:
            raise OpError(400, "too_many_objects", f"{n_objects} objects: a session holds at most "
                          f"LWL_MAX_OBJECTS={self.s.max_objects}")
        need = self._state_bytes(frame_hw, n_objects, crop)
        if need > self.s.max_session_state_bytes:
            raise OpError(413, "session_too_large", f"{n_objects} objects on {frame_hw[1]}x{frame_hw[0]} frames "
                          f"need {need / 2**20:.0f} MB of tracker memory, more than "
                          f"LWL_MAX_SESSION_STATE_MB={self.s.max_session_state_mb:g}")
        if need + self.held_state_bytes(skip=sid) > self.s.worker_state_bytes:
            raise OpError(503, "worker_full", f"worker {self.id} has no room for {need / 2**20:.0f} MB more "
                          "tracker memory")

    async def _control(self, h: dict[str, Any], call: Any) -> Done:
        """add/correct/remove: the call on the tracker, then a snapshot (the replay log holds frames only)."""
        sid = h["sid"]
        hs = await self._held(sid)
        await self._settled(hs)

        def run() -> tuple[Any, bytes]:
            return call(hs.tracker), self._take_snapshot(hs)

        out, snap = await self._run(run)
        return out, self._commit(sid, hs, [], snap)

    def _result_of(self, call: Any, fmt: str) -> dict[str, Any]:
        """A timed model call on a tracker, encoded as a result message."""
        res, ms = _timed_model(call)
        return self._encode(res, fmt, ms)

    async def _op_add(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        mask, boxes = self._objects_args(h, [b""] + blobs)
        fmt = h.get("fmt", "png")
        tr = (await self._held(h["sid"])).tracker
        new = Annotation(mask, boxes).ids()
        self._admit(tr.frame_hw or (0, 0), len(set(tr.object_ids) | set(new)), tr.crop_hw, sid=h["sid"])
        return await self._control(h, lambda tr: self._result_of(lambda: tr.add_objects(mask=mask, boxes=boxes),
                                                                 fmt))

    async def _op_correct(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        from model.media import read_label_png

        mask = read_label_png(blobs[0])
        fmt = h.get("fmt", "png")
        return await self._control(h, lambda tr: self._result_of(lambda: tr.correct(mask), fmt))

    async def _op_remove(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        oid = int(h["object_id"])

        def remove(tr: Any) -> dict[str, Any]:
            tr.remove_object(oid)
            return {"type": "removed", "object_id": oid, "objects": tr.object_ids}

        return await self._control(h, remove)

    async def _op_delete(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        await self._forget(h["sid"], reason="deleted")
        return {"type": "deleted"}, None

    async def _op_adopt(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        """The api moved a session here (its worker died): restore it now, then read its frames."""
        await self._held(h["sid"])
        return None, None

    async def _op_ping(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        return {"type": "pong"}, None

    # ------------------------------------------------------------------ video jobs
    async def _job_loop(self) -> None:
        while True:
            if self.draining:
                await asyncio.sleep(0.5)
                continue
            try:
                got = await self.b.take_job(self.id, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                obs.ERRORS.labels("broker").inc()
                await asyncio.sleep(0.5)
                continue
            if got is None:
                continue
            entry, jid = got
            self.running_jobs += 1
            try:
                await self._run_job_surviving(jid)
            finally:
                self.running_jobs -= 1
            with contextlib.suppress(*STORE_ERRORS):  # raises only when stopping: then it is taken over
                await self._retry("job", lambda e=entry: self.b.ack_job(e))

    async def _run_job_surviving(self, jid: str) -> None:
        """_run_job; the store failing under it (Redis restarting) runs it again once the store answers
        (a job writes .part files and renames them when done, so a rerun is safe). Nothing ends the loop."""
        while True:
            try:
                return await self._run_job(jid)
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS:
                if self.stopping:
                    return
                await self._store_failed("job")
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001
                log.exception("job loop error", extra={"job_id": jid, "worker_id": self.id})
                return

    async def _run_job(self, jid: str) -> None:
        rec = await self.b.get_job(jid)
        if rec is None:
            return
        loop = asyncio.get_running_loop()
        d = Path(self.s.results_dir) / "jobs" / jid
        threads = await loop.run_in_executor(self.job_pool, torch.get_num_threads)  # the job thread's count
        if not await self.b.update_job(jid, {"state": "running", "worker": self.id, "threads": str(threads),
                                             "updated": f"{time.time():.3f}"}):
            return  # deleted while queued
        log.info("job started", extra={"job_id": jid, "worker_id": self.id})

        def progress(done: int) -> None:
            """Every few frames: progress into the record; a record that is gone (DELETE) cancels the job."""
            total = int(rec.get("frames_total") or 0)
            fields = {"frames_done": str(done), "updated": f"{time.time():.3f}"}
            if total:
                fields["progress"] = f"{min(1.0, done / total):.4f}"
            if not asyncio.run_coroutine_threadsafe(self.b.update_job(jid, fields), loop).result():
                raise jobfiles.JobCancelled(jid)

        try:
            n = await loop.run_in_executor(self.job_pool, self._job_body, jid, rec, progress)
            if not await self.b.update_job(jid, {"state": "done", "progress": "1", "frames_done": str(n),
                                                 "frames_total": str(n), "updated": f"{time.time():.3f}"}):
                raise jobfiles.JobCancelled(jid)  # deleted during its last frames: keep no results
            await asyncio.to_thread(jobfiles.drop_inputs, d)
            log.info("job done", extra={"job_id": jid, "worker_id": self.id, "frames": n})
        except jobfiles.JobCancelled:
            await asyncio.to_thread(jobfiles.remove_job_files, d)
            log.info("job cancelled (deleted)", extra={"job_id": jid, "worker_id": self.id})
        except InputError as e:
            await self.b.update_job(jid, {"state": "failed", "error": jobfiles.scrub_paths(str(e), d),
                                          "updated": f"{time.time():.3f}"})
            await asyncio.to_thread(jobfiles.drop_inputs, d)
            obs.ERRORS.labels("job_input").inc()
        except Exception as e:  # noqa: BLE001
            log.exception("job failed", extra={"job_id": jid, "worker_id": self.id})
            if await self.b.update_job(jid, {"state": "failed", "updated": f"{time.time():.3f}",
                                             "error": jobfiles.scrub_paths(f"internal error: {e!r}", d)}):
                await asyncio.to_thread(jobfiles.drop_inputs, d)
            else:  # deleted meanwhile (its files vanished under the job): leave nothing behind
                await asyncio.to_thread(jobfiles.remove_job_files, d)
            obs.ERRORS.labels("job_internal").inc()

    def _job_body(self, jid: str, rec: dict[str, str], progress: Any) -> int:
        """One video job through the model's video pipeline (as `lwl segment`): masks zip, RLE, overlay."""
        from model.media import FrameSource, encode_label_png, read_label_png
        from model.overlay import OverlayWriter
        from model.video import segment_video

        d = Path(self.s.results_dir) / "jobs" / jid
        init = int(rec.get("init_frame") or 0)
        mask = read_label_png((d / "mask.png").read_bytes()) if (d / "mask.png").exists() else None
        boxes = {int(k): tuple(v) for k, v in json.loads(rec.get("boxes") or "{}").items()} or None
        try:  # the same limits as a session, before any model work
            crop = self._crop(rec.get("crop_size"))
            n = len(Annotation(mask, boxes).ids())
            if n > self.s.max_objects:
                raise OpError(400, "too_many_objects", f"{n} objects: a job tracks at most "
                              f"LWL_MAX_OBJECTS={self.s.max_objects}")
        except OpError as e:
            raise InputError(e.detail) from None
        overlay = OverlayWriter(d / "overlay.mp4.part", fps=float(rec.get("fps") or 25.0))
        frames_rle: list[dict[str, Any]] = []
        n = 0
        clock = [time.perf_counter()]

        def tick(done: int) -> None:  # time per segmented frame, and progress every 5 frames
            now = time.perf_counter()
            obs.LATENCY.labels("model").observe(now - clock[0])
            clock[0] = now
            obs.FRAMES.inc()
            if done % 5 == 0:
                progress(done)

        try:  # the overlay file is closed however the job ends (a cancelled or failed one is removed)
            with zipfile.ZipFile(d / "masks.zip.part", "w", zipfile.ZIP_STORED) as zf:
                for f in segment_video(self.model, FrameSource(d / rec["input"]), {init: Annotation(mask, boxes)},
                                       crop_size=crop, on_progress=tick):
                    zf.writestr(f"{f.index:05d}.png", encode_label_png(f.labels))
                    frames_rle.append({"frame_index": f.index, "objects": [
                        {"id": oid, "score": o.score, "area": o.area,
                         "box": list(o.box) if o.box is not None else None,
                         "segmentation": rle_encode(f.labels == oid)} for oid, o in f.objects.items()]})
                    overlay.write(f.image, f.labels, {k: o.box for k, o in f.objects.items()})
                    n = f.index + 1
        except BaseException:
            with contextlib.suppress(Exception):  # the job's own error is the one to report
                overlay.close()
            raise
        overlay.close()
        (d / "rle.json").write_text(json.dumps({"job_id": jid, "frames": frames_rle}))
        (d / "masks.zip.part").rename(d / "masks.zip")
        (d / "overlay.mp4.part").rename(d / "overlay.mp4")
        return n


# ============================================================================ worker HTTP endpoint


def serve_worker_http(worker: Worker, port: int) -> ThreadingHTTPServer:
    """/metrics and /healthz on LWL_WORKER_METRICS_PORT (a daemon thread; Prometheus scrapes it)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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


__all__ = ["Worker", "OpError", "encode_result", "serve_worker_http", "pack"]

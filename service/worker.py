"""The worker: owns one device, holds per-session trackers, consumes its work stream, runs video jobs.

Frames do not pass through the work stream: the api appends each one to its session's frames stream
(`P:frames:<sid>`), and the worker reads its work stream and the frames streams of the sessions it
holds in one blocking read. Frames join the lane scheduler's queues (service.lanes); each round goes
through one frame path here (`step_round`: decode -> model step -> encode -> publish), for one session
or several. Ops on the work stream go to the session ops (service.session_ops); video jobs to
service.video_jobs; the metrics endpoint is service.worker_http.

A frame costs the worker that read (shared by whatever arrived at once) and one write, a script that
publishes the result and touches the session. Every LWL_SNAPSHOT_EVERY frames, after that frame's
result is out, a second script stores the tracker state and trims the frames it covers; it runs while
the next frame is stepped, so the snapshot (tens of MB) delays no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from model.api import load_models, resolve_threads, set_cpu_threads, step_many
from service import obs
from service.backends import STORE_ERRORS, Backend, Input, id_order
from service.codec import unpack
from service.compute import decode_frame, encode_message, error_message, timed_model
from service.edits import apply_edit, is_edit
from service.errors import ServiceError
from service.lanes import LaneScheduler, Queued
from service.session_ops import Done, HeldSession, SessionOps
from service.settings import Settings
from service.video_jobs import JobRunner
from service.worker_health import WorkerHealth

log = logging.getLogger("lwl.worker")
T = TypeVar("T")
Work = tuple[HeldSession, str, int, bytes, str]  # a frame to compute: session, stream id, seq, image, format


# ops a worker hands to its SessionOps as they are: op name = method name
SESSION_OPS = frozenset({"create", "add", "correct", "remove", "delete", "adopt", "restore", "state"})


class Worker:
    """One device, many sessions; same code for `lwl worker` (Redis) and `lwl serve` (in-process)."""

    def __init__(self, settings: Settings, backend: Backend, model: Any = None, worker_id: str | None = None,
                 models: dict[str, Any] | None = None) -> None:
        self.s = settings
        self.b = backend
        # the models served by name, the default first (model.api.load_models); `model` alone: just that one
        self.models: dict[str, Any] = models or ({getattr(model, "name", ""): model} if model is not None else {})
        self.model = next(iter(self.models.values())) if self.models else None  # the default
        self.id = worker_id or settings.resolved_worker_id
        self.sessions: dict[str, HeldSession] = {}
        # torch's CPU thread count is per calling thread (an OpenMP pool each): resolved once here (the
        # cores this process may use, unless LWL_TORCH_THREADS says otherwise), applied by each executor
        self.threads = resolve_threads(settings.torch_threads)
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="lwl-compute", initializer=self._torch_threads)
        self.job_pool = ThreadPoolExecutor(1, thread_name_prefix="lwl-job", initializer=self._torch_threads)
        self.lanes: ThreadPoolExecutor | None = None  # CPU: frames of waiting sessions, stepped side by side
        self.scheduler = self._scheduler("cpu")
        self.ops = SessionOps(self)
        self.jobs = JobRunner(self)
        self.health = WorkerHealth(self)
        self.draining = False
        self.stopping = False
        self.stopped = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.work_task: asyncio.Task | None = None
        self.receiving = False  # the work loop waits in its blocking read (safe to cancel there)
        self.last_id = "0"
        self.started = time.time()
        self.device = "cpu"

    @property
    def lane_count(self) -> int:
        return self.scheduler.lane_count

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the model (in a thread) and start the loops."""
        if self.model is None:
            self.models = await asyncio.get_running_loop().run_in_executor(self.compute, self._load_models)
            self.model = next(iter(self.models.values()))
        self.device = str(getattr(self.model, "device", "cpu"))
        await self.run(lambda: None)  # the compute thread has started: its thread count is known
        self.scheduler = self._scheduler(self.device)
        if self.scheduler.cpu:
            log.info("cpu lanes", extra={"worker_id": self.id, "lanes": self.lane_count})
            self.lanes = ThreadPoolExecutor(self.lane_count, thread_name_prefix="lwl-lane")
        await self.health.retry("start", lambda: self.b.drop_work(self.id))  # waits for the store if it is down
        await self.health.heartbeat()
        self.work_task = asyncio.create_task(self._work_loop())
        self.tasks.append(self.work_task)
        for coro in (self.health.heartbeat_loop(), self.health.evict_loop(), self.jobs.loop()):
            self.tasks.append(asyncio.create_task(coro))
        log.info("worker started", extra={"worker_id": self.id, "device": self.device,
                                          "model": self.model.name, "threads": self.threads})

    def _scheduler(self, device: str) -> LaneScheduler:
        """On a CPU, sessions with frames waiting are stepped by lanes side by side (docs/DEPLOY.md
        "Sizing"); on a GPU the batch is the way to fill the device: one lane, no lane threads."""
        return LaneScheduler(self.sessions, self.s.cpu_lanes or self.threads, device.startswith("cpu"),
                             self.threads, self.s.max_batch, lambda: self.stopping or self.draining,
                             lambda what: self.health.store_failed(what))

    def _torch_threads(self) -> None:
        """Executor thread start: the resolved thread count for the torch work of this thread. Set in the
        main thread it would not reach here (torch keeps the count per thread)."""
        try:  # an initializer that raises would break the executor for good
            n = set_cpu_threads(self.threads)
            log.info("torch cpu threads", extra={"worker_id": self.id, "threads": n,
                                                 "executor": threading.current_thread().name})
        except Exception:  # noqa: BLE001 - torch's default count is slower, not wrong
            log.exception("could not set torch cpu threads", extra={"worker_id": self.id})

    def _load_models(self) -> dict[str, Any]:
        dev = None if self.s.device in ("", "auto") else self.s.device
        return load_models(self.s.weights or None, dev, exact=self.s.exact, threads=None)

    def model_for(self, name: str | None) -> Any:
        """The model a session or job asked for by name (a bundled profile, or the weights' name); the
        default when it names none."""
        if not name:
            return self.model
        if name not in self.models:
            raise ServiceError(400, "unknown_model", f"model {name!r} is not served here (this worker serves "
                               f"{', '.join(self.models)})")
        return self.models[name]

    async def drain(self) -> None:
        """SIGTERM: stop taking sessions and jobs, finish the frames or op at hand, hand every held session
        over to another worker at once (idle ones included: waiting for sessions to end would hold a
        rolling deploy for their whole life), wait for a running job (at most LWL_DRAIN_TIMEOUT_S), stop."""
        if self.draining:
            return
        self.draining = True  # the heartbeat says so (no new sessions) and the work loop ends
        await self.scheduler.wake()  # lanes take no new frames; the steps in progress finish
        t0 = time.monotonic()
        log.info("draining", extra={"worker_id": self.id, "sessions": len(self.sessions)})
        await self.health.heartbeat()
        if self.work_task is not None:
            if self.receiving:  # waiting for input, nothing half done: no need to wait for the read
                self.work_task.cancel()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.work_task), self.s.drain_timeout_s)
        handed = await self.ops.hand_over_all()
        deadline = time.monotonic() + self.s.drain_timeout_s
        while self.jobs.running and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await self.stop()
        log.info("drained", extra={"worker_id": self.id, "handed_over": handed,
                                   "seconds": round(time.monotonic() - t0, 3)})

    async def stop(self) -> None:
        """Finish the op at hand, snapshot held sessions (so another worker can resume them) and stop."""
        self.stopping = True
        await self.scheduler.wake()
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
                await self.ops.snapshot(sid)
        self.sessions.clear()
        with contextlib.suppress(Exception):
            await self.b.remove_worker(self.id)
        for pool in (self.compute, self.job_pool, self.lanes):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self.stopped.set()
        log.info("worker stopped", extra={"worker_id": self.id})

    # ------------------------------------------------------------------ what the heartbeat says
    def info(self) -> dict[str, Any]:
        """What the api needs to place sessions: capacity, memory, model, draining."""
        n = len(self.sessions)
        return {
            "id": self.id, "sessions": n, "max_sessions": self.s.max_sessions_per_worker,
            "free": 0 if self.draining else max(0, self.s.max_sessions_per_worker - n),
            "memory_bytes": obs.device_memory_bytes(), "device": self.device,
            "model": getattr(self.model, "name", ""), "weights": getattr(self.model, "weights_hash", ""),
            "draining": self.draining,
            "models": [{"name": getattr(m, "name", n), "weights": getattr(m, "weights_hash", ""),
                        "box_init": bool(getattr(m, "has_box_encoder", False)),
                        "crop_size": "x".join(str(v) for v in getattr(m, "default_crop_size", ()))}
                       for n, m in self.models.items()],
            "box_init": bool(getattr(self.model, "has_box_encoder", False)),
            "crop_size": "x".join(str(v) for v in getattr(self.model, "default_crop_size", ())),
            "jobs_running": self.jobs.running, "started": self.started, "ts": time.time(),
            "state_bytes": self.ops.held_state_bytes(), "state_budget_bytes": self.s.worker_state_bytes,
            "store_bytes": self.ops.store_bytes(),
            "max_crop_pixels": self.ops.max_crop_pixels, "max_objects": self.s.max_objects,
            "threads": self.threads, "exact": bool(getattr(self.model, "exact", False)),
        }

    # ------------------------------------------------------------------ work loop
    async def _work_loop(self) -> None:
        """Read, queue, repeat until stopping or draining, while the lanes step what is queued. Nothing
        ends it: a store error backs off and retries (results are retried where they are written), any
        other error is logged. On its way out it waits for the steps in progress (none is cut in half)."""
        lanes = self.scheduler.start(self.step_round)
        try:
            while not (self.stopping or self.draining):
                try:
                    self.receiving = True
                    try:
                        frames_after = {sid: hs.read_after for sid, hs in self.sessions.items()}
                        batch = await self.b.read_inputs(self.id, self.last_id, frames_after, 1.0)
                    finally:
                        self.receiving = False
                    await self._handle_batch(batch)
                except asyncio.CancelledError:
                    raise
                except STORE_ERRORS:
                    await self.health.store_failed("work")
                    await asyncio.sleep(0.5)
                except Exception:  # noqa: BLE001 - one bad read or op must not end the loop
                    obs.ERRORS.labels("worker").inc()
                    log.exception("work loop error", extra={"worker_id": self.id})
                    await asyncio.sleep(0.5)
        finally:
            await asyncio.shield(self.scheduler.close(lanes))

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
            self.scheduler.add(Queued(m.sid, hs, m.eid, *unpack(m.header, m.body)))
        self.scheduler.count()
        await self.scheduler.wake()
        if ops:
            await self.b.trim_work(self.id, self.last_id)

    async def _before_op(self, h: dict[str, Any]) -> None:
        """An op on a session waits for that session's frames read before it. An op on no session, or
        `adopt` of a session held here (the api asks that of a live worker whenever a stream has waited a
        second for an answer, a no-op then), waits for nothing: under load every stream sends it, and
        waiting for the queue to empty each time left the lanes starved."""
        sid = h.get("sid", "")
        if sid and not (h.get("op") == "adopt" and sid in self.sessions):
            await self.scheduler.before_op(sid)

    # ------------------------------------------------------------------ ops on the work stream
    async def _handle(self, h: dict[str, Any], blobs: list[bytes]) -> None:
        """One op: a SessionOps method named in SESSION_OPS, or the worker's own `_op_<name>`; its answer
        and session writes (SessionOps.reply)."""
        op = h.get("op")
        commit = None
        try:
            fn = getattr(self.ops, op) if op in SESSION_OPS else getattr(self, f"_op_{op}", None)
            if fn is None:
                raise ValueError(f"unknown op {op!r}")
            out, commit = await fn(h, blobs)
        except Exception as e:  # noqa: BLE001 - one bad op must not kill the worker
            out = error_message(e, h.get("sid", ""), str(op))
        await self.ops.reply(h, out, commit)

    async def _op_ping(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        return {"type": "pong"}, None

    # ------------------------------------------------------------------ the frame path
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the compute thread (every model call of ops; frames of a lone or GPU lane)."""
        return await asyncio.get_running_loop().run_in_executor(self.compute, fn, *args)

    async def step_round(self, group: list[Queued], threads: int = 0) -> None:
        """One frame each of one or several sessions: computed together on the compute thread (threads=0)
        or on a lane with that many torch threads, then each answer published and each session
        snapshotted when due. A frame applied already (resent) is skipped: its answer went out then."""
        todo = []
        for q in group:
            q.hs.last_active = time.monotonic()
            if int(q.header["seq"]) in q.hs.recent:
                q.hs.frame_id = q.eid
            else:
                todo.append(q)
        if not todo:
            return
        frames = [q for q in todo if not is_edit(q.header)]
        work = [(q.hs, q.eid, int(q.header["seq"]), q.blobs[0], q.header.get("fmt", "png")) for q in frames]
        outs: dict[int, dict[str, Any]] = {}
        if work and threads:
            computed = await asyncio.get_running_loop().run_in_executor(self.lanes, self.compute_frames, work, threads)
        else:
            computed = await self.run(self.compute_frames, work) if work else []
        outs.update(zip(map(id, frames), computed, strict=True))
        for q in todo:  # an edit: alone on its session in this round, so in order with its frames
            if is_edit(q.header):
                outs[id(q)] = await self.run(apply_edit, self.ops, q.sid, q.hs, q.eid, int(q.header["seq"]),
                                             q.header, q.blobs)
        for q in todo:
            h = q.header
            await self.ops.publish_frame(q.sid, q.hs, self.ops.answer(outs[id(q)], q.sid, int(h["seq"]),
                                                                      h.get("req", ""), h.get("id")))
        for q in todo:
            await self.ops.snapshot_if_due(q.sid, q.hs)

    def compute_frames(self, work: list[Work], threads: int = 0) -> list[dict[str, Any]]:
        """Compute thread or a lane (`threads` torch threads): decode each frame, step the good ones
        together (model.api.step_many), encode each. A frame that fails alone (a bad image, a wrong size)
        is answered with its error; the others go on. Each frame counts as applied either way, so a
        replay after failover does the same."""
        if threads:
            set_cpu_threads(threads)  # per calling thread: lanes differ in count with the sessions waiting
        frames: dict[int, np.ndarray] = {}
        outs: dict[int, dict[str, Any]] = {}
        for k, (_, _, _, image, _) in enumerate(work):
            try:
                frames[k] = self._decode(image)
            except Exception as e:  # noqa: BLE001 - this frame only
                outs[k] = error_message(e, sid="", op="frame")
        good = sorted(frames)
        if good:
            try:
                results, ms = timed_model(lambda: step_many([(work[k][0].tracker, frames[k]) for k in good],
                                                            max_batch=self.s.max_batch))
                if threads or len(work) > 1:  # a lane's or a group's step (a lone frame is no batch)
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
        """One session's frame alone (after a batch failed): its result or its own error."""
        try:
            res, ms = timed_model(lambda: hs.tracker.step(frame))
            obs.FRAMES.inc()
            return self._encode(res, fmt, ms)
        except Exception as e:  # noqa: BLE001
            return error_message(e, sid="", op="frame")

    def _decode(self, image: bytes) -> np.ndarray:
        """The frame's only full decode (service.compute.decode_frame)."""
        return decode_frame(image, self.s.max_frame_pixels)

    _encode = staticmethod(encode_message)  # FrameResult -> result message with the step's torch threads


__all__ = ["HeldSession", "Worker"]

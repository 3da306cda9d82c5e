"""The worker: owns one device, holds per-session trackers, consumes its work stream, runs video jobs.

Frames do not pass through the work stream: the api appends each one to its session's frames stream
(`P:frames:<sid>`), and the worker reads its work stream and the frames streams of the sessions it
holds in one blocking read. A frame costs the worker that read (shared by whatever arrived at once)
and one write, a script that publishes the result, touches the session and, every
LWL_SNAPSHOT_EVERY frames, stores the tracker state and trims the frames it covers.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import InputError
from model.tracker import step_many
from service import obs
from service.backends import Answer, Commit, Input, MemoryBackend, RedisBackend, id_order
from service.codec import b64, binary_png, frame_bytes, pack, parse_frame_bytes, rle_encode, unpack
from service.settings import Settings, parse_crop

log = logging.getLogger("lwl.worker")


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

    def applied(self, seq: int, frame_id: str) -> None:
        """Remember a frame as applied (bounded memory) and where the frames stream continues."""
        self.last_seq = max(self.last_seq, seq)
        self.recent.append(seq)
        del self.recent[:-256]
        self.frame_id = frame_id
        self.frames_since_snapshot += 1

    def snapshot(self) -> bytes:
        """The tracker state with what a restoring worker needs to skip and replay the right frames."""
        head = {"seq": self.last_seq, "recent": self.recent, "frame_id": self.frame_id}
        return frame_bytes(head, self.tracker.export_state())


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
    elif isinstance(e, InputError):
        out = {"type": "error", "status": 400, "code": "bad_input", "detail": str(e)}
    else:
        log.error("op failed", exc_info=e, extra={"session_id": sid, "op": op})
        out = {"type": "error", "status": 500, "code": "internal", "detail": repr(e)}
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
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="lwl-compute")
        self.job_pool = ThreadPoolExecutor(1, thread_name_prefix="lwl-job")
        self.draining = False
        self.stopping = False
        self.stopped = asyncio.Event()
        self.running_jobs = 0
        self.tasks: list[asyncio.Task] = []
        self.work_task: asyncio.Task | None = None
        self.last_id = "0"
        self.started = time.time()
        self.device = "cpu"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the model (in a thread) and start the loops."""
        if self.model is None:
            self.model = await asyncio.get_running_loop().run_in_executor(self.compute, self._load_model)
        self.device = str(getattr(self.model, "device", "cpu"))
        await self.b.drop_work(self.id)
        await self._heartbeat_once()
        self.work_task = asyncio.create_task(self._work_loop())
        self.tasks.append(self.work_task)
        for coro in (self._heartbeat_loop(), self._evict_loop(), self._job_loop()):
            self.tasks.append(asyncio.create_task(coro))
        log.info("worker started", extra={"worker_id": self.id, "device": self.device,
                                          "model": self.model.name})

    def _load_model(self) -> Any:
        from model.api import load_model
        from model.threads import set_cpu_threads

        threads = set_cpu_threads(self.s.torch_threads)
        log.info("torch cpu threads", extra={"worker_id": self.id, "threads": threads})
        dev = None if self.s.device in ("", "auto") else self.s.device
        return load_model(weights=self.s.weights or None, device=dev)

    async def drain(self) -> None:
        """SIGTERM: stop taking sessions/jobs, let clients finish (bounded), snapshot, leave the registry."""
        if self.draining:
            return
        self.draining = True
        log.info("draining", extra={"worker_id": self.id, "sessions": len(self.sessions)})
        await self._heartbeat_once()
        deadline = time.monotonic() + self.s.drain_timeout_s
        while (self.sessions or self.running_jobs) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await self.stop()

    async def stop(self) -> None:
        """Finish the op at hand, snapshot held sessions (so another worker can resume them) and stop."""
        self.stopping = True
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
        }

    async def _heartbeat_once(self) -> None:
        info = self.info()
        await self.b.heartbeat(self.id, info, ttl_s=3 * self.s.heartbeat_s)
        obs.ACTIVE_SESSIONS.set(info["sessions"])
        obs.DEVICE_MEMORY.set(info["memory_bytes"])

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._heartbeat_once()
            except Exception:  # noqa: BLE001 - keep beating through transient Redis errors
                obs.ERRORS.labels("heartbeat").inc()
                log.exception("heartbeat failed", extra={"worker_id": self.id})
            await asyncio.sleep(self.s.heartbeat_s)

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.s.session_ttl_s / 4))
            now = time.monotonic()
            for sid, hs in list(self.sessions.items()):
                if now - hs.last_active > self.s.session_ttl_s:
                    await self._forget(sid, reason="ttl")

    async def _forget(self, sid: str, reason: str) -> None:
        """Drop a session's tracker and all its stored data."""
        self.sessions.pop(sid, None)
        await self.b.delete_session(sid)
        await self.b.drop_results(sid)
        log.info("session ended", extra={"session_id": sid, "worker_id": self.id, "reason": reason})
        await self._heartbeat_once()

    # ------------------------------------------------------------------ work loop
    async def _work_loop(self) -> None:
        while not self.stopping:
            try:
                batch = await self._receive()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                obs.ERRORS.labels("broker").inc()
                log.exception("reading work failed", extra={"worker_id": self.id})
                await asyncio.sleep(0.5)
                continue
            await self._handle_batch(batch)

    async def _receive(self) -> list[Input]:
        """Ops on this worker's work stream and frames of the sessions it holds: one blocking read."""
        frames_after = {sid: hs.frame_id for sid, hs in self.sessions.items()}
        return await self.b.read_inputs(self.id, self.last_id, frames_after, 1.0)

    async def _handle_batch(self, batch: list[Input]) -> None:
        """Everything one read returned, in arrival order. Frames of different sessions that arrive
        together are stepped together (up to LWL_MAX_BATCH): nothing waits for a batch to fill, a
        session's frames stay in order, and an op is handled only after the frames before it."""
        ops = 0
        group: dict[str, tuple[HeldSession, str, dict[str, Any], list[bytes]]] = {}
        for i, m in enumerate(batch):
            if self.stopping:
                break
            obs.QUEUE_DEPTH.set(len(batch) - i)
            if not m.sid:
                await self._frames(group)
                self.last_id = m.eid
                ops += 1
                await self._handle(*unpack(m.header, m.body))
                continue
            hs = self.sessions.get(m.sid)
            if hs is None or id_order(m.eid) <= id_order(hs.frame_id):
                continue
            if m.sid in group or len(group) >= self.s.max_batch:
                await self._frames(group)
            group[m.sid] = (hs, m.eid, *unpack(m.header, m.body))
        await self._frames(group)
        obs.QUEUE_DEPTH.set(0)
        if ops:
            await self.b.trim_work(self.id, self.last_id)

    async def _frames(self, group: dict[str, tuple[HeldSession, str, dict[str, Any], list[bytes]]]) -> None:
        """One frame each of several sessions: stepped together (model.tracker.step_many), published each."""
        items = [(sid, hs, eid, h, blobs) for sid, (hs, eid, h, blobs) in group.items()]
        group.clear()
        if len(items) == 1:
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
        outs = await self._run(self._compute_frames, [(hs, eid, int(h["seq"]), blobs[0], h.get("fmt", "png"))
                                                      for _, hs, eid, h, blobs in todo])
        for (sid, hs, _, h, _), (out, snap) in zip(todo, outs, strict=True):
            await self._publish_frame(sid, hs, self._answer(out, sid, int(h["seq"]), h.get("req", "")), snap)

    def _compute_frames(self, work: list[tuple[HeldSession, str, int, bytes, str]]
                        ) -> list[tuple[dict[str, Any], bytes | None]]:
        """Compute thread, several sessions: decode each, step the good ones together, encode each. A frame
        that fails alone (a bad image, a wrong size) is answered with its error; the others go on."""
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
        done = []
        for k, (hs, eid, seq, _, _) in enumerate(work):
            hs.applied(seq, eid)
            due = hs.frames_since_snapshot >= self.s.snapshot_every
            done.append((outs[k], self._take_snapshot(hs) if due else None))
        return done

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
        out, snap = await self._run(self._compute_frame, hs, eid, seq, blobs[0], h.get("fmt", "png"), True)
        await self._publish_frame(sid, hs, self._answer(out, sid, seq, req), snap)

    def _compute_frame(self, hs: HeldSession, eid: str, seq: int, image: bytes, fmt: str,
                       may_snapshot: bool) -> tuple[dict[str, Any], bytes | None]:
        """Compute thread: the frame's result message (or error message), and a snapshot when one is due.
        The frame counts as applied either way, so a replay after failover does the same."""
        try:
            frame = self._decode(image)
            res, ms = self._model_step(hs.tracker, frame)
            out = self._encode(res, fmt, ms)
            obs.FRAMES.inc()
        except Exception as e:  # noqa: BLE001 - one bad frame must not end the session
            out = _error_message(e, sid="", op="frame")
        hs.applied(seq, eid)
        due = may_snapshot and hs.frames_since_snapshot >= self.s.snapshot_every
        return out, self._take_snapshot(hs) if due else None

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
        obs.LATENCY.labels("encode").observe(time.perf_counter() - t)
        return out

    def _take_snapshot(self, hs: HeldSession) -> bytes:
        hs.frames_since_snapshot = 0
        return hs.snapshot()

    def _answer(self, out: dict[str, Any], sid: str, seq: int | None, req: str | None) -> Answer:
        """The message's final JSON text, written once: the api relays these bytes."""
        out.setdefault("session_id", sid)
        out["worker_id"] = self.id
        if seq:
            out["seq"] = seq
        body = json.dumps(out, separators=(",", ":")).encode()
        return Answer(body, str(out.get("type", "")), int(seq or 0), req or "")

    async def _publish_frame(self, sid: str, hs: HeldSession, answer: Answer, snap: bytes | None) -> None:
        """The frame's one write: result (or reply), session touch, snapshot when due."""
        if not await self.b.commit(self._commit(sid, hs, [answer], snap)):
            self._lost(sid)

    def _commit(self, sid: str, hs: HeldSession, answers: list[Answer], snap: bytes | None = None,
                **extra: str) -> Commit:
        fields = {"last_active": f"{time.time():.3f}", "frames": str(hs.tracker.frame_index + 1),
                  "objects": json.dumps(hs.tracker.object_ids), "last_seq": str(hs.last_seq), **extra}
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
            await self.b.deliver(sid, [answer])
            return
        commit.answers.append(answer)
        if not await self.b.commit(commit):  # the answer went nowhere: say why instead
            self._lost(sid)
            err = {"type": "error", "status": 503, "code": "worker_lost",
                   "detail": f"session {sid} moved to another worker or expired; retry"}
            await self.b.deliver(sid, [self._answer(err, sid, h.get("seq"), req)])

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
        return await self._restore(sid, snap)

    async def _restore(self, sid: str, snap: bytes) -> HeldSession:
        """Snapshot, then the frames after it (the replay log); results the client has not seen go out."""
        sh, sblobs = parse_frame_bytes(snap)
        tracker = await self._run(self.model.restore_tracker, sblobs[0])
        hs = HeldSession(tracker=tracker, last_seq=int(sh["seq"]), recent=list(sh.get("recent", [])),
                         frame_id=sh.get("frame_id", "0"))
        last = await self.b.last_result(sid)
        published = last.seq if last else 0
        answers, replayed = [], 0
        for eid, hraw, body in await self.b.read_frames(sid, hs.frame_id):
            h, blobs = unpack(hraw, body)
            seq = int(h["seq"])
            if seq in hs.recent:
                hs.frame_id = eid
                continue
            out, _ = await self._run(self._compute_frame, hs, eid, seq, blobs[0], h.get("fmt", "png"), False)
            replayed += 1
            if seq > published or h.get("req"):
                answers.append(self._answer(out, sid, seq, h.get("req")))
        self.sessions[sid] = hs
        if not await self.b.commit(self._commit(sid, hs, answers, state="active")):
            self._lost(sid)
            raise OpError(503, "worker_lost", f"session {sid} moved to another worker or expired; retry")
        log.info("session restored", extra={"session_id": sid, "worker_id": self.id, "replayed": replayed})
        await self._heartbeat_once()
        return hs

    async def _snapshot(self, sid: str) -> None:
        hs = self.sessions[sid]
        snap = await self._run(self._take_snapshot, hs)
        await self.b.commit(self._commit(sid, hs, [], snap))

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
        crop = parse_crop(h.get("crop_size")) or self.s.crop_tuple()
        fmt = h.get("fmt", "png")

        def create() -> tuple[HeldSession, dict[str, Any], bytes]:
            frame = self._decode(blobs[0])
            mask, boxes = self._objects_args(h, blobs)
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

    async def _control(self, h: dict[str, Any], call: Any) -> Done:
        """add/correct/remove: the call on the tracker, then a snapshot (the replay log holds frames only)."""
        sid = h["sid"]
        hs = await self._held(sid)

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
                await self._run_job(jid)
            finally:
                self.running_jobs -= 1
                await self.b.ack_job(entry)

    async def _run_job(self, jid: str) -> None:
        rec = await self.b.get_job(jid)
        if rec is None:
            return
        loop = asyncio.get_running_loop()
        await self.b.update_job(jid, {"state": "running", "worker": self.id, "updated": f"{time.time():.3f}"})
        log.info("job started", extra={"job_id": jid, "worker_id": self.id})

        def progress(done: int) -> None:
            total = int(rec.get("frames_total") or 0)
            fields = {"frames_done": str(done), "updated": f"{time.time():.3f}"}
            if total:
                fields["progress"] = f"{min(1.0, done / total):.4f}"
            asyncio.run_coroutine_threadsafe(self.b.update_job(jid, fields), loop).result()

        try:
            n = await loop.run_in_executor(self.job_pool, self._job_body, jid, rec, progress)
            await self.b.update_job(jid, {"state": "done", "progress": "1", "frames_done": str(n),
                                          "frames_total": str(n), "updated": f"{time.time():.3f}"})
            log.info("job done", extra={"job_id": jid, "worker_id": self.id, "frames": n})
        except InputError as e:
            await self.b.update_job(jid, {"state": "failed", "error": str(e),
                                          "updated": f"{time.time():.3f}"})
            obs.ERRORS.labels("job_input").inc()
        except Exception as e:  # noqa: BLE001
            log.exception("job failed", extra={"job_id": jid, "worker_id": self.id})
            await self.b.update_job(jid, {"state": "failed", "error": f"internal error: {e!r}",
                                          "updated": f"{time.time():.3f}"})
            obs.ERRORS.labels("job_internal").inc()

    def _job_body(self, jid: str, rec: dict[str, str], progress: Any) -> int:
        """One video job through the model's video pipeline (as `lwl segment`): masks zip, RLE, overlay."""
        from model.media import FrameSource, encode_label_png, read_label_png
        from model.overlay import OverlayWriter
        from model.video import Annotation, segment_video

        d = Path(self.s.results_dir) / "jobs" / jid
        init = int(rec.get("init_frame") or 0)
        mask = read_label_png((d / "mask.png").read_bytes()) if (d / "mask.png").exists() else None
        boxes = {int(k): tuple(v) for k, v in json.loads(rec.get("boxes") or "{}").items()} or None
        crop = parse_crop(rec.get("crop_size")) or self.s.crop_tuple()
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

        with zipfile.ZipFile(d / "masks.zip.part", "w", zipfile.ZIP_STORED) as zf:
            for f in segment_video(self.model, FrameSource(d / rec["input"]), {init: Annotation(mask, boxes)},
                                   crop_size=crop, on_progress=tick):
                zf.writestr(f"{f.index:05d}.png", encode_label_png(f.labels))
                frames_rle.append({"frame_index": f.index, "objects": [
                    {"id": oid, "score": o.score, "area": o.area, "box": list(o.box) if o.box is not None else None,
                     "segmentation": rle_encode(f.labels == oid)} for oid, o in f.objects.items()]})
                overlay.write(f.image, f.labels, {k: o.box for k, o in f.objects.items()})
                n = f.index + 1
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

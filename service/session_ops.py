"""A worker's sessions: what it holds of each (`HeldSession`), the ops on them (create, add, correct,
remove, delete, adopt), admission, and snapshots with restore.

Recovery: the frames stream after the last snapshot is the replay log. A worker that is handed a
session it does not hold (`adopt`, or any op for it) restores the snapshot, steps the frames after
it, publishes the results the client has not seen, and carries on reading the stream. Every write
checks that the session still names this worker, so a worker that lost a session stops touching it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from model.api import object_ids, read_label_png
from model.errors import InputError
from service import obs
from service.backends import STORE_ERRORS, Answer, Commit, id_order
from service.checks import check_count, check_state
from service.codec import frame_bytes, pack, parse_frame_bytes, unpack
from service.compute import decode_frame, encode_message, result_of, timed_model
from service.edits import apply_edit, is_edit
from service.errors import ServiceError
from service.settings import parse_crop

if TYPE_CHECKING:
    from service.worker import Worker

log = logging.getLogger("lwl.worker")


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

    def take_snapshot(self) -> bytes:
        """Compute thread: the snapshot, counted as the session's store bytes from now on (the commit that
        writes it trims the replay log up to here)."""
        self.frames_since_snapshot = 0
        snap = self.snapshot()
        self.store_bytes = [len(snap), 0]
        return snap

    async def settled(self) -> None:
        """Wait for the snapshot write in flight (a newer state is about to be written or read)."""
        task, self.snapshot_write = self.snapshot_write, None
        if task is not None and not task.done():
            await asyncio.wait({task})  # never raises the write's outcome; a cancellation of ours still does


Done = tuple[dict[str, Any] | None, Commit | None]  # an op's message to answer, and the session writes with it


class SessionOps:
    """The ops on a worker's sessions and their writes to the store. Every write is a `Commit` fenced on
    the session naming this worker."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.snapshot_writes: set[asyncio.Task] = set()  # background snapshot writes in flight

    # ------------------------------------------------------------------ writes
    def answer(self, out: dict[str, Any], sid: str, seq: int | None, req: str | None, cid: Any = None) -> Answer:
        """The message's final JSON text, written once: the api relays these bytes. `cid`: the id a
        WebSocket client gave the frame, kept in the frame's header so a resumed stream still has it."""
        out.setdefault("session_id", sid)
        out["worker_id"] = self.w.id
        if seq:
            out["seq"] = seq
        if cid is not None:
            out["id"] = cid
        body = json.dumps(out, separators=(",", ":")).encode()
        return Answer(body, str(out.get("type", "")), int(seq or 0), req or "")

    def commit(self, sid: str, hs: HeldSession, answers: list[Answer], snap: bytes | None = None,
               touch: bool = True, **extra: str) -> Commit:
        """The writes of one op. `touch=False` (a background snapshot) leaves the session's fields alone:
        landing after the next frame's commit, it must not write older values over newer ones."""
        fields = {"last_active": f"{time.time():.3f}", "frames": str(hs.tracker.frame_index + 1),
                  "objects": json.dumps(hs.tracker.object_ids), "last_seq": str(hs.last_seq),
                  **extra} if touch else {}
        return Commit(sid, self.w.id, self.w.s.session_ttl_s, fields, answers, snap,
                      hs.frame_id if snap is not None and hs.frame_id != "0" else "")

    async def reply(self, h: dict[str, Any], out: dict[str, Any] | None, commit: Commit | None) -> None:
        """An op's answer, with its session writes when it has any; an answer that went nowhere (the
        session moved or expired meanwhile) becomes a worker_lost error."""
        if out is None:
            return
        sid, req = h.get("sid", ""), h.get("req")
        answer = self.answer(out, sid, h.get("seq"), req)
        if commit is None:
            await self.w.health.retry("reply", lambda: self.w.b.deliver(sid, [answer]))
            return
        commit.answers.append(answer)
        if not await self.w.health.retry("reply", lambda: self.w.b.commit(commit)):
            self.lost(sid)
            err = {"type": "error", "status": 503, "code": "worker_lost",
                   "detail": f"session {sid} moved to another worker or expired; retry"}
            lost = self.answer(err, sid, h.get("seq"), req)
            await self.w.health.retry("reply", lambda: self.w.b.deliver(sid, [lost]))

    async def publish_frame(self, sid: str, hs: HeldSession, answer: Answer) -> None:
        """The frame's one write: result (or reply) and session touch (retried while the store is down: a
        retry that writes the result twice is harmless, the relay forwards a seq once)."""
        commit = self.commit(sid, hs, [answer])
        if not await self.w.health.retry("result", lambda: self.w.b.commit(commit)):
            self.lost(sid)

    def lost(self, sid: str) -> None:
        """The session expired or another worker owns it now: forget the tracker, touch nothing."""
        if self.w.sessions.pop(sid, None) is not None:
            log.info("session lost", extra={"session_id": sid, "worker_id": self.w.id})

    async def forget(self, sid: str, reason: str) -> None:
        """Drop a session's tracker and all its stored data."""
        hs = self.w.sessions.pop(sid, None)
        if hs is not None:
            await hs.settled()  # a snapshot landing after the delete would outlive the session
        await self.w.b.delete_session(sid)
        await self.w.b.drop_results(sid)
        log.info("session ended", extra={"session_id": sid, "worker_id": self.w.id, "reason": reason})
        await self.w.health.heartbeat()

    # ------------------------------------------------------------------ snapshots
    async def snapshot_if_due(self, sid: str, hs: HeldSession) -> None:
        """Every LWL_SNAPSHOT_EVERY frames, after the frame's answer is out: serialise the state (compute
        thread, before the next step changes it) and store it in the background, while the next frame
        is stepped. One write in flight per session, so snapshots land in order. If the worker dies
        before it lands, the previous snapshot and the longer replay log restore the same state."""
        if hs.frames_since_snapshot < self.w.s.snapshot_every or self.w.sessions.get(sid) is not hs:
            return
        await hs.settled()
        snap = await self.w.run(hs.take_snapshot)
        commit = self.commit(sid, hs, [], snap, touch=False)
        hs.snapshot_write = task = asyncio.create_task(self._write_snapshot(sid, commit))
        self.snapshot_writes.add(task)  # held here too: a session dropped meanwhile must not drop its task
        task.add_done_callback(self.snapshot_writes.discard)

    async def _write_snapshot(self, sid: str, commit: Commit) -> None:
        try:
            if not await self.w.health.retry("snapshot", lambda: self.w.b.commit(commit)):
                self.lost(sid)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the replay log still covers these frames
            obs.ERRORS.labels("worker").inc()
            log.exception("snapshot write failed", extra={"session_id": sid, "worker_id": self.w.id})

    async def snapshot(self, sid: str) -> None:
        """Store a held session's state now (the worker is stopping), retried while the store is down."""
        hs = self.w.sessions[sid]
        await hs.settled()
        snap = await self.w.run(hs.take_snapshot)
        commit = self.commit(sid, hs, [], snap)
        await self.w.health.retry("snapshot", lambda: self.w.b.commit(commit))

    async def held(self, sid: str) -> HeldSession:
        """The session's tracker, restoring it from snapshot + replay when this worker does not hold it."""
        hs = self.w.sessions.get(sid)
        if hs is not None:
            hs.last_active = time.monotonic()
            return hs
        meta = await self.w.b.get_session(sid)
        snap = await self.w.b.get_snapshot(sid)
        if meta is None or snap is None:
            raise ServiceError(404, "unknown_session", f"unknown session {sid} (deleted or expired)")
        return await self._restore(sid, snap, meta)

    async def _restore(self, sid: str, snap: bytes, meta: dict[str, str]) -> HeldSession:
        """Snapshot, then the frames after it (the replay log); results the client has not seen go out.
        A session moved here (its worker died or drained) counts in lwl_failover_seconds: from the old
        worker's last heartbeat (or its hand-over) to this commit, after which the session is served."""
        sh, sblobs = parse_frame_bytes(snap)
        tracker = await self.w.run(self.w.model_for(meta.get("model")).restore_tracker, sblobs[0])
        hs = HeldSession(tracker=tracker, last_seq=int(sh["seq"]), recent=list(sh.get("recent", [])),
                         frame_id=sh.get("frame_id", "0"), store_bytes=[len(snap), 0])
        answers, replayed = await self._replay(sid, hs)
        self.w.sessions[sid] = hs
        moved = float(meta.get("moved_since") or 0)
        commit = self.commit(sid, hs, answers, state="active", **({"moved_since": ""} if moved else {}))
        if not await self.w.health.retry("restore", lambda: self.w.b.commit(commit)):
            self.lost(sid)
            raise ServiceError(503, "worker_lost", f"session {sid} moved to another worker or expired; retry")
        if moved:  # wall clocks of two hosts: clamped, NTP keeps them close
            obs.FAILOVER.labels(meta.get("moved_cause") or "worker_died").observe(max(0.0, time.time() - moved))
        log.info("session restored", extra={"session_id": sid, "worker_id": self.w.id, "replayed": replayed,
                                            "failover_s": round(time.time() - moved, 3) if moved else None})
        await self.w.health.heartbeat()
        return hs

    async def _replay(self, sid: str, hs: HeldSession) -> tuple[list[Answer], int]:
        """Step the frames after the snapshot, one at a time through the worker's frame path; returns the
        answers the client has not seen (and every REST frame's reply) and how many frames were stepped."""
        last = await self.w.b.last_result(sid)
        published = last.seq if last else 0
        answers, replayed = [], 0
        for eid, hraw, body in await self.w.b.read_frames(sid, hs.frame_id):
            h, blobs = unpack(hraw, body)
            seq = int(h["seq"])
            if seq in hs.recent:
                hs.frame_id = eid
                continue
            if is_edit(h):  # an edit of a stream: at its place among the frames, as the first time
                out = await self.w.run(apply_edit, self, sid, hs, eid, seq, h, blobs)
            else:
                [out] = await self.w.run(self.w.compute_frames, [(hs, eid, seq, blobs[0], h.get("fmt", "png"))])
            replayed += 1
            if seq > published or h.get("req"):
                answers.append(self.answer(out, sid, seq, h.get("req"), h.get("id")))
        return answers, replayed

    async def hand_over_all(self) -> int:
        """Drain: give each held session to the live worker with the most room (hand_over); returns how
        many moved. Its frames stream after the snapshot is the replay log, so frames sent meanwhile are
        answered there. With no other worker (or the store down) sessions stay here and stop() snapshots
        them; the api moves them once this worker has left the registry."""
        w = self.w
        if not w.sessions:
            return 0
        try:
            live = [x for x in await w.b.live_workers() if x.get("id") != w.id and not x.get("draining")]
        except STORE_ERRORS:
            return 0
        since, n = f"{time.time():.3f}", 0
        for sid in list(w.sessions) if live else []:
            target = max(live, key=lambda x: int(x.get("free", 0)))
            try:
                if await self.hand_over(sid, target["id"], since):
                    target["free"] = int(target.get("free", 0)) - 1
                    n += 1
            except STORE_ERRORS:
                continue  # stop() snapshots it if the store comes back in time
        return n

    async def hand_over(self, sid: str, target: str, since: str) -> bool:
        """Drain: snapshot a held session and name `target` in it in the same fenced write (not retried: a
        store error leaves the session here, and stop() snapshots it), then have `target` adopt it now.
        False when the session was not this worker's any more."""
        hs = self.w.sessions.get(sid)
        if hs is None:  # evicted or lost meanwhile
            return False
        await hs.settled()
        snap = await self.w.run(hs.take_snapshot)
        moved = await self.w.b.commit(self.commit(sid, hs, [], snap, worker=target, moved_since=since,
                                                  moved_cause="drain"))
        self.w.sessions.pop(sid, None)  # handed over, or no longer this worker's
        if moved:
            await self.w.b.send_work(target, *pack({"op": "adopt", "sid": sid}))
            log.info("session handed over", extra={"session_id": sid, "worker_id": self.w.id, "to": target})
        return moved

    # ------------------------------------------------------------------ admission
    def crop(self, text: str | None) -> tuple[int, int] | None:
        """The session's crop: the client's (within LWL_MAX_CROP_PIXELS), the deployment's or the model's."""
        try:
            crop = parse_crop(text) or self.w.s.crop_tuple()
        except ValueError as e:
            raise ServiceError(400, "bad_crop_size", str(e)) from None
        if crop is not None and crop[0] * crop[1] > self.max_crop_pixels:
            raise ServiceError(400, "crop_too_large", f"crop {crop[0]}x{crop[1]} has more than "
                          f"{self.max_crop_pixels} pixels (LWL_MAX_CROP_PIXELS)")
        return crop

    @property
    def max_crop_pixels(self) -> int:
        """LWL_MAX_CROP_PIXELS, or by default 4x the model's own crop area."""
        default = getattr(self.w.model, "default_crop_size", (480, 832))
        return self.w.s.max_crop_pixels or 4 * default[0] * default[1]

    def _state_bytes(self, frame_hw: tuple[int, int], n_objects: int, crop: tuple[int, int] | None) -> int:
        """What a session of this size holds once its few-shot memory is full (the models' own bound, the
        largest of the models served: admission does not depend on which one a session uses)."""
        bounds = [int(m.state_bytes(tuple(frame_hw), n_objects, crop)) for m in self.w.models.values()
                  if hasattr(m, "state_bytes")]
        return max(bounds, default=0)

    def held_state_bytes(self, skip: str = "") -> int:
        """The state bound of every session held here (but `skip`)."""
        return sum(self._state_bytes(hs.tracker.frame_hw or (0, 0), len(hs.tracker.object_ids), hs.tracker.crop_hw)
                   for sid, hs in list(self.w.sessions.items()) if sid != skip)

    def store_bytes(self) -> dict[str, int]:
        """Bytes this worker's sessions keep in the store: snapshots and replay logs (total and the largest
        session), reported in the heartbeat and as lwl_store_bytes."""
        per = [sum(hs.store_bytes) for hs in list(self.w.sessions.values())]
        return {"total": sum(per), "max_session": max(per, default=0),
                "snapshots": sum(hs.store_bytes[0] for hs in list(self.w.sessions.values()))}

    def admit(self, frame_hw: tuple[int, int], n_objects: int, crop: tuple[int, int] | None, sid: str = "") -> None:
        """Admission control before any model work: at most LWL_MAX_OBJECTS objects, the session within
        LWL_MAX_SESSION_STATE_MB and this worker within LWL_WORKER_STATE_MB (else 503: the api tries another
        worker, then answers no_capacity with Retry-After)."""
        s = self.w.s
        check_count(n_objects, s.max_objects)
        need = self._state_bytes(frame_hw, n_objects, crop)
        if need > s.max_session_state_bytes:
            raise ServiceError(413, "session_too_large", f"{n_objects} objects on {frame_hw[1]}x{frame_hw[0]} frames "
                          f"need {need / 2**20:.0f} MB of tracker memory, more than "
                          f"LWL_MAX_SESSION_STATE_MB={s.max_session_state_mb:g}")
        if need + self.held_state_bytes(skip=sid) > s.worker_state_bytes:
            raise ServiceError(503, "worker_full", f"worker {self.w.id} has no room for {need / 2**20:.0f} MB more "
                          "tracker memory")

    # ------------------------------------------------------------------ ops
    async def create(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        """A new session: the first frame stepped with its objects, snapshotted at once."""
        sid, w = h["sid"], self.w
        self._has_slot()
        model = w.model_for(h.get("model"))
        crop = self.crop(h.get("crop_size"))
        fmt = h.get("fmt", "png")

        def create() -> tuple[HeldSession, dict[str, Any], bytes]:
            frame = decode_frame(blobs[0], w.s.max_frame_pixels)
            mask, boxes = objects_args(h, blobs)
            self.admit(frame.shape[:2], len(object_ids(mask, boxes)), crop)  # before any model work
            tracker = model.new_tracker(crop_size=crop)
            res, ms = timed_model(lambda: tracker.step(frame, mask=mask, boxes=boxes))
            obs.FRAMES.inc()
            hs = HeldSession(tracker=tracker, last_seq=0)
            return hs, encode_message(res, fmt, ms), hs.take_snapshot()

        hs, out, snap = await w.run(create)
        w.sessions[sid] = hs
        log.info("session created", extra={"session_id": sid, "worker_id": w.id})
        await w.health.heartbeat()
        return out, self.commit(sid, hs, [], snap, worker=w.id, state="active")

    def _has_slot(self) -> None:
        if self.w.draining or len(self.w.sessions) >= self.w.s.max_sessions_per_worker:
            raise ServiceError(503, "worker_full", f"worker {self.w.id} has no free session slot")

    async def restore(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        """A new session from a saved tracker state (POST /v1/sessions with `state`): its header checked as
        the api checks it, its crop and size admitted, then restored (model, weights and payload checked by
        Model.restore_tracker) and snapshotted at once. Its answer is the state's last result."""
        sid, w = h["sid"], self.w
        self._has_slot()
        head = check_state(blobs[0], w.s.max_frame_pixels, w.s.max_objects)
        crop = self.crop("x".join(map(str, head["crop_hw"])))
        self.admit(tuple(head["frame_hw"]), len(head["objects"]), crop)
        model = w.model_for(head["model"])  # the state names the model that made it

        def restore() -> tuple[HeldSession, dict[str, Any], bytes]:
            try:
                tracker = model.restore_tracker(blobs[0])
            except InputError as e:
                raise ServiceError(400, "bad_state", str(e)) from None
            hs = HeldSession(tracker=tracker, last_seq=0)
            return hs, result_of(tracker.result, h.get("fmt", "png")), hs.take_snapshot()

        hs, out, snap = await w.run(restore)
        w.sessions[sid] = hs
        log.info("session restored from a saved state", extra={"session_id": sid, "worker_id": w.id})
        await w.health.heartbeat()
        return out, self.commit(sid, hs, [], snap, worker=w.id, state="active")

    async def state(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        """GET /v1/sessions/{id}/state: a snapshot now, after the frames and edits read before this op; the
        api hands out the tracker state it holds."""
        sid = h["sid"]
        hs = await self.held(sid)
        await hs.settled()
        snap = await self.w.run(hs.take_snapshot)
        return {"type": "state", "bytes": len(snap)}, self.commit(sid, hs, [], snap)

    async def _control(self, h: dict[str, Any], call: Callable[[Any], dict[str, Any]]) -> Done:
        """add/correct/remove: the call on the tracker, then a snapshot (the replay log holds frames only)."""
        sid = h["sid"]
        hs = await self.held(sid)
        await hs.settled()

        def run() -> tuple[dict[str, Any], bytes]:
            return call(hs.tracker), hs.take_snapshot()

        out, snap = await self.w.run(run)
        return out, self.commit(sid, hs, [], snap)

    async def add(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        """New objects on the session's current frame (within the object and memory limits)."""
        mask, boxes = objects_args(h, [b"", *blobs])
        fmt = h.get("fmt", "png")
        tr = (await self.held(h["sid"])).tracker
        new = object_ids(mask, boxes)
        self.admit(tr.frame_hw or (0, 0), len(set(tr.object_ids) | set(new)), tr.crop_hw, sid=h["sid"])
        return await self._control(h, lambda tr: result_of(lambda: tr.add_objects(mask=mask, boxes=boxes), fmt))

    async def correct(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        """User-corrected masks of tracked objects on the current frame."""
        mask = read_label_png(blobs[0])
        fmt = h.get("fmt", "png")
        return await self._control(h, lambda tr: result_of(lambda: tr.correct(mask), fmt))

    async def remove(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        """Stop tracking one object."""
        oid = int(h["object_id"])

        def remove(tr: Any) -> dict[str, Any]:
            tr.remove_object(oid)
            return {"type": "removed", "object_id": oid, "objects": tr.object_ids}

        return await self._control(h, remove)

    async def delete(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        await self.forget(h["sid"], reason="deleted")
        return {"type": "deleted"}, None

    async def adopt(self, h: dict[str, Any], blobs: list[bytes]) -> Done:
        """The api moved a session here (its worker died): restore it now, then read its frames."""
        await self.held(h["sid"])
        return None, None


def objects_args(h: dict[str, Any], blobs: list[bytes]) -> tuple[np.ndarray | None, dict | None]:
    """An op's objects: the mask (second blob, if any) and the boxes of its header."""
    mask = read_label_png(blobs[1]) if len(blobs) > 1 and blobs[1] else None
    boxes = {int(k): tuple(v) for k, v in h["boxes"].items()} if h.get("boxes") else None
    return mask, boxes

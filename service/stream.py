"""One session's WebSocket stream: frames in, results out, in order, with bounded frames in flight
(docs/API.md). Client messages are models with a handler each (service.stream_messages); frames go
into the session's frames stream, and the relay forwards the worker's answers as they were written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from service import obs
from service.backends import STORE_ERRORS, Result
from service.checks import MASK_FORMATS, check_image, session_hw
from service.codec import pack, splice
from service.deps import Service
from service.errors import ServiceError
from service.stream_messages import EDIT_MAGIC, BadMessage, ClientClosed, Incoming, parse_binary, parse_text

log = logging.getLogger("lwl.api")
WS_CLOSE = {"bad_message": 4400, "missing_token": 4401, "wrong_token": 4403, "unknown_session": 4404,
            "stream_replaced": 4409, "session_ended": 4410, "no_worker": 4503, "internal": 1011,
            "store_down": 1013}
READ_AHEAD, READ_AHEAD_BYTES = 256, 32 << 20  # frames a stream reads ahead of the worker at most, and bytes
Held = tuple[float, Any, bytes, "dict[str, Any] | None"]  # not sent yet: receipt time, client id, bytes, edit op
ANSWERS = ("result", "corrected", "added", "removed")  # answers that count in the end-to-end latency


class StreamClose(Exception):
    """Ends a stream with a WebSocket close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def count_option(text: str | None, name: str, low: int) -> int | None:
    """A whole-number option of the stream URL or auth message (None when absent)."""
    if text is None or text == "":
        return None
    if isinstance(text, bool) or not str(text).isdigit() or int(text) < low:
        raise ServiceError(400, "bad_option", f"{name} must be a whole number >= {low}, not {str(text)[:20]!r}")
    return int(text)


class StreamHandler:
    """One WebSocket stream: frames in, results out, in order, with bounded frames in flight."""

    def __init__(self, svc: Service, ws: WebSocket, sid: str) -> None:
        self.svc, self.ws, self.sid = svc, ws, sid
        self.inflight: OrderedDict[int, tuple[float, Any]] = OrderedDict()  # seq -> (receipt time, client id)
        self.waiting: Held | None = None  # latest mode: newest unsent frame
        self.owner = ""  # the session's worker: looked up at the start, again only when answers stop
        self.slot = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.closed = False
        self.claim = uuid.uuid4().hex  # this stream's claim on the session (one stream per session)
        self.backlog: deque[Held] = deque()  # mode all: frames read ahead, not yet sent
        self.backlog_bytes = 0
        self.pump_lock = asyncio.Lock()
        self.fmt, self.mode, self.limit, self.last_id = "png", "all", 1, "0"
        self.hw: tuple[int, int] | None = None  # the session's frame size: an edit's mask must have it

    async def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason[:120])

    async def send(self, msg: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(msg))

    # ------------------------------------------------------------------ start and end
    async def run(self, token: str | None, fmt: str | None, mode: str, max_inflight: str | None,
                  resume_from: str | None = None) -> None:
        """Accept, authenticate (URL token or first message), claim the session, say `ready`, then receive
        and relay until either ends; errors become close codes."""
        await self.ws.accept()
        try:
            if not await self._open(token, fmt, mode, max_inflight, resume_from):
                return
            recv = asyncio.create_task(self._receive())
            relay = asyncio.create_task(self._relay())
            done, pending = await asyncio.wait({recv, relay}, return_when=asyncio.FIRST_COMPLETED)
            if recv in done and not recv.exception():
                # client said "close": finish what is in flight first
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._drained(), self.svc.s.request_timeout_s)
            await self._end_tasks(done, pending)
            await self.close(1000, "done")
        except WebSocketDisconnect:
            self.closed = True
        except STORE_ERRORS as exc:
            await self._store_down(exc)
        except Exception:  # noqa: BLE001
            log.exception("stream failed", extra={"session_id": self.sid})
            await self.close(1011, "internal error")

    async def _end_tasks(self, done: set[asyncio.Task], pending: set[asyncio.Task]) -> None:
        """Cancel the task left; an ending that asked for a close code or meant the store is down gets it."""
        for t in pending:
            t.cancel()
        for t in done | pending:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                exc = t.exception() if t.done() and not t.cancelled() else None
                if isinstance(exc, StreamClose):
                    await self.close(exc.code, exc.reason)
                elif isinstance(exc, STORE_ERRORS):
                    await self._store_down(exc)

    async def _open(self, token: str | None, fmt: str | None, mode: str, max_inflight: str | None,
                    resume_from: str | None) -> bool:
        """Authenticate, check the options, find the worker, claim the session and send `ready` (with what
        a resumed stream needs). False when the stream was refused (and closed)."""
        s = self.svc.s
        if not token:  # browsers: token as the first message
            first = await self._auth_message()
            token, resume_from = first.get("token"), first.get("resume_from", resume_from)
        try:
            meta = await self.svc.session(self.sid, token)
            self.fmt = fmt or meta.get("format", "png")
            if self.fmt not in MASK_FORMATS or mode not in ("all", "latest"):
                raise ServiceError(400, "bad_option", "format must be png or rle, mode all or latest")
            inflight = count_option(max_inflight, "max_inflight", 1)
            resume = count_option(None if resume_from is None else str(resume_from), "resume_from", 1)
        except ServiceError as e:
            with contextlib.suppress(Exception):
                await self.send({"type": "error", "code": e.code, "detail": e.detail})
            await self.close(WS_CLOSE.get(e.code, 4400), e.detail)
            return False
        self.mode, self.hw = mode, session_hw(meta)
        self.limit = max(1, min(inflight or s.max_inflight_frames, s.max_inflight_frames))
        try:
            self.owner = await self.svc.place.owner(self.sid, meta)
        except ServiceError as e:
            await self.send({"type": "error", "code": e.code, "detail": e.detail})
            await self.close(4503, e.detail)
            return False
        # One stream per session: this one claims it; an older stream's next frame is refused (4409).
        await self.svc.b.update_session(self.sid, {"stream": self.claim})
        meta = await self.svc.b.get_session(self.sid) or meta
        ready = {"type": "ready", "session_id": self.sid, "format": self.fmt, "mode": self.mode,
                 "max_inflight": self.limit, "frames": int(meta.get("frames", "0")),
                 "objects": json.loads(meta.get("objects", "[]")), "next_seq": int(meta.get("seq_next", "0")) + 1}
        if resume is None:
            last = await self.svc.b.last_result(self.sid)
            self.last_id = last[0] if last else "0"
        else:
            ready.update(await self._resume(resume, ready["next_seq"]))
        await self.send(ready)
        return True

    async def _auth_message(self) -> dict[str, Any]:
        """The first message when the URL has no token: {"type": "auth", "token": ..., "resume_from": ...}."""
        try:
            first = json.loads(await asyncio.wait_for(self.ws.receive_text(), 10))
        except (asyncio.TimeoutError, ValueError, KeyError, WebSocketDisconnect, RuntimeError):
            return {}
        return first if isinstance(first, dict) else {}

    async def _resume(self, first: int, next_seq: int) -> dict[str, Any]:
        """A client back after a dropped connection: the frames it sent from seq `first` on that the session
        accepted are answered (again) on this stream, in order, with their ids; none is applied twice. The
        client resends only frames the session never accepted (seq >= next_seq, or ids not listed)."""
        known: dict[int, Any] = {}
        for r in await self.svc.b.read_results(self.sid, "0", 0.001):
            if r.seq >= first:
                known[r.seq] = json.loads(r.body).get("id")
        rest: set[int] = set()  # frames sent over REST: answered to their request, not on a stream
        for _eid, hraw, _body in await self.svc.b.read_frames(self.sid, "0"):
            h = json.loads(hraw)
            if int(h.get("seq", 0)) >= first:
                if "req" in h:
                    rest.add(int(h["seq"]))
                else:
                    known.setdefault(int(h["seq"]), h.get("id"))
        t0 = time.perf_counter()
        for seq in sorted(known):
            self.inflight[seq] = (t0, None)
        self.last_id = "0"  # read the results stream from its start: answers already written go out again
        lost = [q for q in range(first, next_seq) if q not in known and q not in rest]
        return {"resumed": [{"seq": q, "id": known[q]} for q in sorted(known)], "lost": lost}

    async def _store_down(self, exc: BaseException) -> None:
        """Redis unavailable: an `error` message, then close 1013 (try again later). Frames already in
        the session's stream are answered once the store is back; a reconnecting client resumes."""
        obs.ERRORS.labels("store_down").inc()
        log.warning("store unavailable", extra={"session_id": self.sid, "error": f"{type(exc).__name__}: {exc}"})
        await self.svc.b.reset_idle()
        with contextlib.suppress(Exception):
            await self.send({"type": "error", "code": "store_down",
                             "detail": "the store (Redis) is unavailable; reconnect shortly"})
        await self.close(WS_CLOSE["store_down"], "store unavailable, retry")

    async def _drained(self) -> None:
        while self.inflight or self.waiting or self.backlog:
            self.slot.clear()
            await self.slot.wait()

    # ------------------------------------------------------------------ frames in
    async def _receive(self) -> None:
        """Read client messages; bounded in-flight frames and edits (all: queue a bounded read-ahead, then
        wait; latest: keep only the newest frame, every edit). Reading ahead keeps the socket moving, so a
        sender that does not wait for answers still gets its keepalive pings answered; past READ_AHEAD the
        socket waits (TCP backpressure). Ends when the client says `close`."""
        while True:
            while self.backlog and (self.backlog_bytes >= READ_AHEAD_BYTES or len(self.backlog) >= READ_AHEAD):
                self.slot.clear()
                await self.slot.wait()
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", 1000))
            try:
                incoming = await self._incoming(msg)
            except ClientClosed:
                return
            except BadMessage as e:
                await self.send(e.message())
                continue
            if incoming is not None:
                await self._accept(time.perf_counter(), incoming)

    async def _incoming(self, msg: dict[str, Any]) -> Incoming | None:
        """A binary message is a frame, or an edit when it starts with EDIT_MAGIC; a text message is handled
        by its model (service.stream_messages)."""
        if msg.get("bytes") is not None:
            if msg["bytes"][: len(EDIT_MAGIC)] == EDIT_MAGIC:
                return await parse_binary(msg["bytes"]).handle(self)
            return Incoming(msg["bytes"])
        return await parse_text(msg.get("text")).handle(self)

    async def _accept(self, t0: float, frame: Incoming) -> None:
        """A frame's size and image header (an `error` message if refused; an edit's were checked by its
        model), then into the read-ahead (or, in mode latest with max_inflight pending, a frame is held as
        the newest, skipping the one held before; an edit is never skipped: it queues after the held frame)."""
        if frame.head is None:
            s = self.svc.s
            try:
                if len(frame.data) > s.max_upload_bytes:
                    raise ServiceError(413, "upload_too_large", "frame larger than LWL_MAX_UPLOAD_MB")
                check_image(frame.data, s.max_frame_pixels, "frame")
            except ServiceError as e:
                obs.ERRORS.labels(e.code).inc()
                await self.send({"type": "error", "status": e.status, "code": e.code, "detail": e.detail,
                                 "id": frame.client_id})
                return
        held: Held = (t0, frame.client_id, frame.data, frame.head)
        if self.mode == "latest" and frame.head is None and (self.backlog or len(self.inflight) >= self.limit):
            if self.waiting is not None:
                await self.send({"type": "skipped", "id": self.waiting[1]})
            self.waiting = held
            return
        if self.waiting is not None:  # an edit after a held frame: it applies after that frame
            self.backlog.append(self.waiting)
            self.backlog_bytes += len(self.waiting[2])
            self.waiting = None
        self.backlog.append(held)
        self.backlog_bytes += len(frame.data)
        await self._pump()

    async def _pump(self) -> None:
        """Frames and edits read ahead go to the session, in order, while fewer than max_inflight are at the
        worker, then the held newest frame (mode latest). One pump at a time: the receiver and the relay
        both call it, and seqs must follow the order read."""
        async with self.pump_lock:
            while len(self.inflight) < self.limit and (self.backlog or self.waiting):
                if self.backlog:
                    held = self.backlog.popleft()
                    self.backlog_bytes -= len(held[2])
                else:
                    held, self.waiting = self.waiting, None
                await self._submit(*held)

    async def _submit(self, t0: float, client_id: Any, data: bytes, edit: dict[str, Any] | None = None) -> None:
        """One round trip: the frame or edit goes into the session's frames stream, numbered by the next
        seq. No worker lookup: the owner reads that stream (and it is the replay log if the owner dies)."""
        head: dict[str, Any] = {**(edit or {"op": "frame"}), "fmt": self.fmt}
        if client_id is not None:  # the worker echoes it: a resumed stream still knows which frame it was
            head["id"] = client_id
        h, body = pack(head, data)
        seq = await self.svc.b.submit_frame(self.sid, h, body, self.svc.s.session_ttl_s, self.claim)
        if seq is None:
            raise StreamClose(4410, "session ended (deleted or expired)")
        if seq < 0:
            raise StreamClose(4409, "another stream took over this session")
        self.inflight[seq] = (t0, client_id)

    # ------------------------------------------------------------------ results out
    async def _relay(self) -> None:
        """Forward this stream's results in order, as the worker wrote them; when answers stop coming,
        check the session and its worker (and move the session if the worker died)."""
        quiet_since = time.monotonic()
        while True:
            msgs = await self.svc.b.read_results(self.sid, self.last_id, 1.0)
            for r in msgs:
                self.last_id = r.eid
                if r.seq in self.inflight:
                    await self._forward(r)
            if msgs:
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - quiet_since >= 1.0:
                quiet_since = time.monotonic()
                await self._check_owner()

    async def _forward(self, r: Result) -> None:
        """Send one answer: the worker's JSON text plus the client's id and the latency (spliced in)."""
        t0, _ = self.inflight.pop(r.seq)
        extra: dict[str, Any] = {}  # the client's id is in the worker's text already
        if r.kind in ANSWERS:
            dt = time.perf_counter() - t0
            obs.LATENCY.labels("end_to_end").observe(dt)
            extra["latency_ms"] = round(dt * 1000, 3)
        async with self.send_lock:
            await self.ws.send_text(splice(r.body, extra).decode())
        await self._pump()
        self.slot.set()

    async def _check_owner(self) -> None:
        """After a quiet second: the session must still exist; with frames in flight, a dead worker's
        session moves (the new worker replays the frames stream), a live one is asked to adopt it (a
        no-op unless it restarted under the same id and lost it)."""
        meta = await self.svc.b.get_session(self.sid)
        if meta is None:
            raise StreamClose(4410, "session ended (deleted or expired)")
        if not self.inflight:
            return
        self.owner = meta.get("worker", "")
        if await self.svc.b.worker_alive(self.owner):
            await self.svc.place.adopt(self.sid, self.owner)
            return
        try:
            self.owner = await self.svc.place.move(self.sid, self.owner, meta.get("model") or None)
        except ServiceError as e:
            raise StreamClose(4503, e.detail) from None

"""Placement and worker RPC: which worker holds a session (the live one with the most room), moving a
session whose worker died, and the request/reply calls to workers (ops on the work stream, REST frames
on the session's frames stream). The api's only way to reach a worker."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from service.backends import Backend
from service.codec import pack
from service.errors import ServiceError
from service.settings import Settings

log = logging.getLogger("lwl.api")
RETRY_OPS = ("worker_full", "worker_lost")  # a new session goes to the next worker on these


def serves(worker: dict[str, Any], model: str, weights: str | None = None) -> bool:
    """Whether a worker's heartbeat lists `model` among the models it serves (its default or another), with
    `weights` if given: a saved state continues only on the weights that made it."""
    served = worker.get("models") or [{"name": worker.get("model"), "weights": worker.get("weights")}]
    return any(m.get("name") == model and (not weights or m.get("weights") == weights) for m in served)


class Placement:
    """Sessions on workers, and calls to them (one per app)."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.s = settings
        self.b = backend

    def retry_after(self) -> dict[str, str]:
        """How long a client waits before it asks again for a worker: two heartbeats."""
        return {"Retry-After": str(max(1, int(self.s.heartbeat_s * 2)))}

    async def candidates(self, model: str | None = None, weights: str | None = None) -> list[dict[str, Any]]:
        """Live workers with room (of `model`, with `weights` if given), most free capacity first."""
        ws = [w for w in await self.b.live_workers() if w.get("free", 0) > 0 and not w.get("draining")]
        if model:
            ws = [w for w in ws if serves(w, model, weights)]
        return sorted(ws, key=lambda w: (-w["free"], w.get("memory_bytes", 0)))

    async def check_served(self, model: str | None) -> None:
        """A model a client names must be served by a live worker (400 unknown_model otherwise); with no
        live worker at all the request goes on and waits for one like any other."""
        live = await self.b.live_workers()
        if model and live and not any(serves(w, model) for w in live):
            names = sorted({m.get("name", "") for w in live for m in w.get("models", [])} or
                           {w.get("model", "") for w in live})
            raise ServiceError(400, "unknown_model", f"no live worker serves model {model!r} (served: "
                               f"{', '.join(names)})")

    async def owner(self, sid: str, meta: dict[str, str]) -> str:
        """The session's worker; if it died, move the session to a live worker (which restores it)."""
        wid = meta.get("worker", "")
        if await self.b.worker_alive(wid):
            return wid
        return await self.move(sid, wid, meta.get("model") or None)

    async def move(self, sid: str, dead: str, model: str | None = None) -> str:
        """Give a session whose worker died to the live worker with the most room that serves its model,
        and tell that worker to adopt it now (restore the snapshot, replay the frames after it, read its
        frames from then on)."""
        live = [w for w in await self.b.live_workers() if not model or serves(w, model)]
        cands = await self.candidates(model) or [w for w in live if not w.get("draining")]
        if not cands:
            raise ServiceError(503, "no_worker", "the session's worker is gone and no other worker is live",
                               headers=self.retry_after())
        new = cands[0]["id"]
        # when the dead worker last beat: the adopting worker reports the gap as lwl_failover_seconds
        since = await self.b.last_beat(dead) or time.time()
        await self.b.update_session(sid, {"worker": new, "moved_since": f"{since:.3f}",
                                          "moved_cause": "worker_died"})
        await self.adopt(sid, new)
        log.info("session moved", extra={"session_id": sid, "from": dead, "to": new})
        return new

    async def adopt(self, sid: str, wid: str) -> None:
        """Ask a worker to hold a session (a no-op for the worker that holds it already)."""
        await self.b.send_work(wid, *pack({"op": "adopt", "sid": sid}))

    async def place(self, sid: str, record: dict[str, str], model: str | None, header: dict[str, Any],
                    *blobs: bytes, weights: str | None = None) -> tuple[str, dict]:
        """A new session on the live worker with the most room (of `model` and `weights`, if given): its
        record names the worker, which then creates it; a full or lost worker passes it to the next one.
        Returns the worker and its answer."""
        tried: set[str] = set()
        while True:
            cands = [w for w in await self.candidates(model, weights) if w["id"] not in tried]
            if not cands:
                live = await self.b.live_workers()
                if model and not tried and live and not any(serves(w, model, weights) for w in live):
                    raise ServiceError(400, "unknown_model", f"no live worker serves model {model!r}"
                                       + (f" with weights {weights}" if weights else ""))
                raise ServiceError(503, "no_capacity", "no worker has room for a new session; retry later",
                                   headers=self.retry_after())
            wid = cands[0]["id"]
            tried.add(wid)
            await self.b.put_session(sid, {**record, "worker": wid, "model": model or cands[0].get("model", "")},
                                     self.s.session_ttl_s)
            try:
                return wid, await self.rpc(wid, header, *blobs)
            except ServiceError as e:
                await self.b.delete_session(sid)
                if e.code not in RETRY_OPS:
                    raise

    async def rpc(self, wid: str, header: dict[str, Any], *blobs: bytes, timeout: float | None = None) -> dict:
        """Send one op to a worker and wait for its reply; worker errors become ServiceError."""
        req = uuid.uuid4().hex
        h, body = pack({**header, "req": req}, *blobs)
        await self.b.send_work(wid, h, body)
        return await self.wait_answer(req, wid, timeout or self.s.request_timeout_s)

    async def wait_answer(self, req: str, wid: str, timeout: float, sid: str = "") -> dict:
        """The reply to one REST call; worker errors become ServiceError, a worker that dies meanwhile 503.
        With `sid` (a frame), a live worker that is slow to answer is asked to adopt the session, in case
        it restarted under the same id and no longer holds it."""
        deadline = time.monotonic() + timeout
        while True:
            got = await self.b.wait_reply(req, min(2.0, max(0.1, deadline - time.monotonic())))
            if got is not None:
                break
            if time.monotonic() >= deadline:
                raise ServiceError(504, "worker_timeout", f"worker {wid} did not answer within {timeout:.0f} s")
            if not await self.b.worker_alive(wid):
                raise ServiceError(503, "worker_lost", f"worker {wid} stopped while handling the request; retry",
                                   headers={"Retry-After": "1"})
            if sid:
                await self.adopt(sid, wid)
        out = json.loads(got[0])
        if out.get("type") == "error":
            raise ServiceError(out["status"], out["code"], out["detail"])
        return out

    async def frame_rpc(self, sid: str, meta: dict[str, str], fmt: str, image: bytes) -> dict:
        """A frame over REST: into the session's frames stream like a WebSocket frame (so it is in the
        replay log), answered on a reply list. If the worker dies meanwhile, the frame stays in the stream
        and the session's new worker answers it after its replay."""
        wid = await self.owner(sid, meta)
        req = uuid.uuid4().hex
        h, body = pack({"op": "frame", "fmt": fmt, "req": req}, image)
        if await self.b.submit_frame(sid, h, body, self.s.session_ttl_s) is None:
            raise ServiceError(404, "unknown_session", f"unknown session {sid} (deleted or expired)")
        for attempt in range(2):
            try:
                return await self.wait_answer(req, wid, self.s.request_timeout_s, sid)
            except ServiceError as e:
                if e.code != "worker_lost" or attempt:
                    raise
                wid = await self.owner(sid, await self.b.get_session(sid) or meta)
        raise AssertionError("unreachable")

    async def session_rpc(self, sid: str, meta: dict[str, str], header: dict[str, Any], *blobs: bytes) -> dict:
        """rpc to the session's owner, moving the session once if the owner died meanwhile."""
        header = {**header, "sid": sid}
        for attempt in range(2):
            wid = await self.owner(sid, meta)
            try:
                return await self.rpc(wid, header, *blobs)
            except ServiceError as e:
                if e.code != "worker_lost" or attempt:
                    raise
                meta = await self.b.get_session(sid) or meta
        raise AssertionError("unreachable")

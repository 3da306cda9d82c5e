"""Store and Broker in the process's memory (`lwl serve`: one api and one worker, no Redis)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from typing import Any

from service.backends.base import RESULT_MAXLEN, Answer, Broker, Commit, Input, Msg, Result, Store, id_order
from service.codec import splice


class _Hub:
    """What the in-process streams share: one id counter (ids of different streams compare in arrival
    order, as Redis's time-based ids do) and one condition (a reader can wait on several streams)."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.cond = asyncio.Condition()

    async def wait(self, ready: Any, block_s: float) -> bool:
        """Wait until ready() is true (False after block_s)."""
        async with self.cond:
            if ready():
                return True
            try:
                await asyncio.wait_for(self.cond.wait_for(ready), block_s)
            except asyncio.TimeoutError:
                return False
            return True


class _Stream:
    """An append-only list of (id, fields) with ids from the hub."""

    def __init__(self, hub: _Hub, maxlen: int | None = None) -> None:
        self.hub = hub
        self.items: list[tuple[int, dict[str, Any]]] = []
        self.maxlen = maxlen

    async def add(self, **fields: Any) -> str:
        async with self.hub.cond:
            eid = next(self.hub.ids)
            self.items.append((eid, fields))
            if self.maxlen and len(self.items) > self.maxlen:
                del self.items[: len(self.items) - self.maxlen]
            self.hub.cond.notify_all()
            return f"{eid}-0"

    def after(self, last_id: str) -> list[tuple[str, dict[str, Any]]]:
        last = id_order(last_id)[0] if last_id not in ("", "$") else (self.items[-1][0] if self.items else 0)
        return [(f"{e}-0", f) for e, f in self.items if e > last][:64]

    def trim_upto(self, eid: str) -> None:
        upto = id_order(eid)[0]
        self.items = [it for it in self.items if it[0] > upto]

    async def read(self, last_id: str, block_s: float) -> list[tuple[str, dict[str, Any]]]:
        if last_id == "$":
            last_id = f"{self.items[-1][0] if self.items else 0}-0"
        await self.hub.wait(lambda: bool(self.after(last_id)), block_s)
        return self.after(last_id)


class MemoryBackend(Store, Broker):
    """Store and Broker in the process's memory, for `lwl serve` (one api + one worker, no Redis)."""

    def __init__(self) -> None:
        self.hub = _Hub()
        self.sessions: dict[str, dict[str, str]] = {}
        self.expiry: dict[str, float] = {}
        self.snapshots: dict[str, bytes] = {}
        self.workers: dict[str, tuple[float, dict[str, Any]]] = {}
        self.beats: dict[str, float] = {}
        self.jobs: dict[str, dict[str, str]] = {}
        self.work: dict[str, _Stream] = defaultdict(lambda: _Stream(self.hub))
        self.frames: dict[str, _Stream] = defaultdict(lambda: _Stream(self.hub))
        self.results: dict[str, _Stream] = defaultdict(lambda: _Stream(self.hub, RESULT_MAXLEN))
        self.replies: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self.jobqueue: asyncio.Queue[str] = asyncio.Queue()
        self.key_slots: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)  # per-key accounting

    def _alive(self, sid: str) -> bool:
        if sid in self.sessions and self.expiry.get(sid, 0) < time.monotonic():
            self.sessions.pop(sid, None)
        return sid in self.sessions

    async def ping(self) -> bool:
        return True

    async def reset_idle(self) -> None:
        return None

    async def put_session(self, sid: str, meta: dict[str, str], ttl_s: float) -> None:
        self.sessions[sid] = dict(meta)
        self.expiry[sid] = time.monotonic() + ttl_s + 1

    async def get_session(self, sid: str) -> dict[str, str] | None:
        return dict(self.sessions[sid]) if self._alive(sid) else None

    async def update_session(self, sid: str, fields: dict[str, str], ttl_s: float | None = None) -> bool:
        if not self._alive(sid):
            return False
        self.sessions[sid].update(fields)
        if ttl_s:
            self.expiry[sid] = time.monotonic() + ttl_s + 1
        return True

    async def next_seq(self, sid: str) -> int:
        meta = self.sessions[sid]
        meta["seq_next"] = str(int(meta.get("seq_next", "0")) + 1)
        return int(meta["seq_next"])

    async def delete_session(self, sid: str) -> None:
        for d in (self.sessions, self.expiry, self.snapshots, self.frames, self.results):
            d.pop(sid, None)

    async def session_ids(self) -> list[str]:
        return [s for s in list(self.sessions) if self._alive(s)]

    async def put_snapshot(self, sid: str, blob: bytes, ttl_s: float, upto: str = "") -> None:
        self.snapshots[sid] = blob
        if upto and sid in self.frames:
            self.frames[sid].trim_upto(upto)

    async def get_snapshot(self, sid: str) -> bytes | None:
        return self.snapshots.get(sid)

    async def commit(self, c: Commit) -> bool:
        if not self._alive(c.sid) or self.sessions[c.sid].get("worker") != c.worker:
            return False
        await self.update_session(c.sid, c.fields, c.ttl_s)
        if c.snapshot is not None:
            await self.put_snapshot(c.sid, c.snapshot, c.ttl_s, c.upto)
        await self.deliver(c.sid, c.answers)
        return True

    async def heartbeat(self, wid: str, info: dict[str, Any], ttl_s: float) -> None:
        self.workers[wid] = (time.monotonic() + ttl_s, dict(info))
        self.beats[wid] = time.time()

    async def live_workers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [info for until, info in self.workers.values() if until > now]

    async def worker_alive(self, wid: str) -> bool:
        return self.workers.get(wid, (0.0, {}))[0] > time.monotonic()

    async def last_beat(self, wid: str) -> float | None:
        return self.beats.get(wid)

    async def remove_worker(self, wid: str) -> None:
        self.workers.pop(wid, None)
        self.beats.pop(wid, None)

    async def put_job(self, jid: str, rec: dict[str, str]) -> None:
        self.jobs[jid] = dict(rec)

    async def get_job(self, jid: str) -> dict[str, str] | None:
        return dict(self.jobs[jid]) if jid in self.jobs else None

    async def update_job(self, jid: str, fields: dict[str, str]) -> bool:
        if jid not in self.jobs:
            return False
        self.jobs[jid].update(fields)
        return True

    async def delete_job(self, jid: str) -> None:
        self.jobs.pop(jid, None)

    async def job_ids(self) -> list[str]:
        return list(self.jobs)

    async def claim_slot(self, kind: str, owner: str, item: str) -> None:
        self.key_slots[(kind, owner)][item] = time.time()

    async def release_slot(self, kind: str, owner: str, item: str) -> None:
        self.key_slots[(kind, owner)].pop(item, None)

    async def slots(self, kind: str, owner: str) -> list[tuple[str, float]]:
        return list(self.key_slots[(kind, owner)].items())

    async def send_work(self, wid: str, header: bytes, body: bytes) -> None:
        await self.work[wid].add(h=header, b=body)

    async def read_work(self, wid: str, last_id: str, block_s: float) -> list[Msg]:
        return [(eid, f["h"], f["b"]) for eid, f in await self.work[wid].read(last_id, block_s)]

    def _inputs(self, wid: str, work_after: str, frames_after: dict[str, str]) -> list[Input]:
        got = [Input("", eid, f["h"], f["b"]) for eid, f in self.work[wid].after(work_after)]
        for sid, after in frames_after.items():
            if sid in self.frames:
                got += [Input(sid, eid, f["h"], f["b"]) for eid, f in self.frames[sid].after(after)]
        return sorted(got, key=lambda m: id_order(m.eid))

    async def read_inputs(self, wid: str, work_after: str, frames_after: dict[str, str],
                          block_s: float) -> list[Input]:
        await self.hub.wait(lambda: bool(self._inputs(wid, work_after, frames_after)), block_s)
        return self._inputs(wid, work_after, frames_after)

    async def work_depth(self, wid: str) -> int:
        return len(self.work[wid].items)

    async def drop_work(self, wid: str) -> None:
        self.work.pop(wid, None)

    async def trim_work(self, wid: str, upto_id: str) -> None:
        upto = id_order(upto_id)[0]
        s = self.work[wid]
        s.items = [it for it in s.items if it[0] >= upto]

    async def submit_frame(self, sid: str, header: bytes, body: bytes, ttl_s: float, claim: str = ""
                           ) -> int | None:
        if not self._alive(sid):
            return None
        if claim and self.sessions[sid].get("stream") != claim:
            return -1
        seq = await self.next_seq(sid)
        await self.frames[sid].add(h=splice(header, {"seq": seq}), b=body)
        return seq

    async def read_frames(self, sid: str, after_id: str) -> list[Msg]:
        if sid not in self.frames:
            return []
        return [(eid, f["h"], f["b"]) for eid, f in self.frames[sid].after(after_id or "0")]

    async def deliver(self, sid: str, answers: list[Answer]) -> None:
        for a in answers:
            if a.req:
                await self.replies[a.req].put((a.body, b""))
            else:
                await self.results[sid].add(h=a.body, s=a.seq, t=a.kind)

    async def read_results(self, sid: str, last_id: str, block_s: float) -> list[Result]:
        return [Result(eid, f["h"], f["s"], f["t"]) for eid, f in await self.results[sid].read(last_id, block_s)]

    async def last_result(self, sid: str) -> Result | None:
        items = self.results[sid].items if sid in self.results else []
        if not items:
            return None
        e, f = items[-1]
        return Result(f"{e}-0", f["h"], f["s"], f["t"])

    async def drop_results(self, sid: str) -> None:
        self.results.pop(sid, None)

    async def reply(self, req: str, header: bytes, body: bytes) -> None:
        await self.replies[req].put((header, body))

    async def wait_reply(self, req: str, timeout_s: float) -> tuple[bytes, bytes] | None:
        """The reply, or None after `timeout_s`. Not asyncio.wait_for around Queue.get: on Python 3.11 a
        timeout that races the reply drops it (the getter finished, wait_for discards its result); here a
        getter cancelled before it ran leaves the reply in the queue for the next call."""
        getter = asyncio.ensure_future(self.replies[req].get())
        await asyncio.wait({getter}, timeout=timeout_s)
        getter.cancel()  # a no-op when it got the reply
        try:
            got = await getter
        except asyncio.CancelledError:
            return None
        self.replies.pop(req, None)
        return got

    async def submit_job(self, jid: str) -> None:
        await self.jobqueue.put(jid)

    async def take_job(self, consumer: str, block_s: float) -> tuple[str, str] | None:
        try:
            jid = await asyncio.wait_for(self.jobqueue.get(), block_s)
        except asyncio.TimeoutError:
            return None
        return jid, jid

    async def ack_job(self, entry: str) -> None:
        return None

    async def close(self) -> None:
        return None

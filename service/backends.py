"""The two small interfaces the service logic runs on, each with a Redis and an in-process implementation.

- Store: session metadata, tracker snapshots + replay logs, worker registry, video-job records.
- Broker: per-worker work streams, per-session result streams, request replies, the job queue.

`lwl api` / `lwl worker` use Redis; `lwl serve` uses the in-process pair. The api and worker code is the
same in both cases. Redis keys (prefix P = LWL_KEY_PREFIX, default "lwl") are listed in
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from typing import Any

Msg = tuple[str, bytes, bytes]  # (stream id, header JSON, body)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Store:
    """Metadata interface (async). Session and job records are flat str->str dicts."""

    async def ping(self) -> bool: ...
    async def put_session(self, sid: str, meta: dict[str, str], ttl_s: float) -> None: ...
    async def get_session(self, sid: str) -> dict[str, str] | None: ...
    async def update_session(self, sid: str, fields: dict[str, str], ttl_s: float | None = None) -> bool: ...
    async def delete_session(self, sid: str) -> None: ...
    async def next_seq(self, sid: str) -> int: ...
    async def session_ids(self) -> list[str]: ...
    async def put_snapshot(self, sid: str, blob: bytes, ttl_s: float) -> None: ...
    async def get_snapshot(self, sid: str) -> bytes | None: ...
    async def append_replay(self, sid: str, record: bytes, ttl_s: float) -> None: ...
    async def get_replay(self, sid: str) -> list[bytes]: ...
    async def heartbeat(self, wid: str, info: dict[str, Any], ttl_s: float) -> None: ...
    async def live_workers(self) -> list[dict[str, Any]]: ...
    async def remove_worker(self, wid: str) -> None: ...
    async def put_job(self, jid: str, rec: dict[str, str]) -> None: ...
    async def get_job(self, jid: str) -> dict[str, str] | None: ...
    async def update_job(self, jid: str, fields: dict[str, str]) -> None: ...
    async def job_ids(self) -> list[str]: ...
    async def close(self) -> None: ...


class Broker:
    """Message interface (async): streams keep order, blocking reads return [] on timeout."""

    async def send_work(self, wid: str, header: bytes, body: bytes) -> None: ...
    async def read_work(self, wid: str, last_id: str, block_s: float) -> list[Msg]: ...
    async def work_depth(self, wid: str) -> int: ...
    async def drop_work(self, wid: str) -> None: ...
    async def publish_result(self, sid: str, header: bytes, body: bytes) -> str: ...
    async def read_results(self, sid: str, last_id: str, block_s: float) -> list[Msg]: ...
    async def last_result(self, sid: str) -> Msg | None: ...
    async def drop_results(self, sid: str) -> None: ...
    async def reply(self, req: str, header: bytes, body: bytes) -> None: ...
    async def wait_reply(self, req: str, timeout_s: float) -> tuple[bytes, bytes] | None: ...
    async def submit_job(self, jid: str) -> None: ...
    async def take_job(self, consumer: str, block_s: float) -> tuple[str, str] | None: ...
    async def ack_job(self, entry: str) -> None: ...
    async def close(self) -> None: ...


# ============================================================================ Redis


class RedisBackend(Store, Broker):
    """Store and Broker over one Redis connection pool (binary-safe, decode_responses off)."""

    RESULT_MAXLEN = 256
    ORPHAN_IDLE_MS = 5000  # a job pending this long on a worker without heartbeat is taken over

    def __init__(self, url: str, prefix: str = "lwl") -> None:
        import redis.asyncio as aioredis

        self.r = aioredis.from_url(url, decode_responses=False)
        self.p = prefix

    def k(self, *parts: str) -> str:
        """A namespaced key."""
        return ":".join((self.p, *parts))

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except Exception:  # noqa: BLE001 - readiness answers, never raises
            return False

    async def put_session(self, sid: str, meta: dict[str, str], ttl_s: float) -> None:
        key = self.k("session", sid)
        async with self.r.pipeline() as p:
            p.hset(key, mapping=meta)
            p.expire(key, int(ttl_s) + 1)
            p.sadd(self.k("sessions"), sid)
            await p.execute()

    async def get_session(self, sid: str) -> dict[str, str] | None:
        d = await self.r.hgetall(self.k("session", sid))
        return {_s(a): _s(b) for a, b in d.items()} if d else None

    async def update_session(self, sid: str, fields: dict[str, str], ttl_s: float | None = None) -> bool:
        key = self.k("session", sid)
        if not await self.r.exists(key):
            return False
        async with self.r.pipeline() as p:
            p.hset(key, mapping=fields)
            if ttl_s:
                p.expire(key, int(ttl_s) + 1)
                p.expire(self.k("snapshot", sid), int(ttl_s) + 1)
                p.expire(self.k("replay", sid), int(ttl_s) + 1)
            await p.execute()
        return True

    async def next_seq(self, sid: str) -> int:
        """Session-wide frame sequence number (atomic across api replicas)."""
        return int(await self.r.hincrby(self.k("session", sid), "seq_next", 1))

    async def delete_session(self, sid: str) -> None:
        await self.r.delete(self.k("session", sid), self.k("snapshot", sid), self.k("replay", sid),
                            self.k("results", sid))
        await self.r.srem(self.k("sessions"), sid)

    async def session_ids(self) -> list[str]:
        ids = [_s(x) for x in await self.r.smembers(self.k("sessions"))]
        alive = []
        for sid in ids:  # prune ids whose hash expired
            if await self.r.exists(self.k("session", sid)):
                alive.append(sid)
            else:
                await self.r.srem(self.k("sessions"), sid)
        return alive

    async def put_snapshot(self, sid: str, blob: bytes, ttl_s: float) -> None:
        async with self.r.pipeline() as p:
            p.set(self.k("snapshot", sid), blob, ex=int(ttl_s) + 1)
            p.delete(self.k("replay", sid))
            await p.execute()

    async def get_snapshot(self, sid: str) -> bytes | None:
        return await self.r.get(self.k("snapshot", sid))

    async def append_replay(self, sid: str, record: bytes, ttl_s: float) -> None:
        async with self.r.pipeline() as p:
            p.rpush(self.k("replay", sid), record)
            p.expire(self.k("replay", sid), int(ttl_s) + 1)
            await p.execute()

    async def get_replay(self, sid: str) -> list[bytes]:
        return list(await self.r.lrange(self.k("replay", sid), 0, -1))

    async def heartbeat(self, wid: str, info: dict[str, Any], ttl_s: float) -> None:
        async with self.r.pipeline() as p:
            p.set(self.k("worker", wid), json.dumps(info), px=int(ttl_s * 1000))
            p.sadd(self.k("workers"), wid)
            await p.execute()

    async def live_workers(self) -> list[dict[str, Any]]:
        out = []
        for wid in [_s(x) for x in await self.r.smembers(self.k("workers"))]:
            raw = await self.r.get(self.k("worker", wid))
            if raw is None:
                await self.r.srem(self.k("workers"), wid)
            else:
                out.append(json.loads(raw))
        return out

    async def remove_worker(self, wid: str) -> None:
        await self.r.delete(self.k("worker", wid))
        await self.r.srem(self.k("workers"), wid)

    async def put_job(self, jid: str, rec: dict[str, str]) -> None:
        await self.r.hset(self.k("job", jid), mapping=rec)
        await self.r.sadd(self.k("jobs"), jid)

    async def get_job(self, jid: str) -> dict[str, str] | None:
        d = await self.r.hgetall(self.k("job", jid))
        return {_s(a): _s(b) for a, b in d.items()} if d else None

    async def update_job(self, jid: str, fields: dict[str, str]) -> None:
        await self.r.hset(self.k("job", jid), mapping=fields)

    async def job_ids(self) -> list[str]:
        return [_s(x) for x in await self.r.smembers(self.k("jobs"))]

    # ------------------------------------------------------------------ broker
    async def send_work(self, wid: str, header: bytes, body: bytes) -> None:
        await self.r.xadd(self.k("work", wid), {b"h": header, b"b": body})

    async def _xread(self, key: str, last_id: str, block_s: float) -> list[Msg]:
        res = await self.r.xread({key: last_id}, count=64, block=max(1, int(block_s * 1000)))
        out: list[Msg] = []
        for _key, entries in res or []:
            for eid, fields in entries:
                out.append((_s(eid), fields[b"h"], fields.get(b"b", b"")))
        return out

    async def read_work(self, wid: str, last_id: str, block_s: float) -> list[Msg]:
        return await self._xread(self.k("work", wid), last_id, block_s)

    async def work_depth(self, wid: str) -> int:
        return int(await self.r.xlen(self.k("work", wid)))

    async def drop_work(self, wid: str) -> None:
        await self.r.delete(self.k("work", wid))

    async def trim_work(self, wid: str, upto_id: str) -> None:
        """Forget handled work entries (keeps the stream short)."""
        await self.r.xtrim(self.k("work", wid), minid=upto_id)

    async def publish_result(self, sid: str, header: bytes, body: bytes) -> str:
        eid = await self.r.xadd(self.k("results", sid), {b"h": header, b"b": body},
                                maxlen=self.RESULT_MAXLEN, approximate=True)
        return _s(eid)

    async def read_results(self, sid: str, last_id: str, block_s: float) -> list[Msg]:
        return await self._xread(self.k("results", sid), last_id, block_s)

    async def last_result(self, sid: str) -> Msg | None:
        res = await self.r.xrevrange(self.k("results", sid), count=1)
        if not res:
            return None
        eid, fields = res[0]
        return _s(eid), fields[b"h"], fields.get(b"b", b"")

    async def drop_results(self, sid: str) -> None:
        await self.r.delete(self.k("results", sid))

    async def reply(self, req: str, header: bytes, body: bytes) -> None:
        key = self.k("reply", req)
        async with self.r.pipeline() as p:
            p.rpush(key, header, body)
            p.expire(key, 120)
            await p.execute()

    async def wait_reply(self, req: str, timeout_s: float) -> tuple[bytes, bytes] | None:
        key = self.k("reply", req)
        first = await self.r.blpop([key], timeout=max(1, int(timeout_s + 0.999)))
        if first is None:
            return None
        body = await self.r.lpop(key)
        await self.r.delete(key)
        return first[1], body or b""

    async def submit_job(self, jid: str) -> None:
        await self._ensure_group()
        await self.r.xadd(self.k("jobqueue"), {b"job": jid.encode()})

    async def _ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(self.k("jobqueue"), "workers", id="0", mkstream=True)
        except Exception as exc:  # noqa: BLE001 - BUSYGROUP means it exists
            if "BUSYGROUP" not in str(exc):
                raise

    async def take_job(self, consumer: str, block_s: float) -> tuple[str, str] | None:
        await self._ensure_group()
        orphan = await self._claim_orphan(consumer)
        if orphan is not None:
            return orphan
        res = await self.r.xreadgroup("workers", consumer, {self.k("jobqueue"): ">"}, count=1,
                                      block=max(1, int(block_s * 1000)))
        for _key, entries in res or []:
            for eid, fields in entries:
                return _s(eid), _s(fields[b"job"])
        return None

    async def _claim_orphan(self, consumer: str) -> tuple[str, str] | None:
        """A job delivered to a worker whose heartbeat expired and not finished: take it over."""
        key = self.k("jobqueue")
        for p in await self.r.xpending_range(key, "workers", min="-", max="+", count=20,
                                                idle=self.ORPHAN_IDLE_MS):
            owner = _s(p["consumer"])
            if owner == consumer or await self.r.exists(self.k("worker", owner)):
                continue
            claimed = await self.r.xclaim(key, "workers", consumer, min_idle_time=self.ORPHAN_IDLE_MS,
                                          message_ids=[p["message_id"]])
            for eid, fields in claimed:
                jid = _s(fields[b"job"])
                state = await self.r.hget(self.k("job", jid), "state")
                if state in (b"done", b"failed"):
                    await self.ack_job(_s(eid))
                    continue
                return _s(eid), jid
        return None

    async def ack_job(self, entry: str) -> None:
        await self.r.xack(self.k("jobqueue"), "workers", entry)
        await self.r.xdel(self.k("jobqueue"), entry)

    async def close(self) -> None:
        await self.r.aclose()


# ============================================================================ in-process


class _Stream:
    """An append-only list with monotonically increasing ids and a waitable condition."""

    def __init__(self, maxlen: int | None = None) -> None:
        self.items: list[tuple[int, bytes, bytes]] = []
        self.next = 1
        self.maxlen = maxlen
        self.cond = asyncio.Condition()

    async def add(self, header: bytes, body: bytes) -> str:
        async with self.cond:
            eid = self.next
            self.next += 1
            self.items.append((eid, header, body))
            if self.maxlen and len(self.items) > self.maxlen:
                del self.items[: len(self.items) - self.maxlen]
            self.cond.notify_all()
            return f"{eid}-0"

    def _after(self, last: int) -> list[Msg]:
        return [(f"{e}-0", h, b) for e, h, b in self.items if e > last][:64]

    async def read(self, last_id: str, block_s: float) -> list[Msg]:
        last = self.next - 1 if last_id == "$" else int(last_id.split("-")[0])
        async with self.cond:
            got = self._after(last)
            if got:
                return got
            try:
                await asyncio.wait_for(self.cond.wait_for(lambda: bool(self._after(last))), block_s)
            except asyncio.TimeoutError:
                return []
            return self._after(last)


class MemoryBackend(Store, Broker):
    """Store and Broker in the process's memory, for `lwl serve` (one api + one worker, no Redis)."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, str]] = {}
        self.expiry: dict[str, float] = {}
        self.snapshots: dict[str, bytes] = {}
        self.replays: dict[str, list[bytes]] = defaultdict(list)
        self.workers: dict[str, tuple[float, dict[str, Any]]] = {}
        self.jobs: dict[str, dict[str, str]] = {}
        self.work: dict[str, _Stream] = defaultdict(_Stream)
        self.results: dict[str, _Stream] = defaultdict(lambda: _Stream(RedisBackend.RESULT_MAXLEN))
        self.replies: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self.jobqueue: asyncio.Queue[str] = asyncio.Queue()

    def _alive(self, sid: str) -> bool:
        if sid in self.sessions and self.expiry.get(sid, 0) < time.monotonic():
            self.sessions.pop(sid, None)
        return sid in self.sessions

    async def ping(self) -> bool:
        return True

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
        for d in (self.sessions, self.expiry, self.snapshots, self.replays, self.results):
            d.pop(sid, None)

    async def session_ids(self) -> list[str]:
        return [s for s in list(self.sessions) if self._alive(s)]

    async def put_snapshot(self, sid: str, blob: bytes, ttl_s: float) -> None:
        self.snapshots[sid] = blob
        self.replays.pop(sid, None)

    async def get_snapshot(self, sid: str) -> bytes | None:
        return self.snapshots.get(sid)

    async def append_replay(self, sid: str, record: bytes, ttl_s: float) -> None:
        self.replays[sid].append(record)

    async def get_replay(self, sid: str) -> list[bytes]:
        return list(self.replays.get(sid, []))

    async def heartbeat(self, wid: str, info: dict[str, Any], ttl_s: float) -> None:
        self.workers[wid] = (time.monotonic() + ttl_s, dict(info))

    async def live_workers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [info for until, info in self.workers.values() if until > now]

    async def remove_worker(self, wid: str) -> None:
        self.workers.pop(wid, None)

    async def put_job(self, jid: str, rec: dict[str, str]) -> None:
        self.jobs[jid] = dict(rec)

    async def get_job(self, jid: str) -> dict[str, str] | None:
        return dict(self.jobs[jid]) if jid in self.jobs else None

    async def update_job(self, jid: str, fields: dict[str, str]) -> None:
        self.jobs.setdefault(jid, {}).update(fields)

    async def job_ids(self) -> list[str]:
        return list(self.jobs)

    async def send_work(self, wid: str, header: bytes, body: bytes) -> None:
        await self.work[wid].add(header, body)

    async def read_work(self, wid: str, last_id: str, block_s: float) -> list[Msg]:
        return await self.work[wid].read(last_id, block_s)

    async def work_depth(self, wid: str) -> int:
        return len(self.work[wid].items)

    async def drop_work(self, wid: str) -> None:
        self.work.pop(wid, None)

    async def trim_work(self, wid: str, upto_id: str) -> None:
        upto = int(upto_id.split("-")[0])
        s = self.work[wid]
        s.items = [it for it in s.items if it[0] >= upto]

    async def publish_result(self, sid: str, header: bytes, body: bytes) -> str:
        return await self.results[sid].add(header, body)

    async def read_results(self, sid: str, last_id: str, block_s: float) -> list[Msg]:
        return await self.results[sid].read(last_id, block_s)

    async def last_result(self, sid: str) -> Msg | None:
        items = self.results[sid].items if sid in self.results else []
        if not items:
            return None
        e, h, b = items[-1]
        return f"{e}-0", h, b

    async def drop_results(self, sid: str) -> None:
        self.results.pop(sid, None)

    async def reply(self, req: str, header: bytes, body: bytes) -> None:
        await self.replies[req].put((header, body))

    async def wait_reply(self, req: str, timeout_s: float) -> tuple[bytes, bytes] | None:
        try:
            return await asyncio.wait_for(self.replies[req].get(), timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            self.replies.pop(req, None)

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


def make_backend(redis_url: str, prefix: str = "lwl") -> RedisBackend | MemoryBackend:
    """Redis when a URL is set, else the in-process implementation."""
    return RedisBackend(redis_url, prefix) if redis_url else MemoryBackend()

"""Store and Broker over Redis (`lwl api` / `lwl worker`); the scripts keep each write one round trip."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from service.backends.base import RESULT_MAXLEN, Answer, Broker, Commit, Input, Msg, Result, Store, id_order


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _next_id(eid: str) -> str:
    """The smallest stream id after `eid` (XTRIM MINID keeps ids from it on)."""
    ms, _, seq = eid.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


# ============================================================================ Redis

# A frame into the session's frames stream, numbered by the session-wide seq, in one round trip.
# KEYS: session hash, frames stream. ARGV: header JSON, image, ttl, stream claim. Nil when the session is
# gone, -1 when another WebSocket stream has claimed the session since (one stream per session).
SUBMIT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'stream') ~= ARGV[4] then return -1 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq_next', 1)
local h = string.sub(ARGV[1], 1, -2)
if string.sub(h, -1) ~= '{' then h = h .. ',' end
redis.call('XADD', KEYS[2], '*', 'h', h .. '"seq":' .. seq .. '}', 'b', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return seq
"""

# A job record's update only while it exists (a deleted job is not brought back by its worker).
# KEYS: job hash. ARGV: field, value, ... Returns 1 if updated.
UPDATE_JOB_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# A worker's writes after one op, in one round trip, only while the session names this worker.
# KEYS: session, results, frames, snapshot, then one reply list per REST answer.
# ARGV: worker, ttl, has snapshot, snapshot, trim MINID, result stream cap, field count, fields...,
#       then per answer: type, seq, JSON text, reply index (0 = the result stream).
COMMIT_LUA = """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[7])
local i = 8
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, i, i + 2 * n - 1)) end
i = i + 2 * n
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
if ARGV[3] == '1' then
  redis.call('SET', KEYS[4], ARGV[4], 'EX', ttl)
  if ARGV[5] ~= '' then redis.call('XTRIM', KEYS[3], 'MINID', ARGV[5]) end
else
  redis.call('EXPIRE', KEYS[4], ttl)
end
while i <= #ARGV do
  local dest = tonumber(ARGV[i + 3])
  if dest == 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'h', ARGV[i + 2], 's', ARGV[i + 1], 't', ARGV[i])
  else
    redis.call('RPUSH', KEYS[4 + dest], ARGV[i + 2], '')
    redis.call('EXPIRE', KEYS[4 + dest], 120)
  end
  i = i + 4
end
return 1
"""


class RedisBackend(Store, Broker):
    """Store and Broker over one Redis connection pool (binary-safe, decode_responses off)."""

    RESULT_MAXLEN = RESULT_MAXLEN
    SOCKET_TIMEOUT_S = 15
    BEATS_KEPT_S = 3600  # how long the last heartbeat of a gone worker is remembered (failover timing)
    ORPHAN_IDLE_MS = 5000  # a job pending this long on a worker without heartbeat is taken over

    def __init__(self, url: str, prefix: str = "lwl", name: str = "") -> None:
        import redis.asyncio as aioredis

        # the name shows in CLIENT LIST / MONITOR, so an operator (or a test) sees which process talks
        name = re.sub(r"[^\w.:-]", "_", name)  # CLIENT SETNAME refuses spaces
        # socket timeouts: a Redis that hangs (not just one that is down) fails calls instead of blocking
        # them for ever; above the longest blocking read here (BLPOP of wait_reply, 2 s). protocol=2
        # (RESP2, the wire format used anyway) turns off redis-py's "maintenance notifications", which
        # also turn off its check of pooled connections: after a Redis restart each one would fail once.
        self.r = aioredis.from_url(url, decode_responses=False, client_name=name or None, protocol=2,
                                   socket_timeout=self.SOCKET_TIMEOUT_S, socket_connect_timeout=5)
        self.p = prefix
        self._submit = self.r.register_script(SUBMIT_LUA)
        self._commit = self.r.register_script(COMMIT_LUA)

    def k(self, *parts: str) -> str:
        """A namespaced key."""
        return ":".join((self.p, *parts))

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except Exception:  # noqa: BLE001 - readiness answers, never raises
            await self.reset_idle()
            return False

    async def reset_idle(self) -> None:
        """After a store error: close the idle pooled connections. Once Redis restarts, each of them
        would fail its next command once (the old socket is dead); new ones are opened on demand."""
        try:
            await self.r.connection_pool.disconnect(inuse_connections=False)
        except Exception:  # noqa: BLE001, S110 - best effort; a failing connection is dropped anyway
            pass

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
                p.expire(self.k("frames", sid), int(ttl_s) + 1)
            await p.execute()
        return True

    async def next_seq(self, sid: str) -> int:
        """Session-wide frame sequence number (atomic across api replicas)."""
        return int(await self.r.hincrby(self.k("session", sid), "seq_next", 1))

    async def delete_session(self, sid: str) -> None:
        async with self.r.pipeline() as p:
            p.delete(self.k("session", sid), self.k("snapshot", sid), self.k("frames", sid),
                     self.k("results", sid))
            p.srem(self.k("sessions"), sid)
            await p.execute()

    async def session_ids(self) -> list[str]:
        ids = [_s(x) for x in await self.r.smembers(self.k("sessions"))]
        alive = []
        for sid in ids:  # prune ids whose hash expired
            if await self.r.exists(self.k("session", sid)):
                alive.append(sid)
            else:
                await self.r.srem(self.k("sessions"), sid)
        return alive

    async def put_snapshot(self, sid: str, blob: bytes, ttl_s: float, upto: str = "") -> None:
        async with self.r.pipeline() as p:
            p.set(self.k("snapshot", sid), blob, ex=int(ttl_s) + 1)
            if upto:
                p.xtrim(self.k("frames", sid), minid=_next_id(upto), approximate=False)
            await p.execute()

    async def get_snapshot(self, sid: str) -> bytes | None:
        return await self.r.get(self.k("snapshot", sid))

    async def commit(self, c: Commit) -> bool:
        keys = [self.k("session", c.sid), self.k("results", c.sid), self.k("frames", c.sid),
                self.k("snapshot", c.sid)]
        args: list[Any] = [c.worker, int(c.ttl_s) + 1, "1" if c.snapshot is not None else "0",
                           c.snapshot or b"", _next_id(c.upto) if c.upto else "", self.RESULT_MAXLEN,
                           len(c.fields)]
        for k, v in c.fields.items():
            args += [k, v]
        for a in c.answers:
            dest = 0
            if a.req:
                keys.append(self.k("reply", a.req))
                dest = len(keys) - 4
            args += [a.kind, a.seq, a.body, dest]
        return bool(await self._commit(keys=keys, args=args))

    async def heartbeat(self, wid: str, info: dict[str, Any], ttl_s: float) -> None:
        async with self.r.pipeline() as p:
            now = time.time()
            p.set(self.k("worker", wid), json.dumps(info), px=int(ttl_s * 1000))
            p.sadd(self.k("workers"), wid)
            p.zadd(self.k("beats"), {wid: now})  # outlives the worker key: when it died (failover metric)
            p.zremrangebyscore(self.k("beats"), "-inf", now - self.BEATS_KEPT_S)
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

    async def worker_alive(self, wid: str) -> bool:
        return bool(wid) and bool(await self.r.exists(self.k("worker", wid)))

    async def last_beat(self, wid: str) -> float | None:
        """Unix time of the worker's last heartbeat, also after its heartbeat key expired."""
        ts = await self.r.zscore(self.k("beats"), wid) if wid else None
        return None if ts is None else float(ts)

    async def remove_worker(self, wid: str) -> None:
        async with self.r.pipeline() as p:
            p.delete(self.k("worker", wid))
            p.srem(self.k("workers"), wid)
            p.zrem(self.k("beats"), wid)
            await p.execute()

    async def put_job(self, jid: str, rec: dict[str, str]) -> None:
        await self.r.hset(self.k("job", jid), mapping=rec)
        await self.r.sadd(self.k("jobs"), jid)

    async def get_job(self, jid: str) -> dict[str, str] | None:
        d = await self.r.hgetall(self.k("job", jid))
        return {_s(a): _s(b) for a, b in d.items()} if d else None

    async def update_job(self, jid: str, fields: dict[str, str]) -> bool:
        """Update a job's record if it still exists (False: deleted or expired; a worker then stops)."""
        flat = [x for kv in fields.items() for x in kv]
        return bool(await self.r.eval(UPDATE_JOB_LUA, 1, self.k("job", jid), *flat))

    async def delete_job(self, jid: str) -> None:
        async with self.r.pipeline() as p:
            p.delete(self.k("job", jid))
            p.srem(self.k("jobs"), jid)
            await p.execute()

    async def job_ids(self) -> list[str]:
        return [_s(x) for x in await self.r.smembers(self.k("jobs"))]

    async def claim_slot(self, kind: str, owner: str, item: str) -> None:
        """Per-key accounting (service.access.admit): `item` held by key `owner`, since now."""
        await self.r.zadd(self.k("keyslots", kind, owner), {item: time.time()})

    async def release_slot(self, kind: str, owner: str, item: str) -> None:
        await self.r.zrem(self.k("keyslots", kind, owner), item)

    async def slots(self, kind: str, owner: str) -> list[tuple[str, float]]:
        return [(_s(m), float(sc)) for m, sc in await self.r.zrange(self.k("keyslots", kind, owner), 0, -1,
                                                                   withscores=True)]

    # ------------------------------------------------------------------ broker
    async def send_work(self, wid: str, header: bytes, body: bytes) -> None:
        await self.r.xadd(self.k("work", wid), {b"h": header, b"b": body})

    async def _xread_many(self, streams: dict[str, str], block_s: float) -> list[tuple[str, str, dict]]:
        """(key, id, fields) of the entries after the given ids, several streams in one blocking call."""
        res = await self.r.xread(streams, count=64, block=max(1, int(block_s * 1000)))
        items = res.items() if isinstance(res, dict) else (res or [])
        return [(_s(key), _s(eid), fields) for key, entries in items for eid, fields in entries]

    async def _xread(self, key: str, last_id: str, block_s: float) -> list[Msg]:
        return [(eid, f[b"h"], f.get(b"b", b"")) for _k, eid, f in await self._xread_many({key: last_id}, block_s)]

    async def read_work(self, wid: str, last_id: str, block_s: float) -> list[Msg]:
        return await self._xread(self.k("work", wid), last_id, block_s)

    async def read_inputs(self, wid: str, work_after: str, frames_after: dict[str, str],
                          block_s: float) -> list[Input]:
        """The worker's one read: its work stream and the frames of the sessions it holds, in arrival order."""
        streams = {self.k("work", wid): work_after}
        sids = {self.k("frames", sid): sid for sid in frames_after}
        streams.update({key: frames_after[sid] for key, sid in sids.items()})
        got = [Input(sids.get(key, ""), eid, f[b"h"], f.get(b"b", b""))
               for key, eid, f in await self._xread_many(streams, block_s)]
        return sorted(got, key=lambda m: id_order(m.eid))

    async def submit_frame(self, sid: str, header: bytes, body: bytes, ttl_s: float, claim: str = ""
                           ) -> int | None:
        seq = await self._submit(keys=[self.k("session", sid), self.k("frames", sid)],
                                 args=[header, body, int(ttl_s) + 1, claim])
        return None if seq is None else int(seq)

    async def read_frames(self, sid: str, after_id: str) -> list[Msg]:
        """The session's frames after `after_id`: the replay log after a snapshot."""
        start = f"({after_id}" if after_id not in ("", "0") else "-"
        return [(_s(eid), f[b"h"], f.get(b"b", b"")) for eid, f in await self.r.xrange(self.k("frames", sid),
                                                                                       min=start)]

    async def work_depth(self, wid: str) -> int:
        return int(await self.r.xlen(self.k("work", wid)))

    async def drop_work(self, wid: str) -> None:
        await self.r.delete(self.k("work", wid))

    async def trim_work(self, wid: str, upto_id: str) -> None:
        """Forget handled work entries (keeps the stream short)."""
        await self.r.xtrim(self.k("work", wid), minid=upto_id)

    async def deliver(self, sid: str, answers: list[Answer]) -> None:
        """Answers that change no session state (errors, pings), in one round trip."""
        async with self.r.pipeline() as p:
            for a in answers:
                if a.req:
                    p.rpush(self.k("reply", a.req), a.body, b"")
                    p.expire(self.k("reply", a.req), 120)
                else:
                    p.xadd(self.k("results", sid), {b"h": a.body, b"s": a.seq, b"t": a.kind},
                           maxlen=self.RESULT_MAXLEN, approximate=True)
            await p.execute()

    @staticmethod
    def _result(eid: str, f: dict) -> Result:
        return Result(eid, f[b"h"], int(f.get(b"s") or 0), _s(f.get(b"t", b"")))

    async def read_results(self, sid: str, last_id: str, block_s: float) -> list[Result]:
        return [self._result(eid, f) for _k, eid, f in
                await self._xread_many({self.k("results", sid): last_id}, block_s)]

    async def last_result(self, sid: str) -> Result | None:
        res = await self.r.xrevrange(self.k("results", sid), count=1)
        return self._result(_s(res[0][0]), res[0][1]) if res else None

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



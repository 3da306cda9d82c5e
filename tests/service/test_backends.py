"""Store/broker contract, run against both implementations (real Redis and in-process)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from service.backends import MemoryBackend, RedisBackend

REDIS_URL = "redis://127.0.0.1:6379/0"


def _backends() -> list:
    return ["memory", "redis"]


async def _make(kind: str) -> MemoryBackend | RedisBackend:
    if kind == "memory":
        return MemoryBackend()
    b = RedisBackend(REDIS_URL, prefix=f"lwltest-{uuid.uuid4().hex[:8]}")
    if not await b.ping():
        pytest.skip("no Redis on 127.0.0.1:6379 (run bash .ci/ensure-redis.sh)")
    return b


async def _cleanup(b: MemoryBackend | RedisBackend) -> None:
    if isinstance(b, RedisBackend):
        keys = [k async for k in b.r.scan_iter(match=f"{b.p}:*")]
        if keys:
            await b.r.delete(*keys)
    await b.close()


@pytest.mark.parametrize("kind", _backends())
def test_sessions_workers_jobs(kind: str) -> None:
    async def run() -> None:
        b = await _make(kind)
        try:
            await b.put_session("s1", {"id": "s1", "worker": "w1", "seq_next": "0"}, ttl_s=30)
            assert (await b.get_session("s1"))["worker"] == "w1"
            assert await b.next_seq("s1") == 1 and await b.next_seq("s1") == 2
            assert await b.update_session("s1", {"frames": "3"}, ttl_s=30)
            assert not await b.update_session("nope", {"frames": "3"})
            assert await b.session_ids() == ["s1"]
            await b.put_snapshot("s1", b"snap", 30)
            await b.append_replay("s1", b"r1", 30)
            await b.append_replay("s1", b"r2", 30)
            assert await b.get_replay("s1") == [b"r1", b"r2"]
            await b.put_snapshot("s1", b"snap2", 30)  # a new snapshot empties the replay log
            assert await b.get_snapshot("s1") == b"snap2" and await b.get_replay("s1") == []
            await b.delete_session("s1")
            assert await b.get_session("s1") is None and await b.get_snapshot("s1") is None

            await b.heartbeat("w1", {"id": "w1", "free": 2}, ttl_s=0.3)
            assert [w["id"] for w in await b.live_workers()] == ["w1"]
            await asyncio.sleep(0.5)
            assert await b.live_workers() == []

            await b.put_job("j1", {"id": "j1", "state": "queued"})
            await b.update_job("j1", {"state": "running"})
            assert (await b.get_job("j1"))["state"] == "running"
            await b.submit_job("j1")
            entry, jid = await b.take_job("w1", 1.0)
            assert jid == "j1"
            await b.ack_job(entry)
            assert await b.take_job("w1", 0.1) is None
        finally:
            await _cleanup(b)

    asyncio.run(run())


@pytest.mark.parametrize("kind", _backends())
def test_streams_keep_order_and_block(kind: str) -> None:
    async def run() -> None:
        b = await _make(kind)
        try:
            for i in range(5):
                await b.send_work("w1", f'{{"i": {i}}}'.encode(), bytes([i]) * 3)
            got = await b.read_work("w1", "0", 0.1)
            assert [body for _, _, body in got] == [bytes([i]) * 3 for i in range(5)]
            assert await b.read_work("w1", got[-1][0], 0.1) == []

            async def later() -> None:
                await asyncio.sleep(0.2)
                await b.publish_result("s1", b'{"seq": 1}', b"")

            task = asyncio.create_task(later())
            res = await b.read_results("s1", "0", 3.0)
            await task
            assert res and res[0][1] == b'{"seq": 1}'
            assert (await b.last_result("s1"))[1] == b'{"seq": 1}'

            async def answer() -> None:
                await asyncio.sleep(0.1)
                await b.reply("r1", b"head", b"body")

            task = asyncio.create_task(answer())
            assert await b.wait_reply("r1", 3.0) == (b"head", b"body")
            await task
            assert await b.wait_reply("r2", 1.0) is None
        finally:
            await _cleanup(b)

    asyncio.run(run())


def test_job_of_dead_worker_is_taken_over() -> None:
    async def run() -> None:
        b = await _make("redis")
        b.ORPHAN_IDLE_MS = 50
        try:
            await b.put_job("j1", {"id": "j1", "state": "queued"})
            await b.submit_job("j1")
            await b.heartbeat("w-live", {"id": "w-live"}, ttl_s=30)
            assert (await b.take_job("w-dead", 1.0))[1] == "j1"  # w-dead never heartbeats
            await asyncio.sleep(0.1)
            entry, jid = await b.take_job("w-live", 0.1)
            assert jid == "j1"
            await b.ack_job(entry)
            await asyncio.sleep(0.1)
            assert await b.take_job("w-live", 0.1) is None
        finally:
            await _cleanup(b)

    asyncio.run(run())

"""CPU lanes take queued frames as soon as they are free. The worker once stepped each read's frames as
one block, so a lane that finished early idled until the other lane's frames were done too; here a
session with quick frames must not wait for another session's slow frame on the other lane, and
every session's answers stay in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

import service.worker as worker_module
from service.backends import MemoryBackend
from service.codec import pack
from service.settings import Settings
from service.worker import HeldSession, Worker


class SleepyTracker:
    """Stands in for a tracker: each step takes `delay` seconds and counts the frames."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.frame_index = 0
        self.frame_hw = (4, 4)
        self.crop_hw = (32, 32)
        self.object_ids = [1]

    def _check_frame(self, frame: np.ndarray) -> None:
        return None

    def step(self, frame: np.ndarray) -> int:
        time.sleep(self.delay)  # sleeps without the GIL, as torch's kernels run
        self.frame_index += 1
        return self.frame_index


class NoModel:
    device = "cpu"
    name = "sleepy"
    has_box_encoder = False
    default_crop_size = (32, 32)


@pytest.fixture
def sleepy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No decode, no encode; step_many steps each tracker alone."""
    monkeypatch.setattr(Worker, "_decode", lambda self, image: np.zeros((4, 4, 3), np.uint8))
    monkeypatch.setattr(Worker, "_encode", staticmethod(
        lambda res, fmt, ms: {"type": "result", "frame_index": res, "compute_ms": round(ms, 3)}))
    monkeypatch.setattr(worker_module, "step_many", lambda items, max_batch=0: [tr.step(f) for tr, f in items])


@contextlib.asynccontextmanager
async def _two_lane_worker(delays: dict[str, float]) -> AsyncIterator[tuple[MemoryBackend, Worker]]:
    """A started worker with 2 CPU lanes holding one sleepy session per entry of `delays`."""
    b = MemoryBackend()
    w = Worker(Settings(torch_threads=2, cpu_lanes=2, snapshot_every=1000, heartbeat_s=60),
               b, model=NoModel(), worker_id="w")
    await w.start()
    try:
        for sid, delay in delays.items():
            await b.put_session(sid, {"worker": w.id}, 600)
            w.sessions[sid] = HeldSession(tracker=SleepyTracker(delay))
        yield b, w
    finally:
        await w.stop()


async def _answers(b: MemoryBackend, sid: str, n: int, timeout: float) -> list[tuple[float, dict[str, Any]]]:
    """The first n results of a session with the time each was read."""
    got: list[tuple[float, dict[str, Any]]] = []
    last, end = "0", time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        for r in await b.read_results(sid, last, 0.5):
            last = r.eid
            got.append((time.monotonic(), json.loads(r.body)))
    return got


def _lanes_busy_s() -> float:
    return sum(REGISTRY.get_sample_value("lwl_lane_busy_seconds_total", {"lane": k}) or 0.0 for k in "01")


def test_a_free_lane_steps_the_next_frames_while_the_other_lane_is_busy(sleepy: None) -> None:
    busy_before = _lanes_busy_s()

    async def main() -> tuple[list, list, float]:
        async with _two_lane_worker({"slow": 1.5, "quick": 0.05}) as (b, w):
            assert w.lane_count == 2
            t0 = time.monotonic()
            await b.submit_frame("slow", *pack({"op": "frame"}, b"x"), 600)
            await b.submit_frame("quick", *pack({"op": "frame"}, b"x"), 600)
            await asyncio.sleep(0.3)  # the worker has read those two and is stepping them on both lanes
            for _ in range(5):
                await b.submit_frame("quick", *pack({"op": "frame"}, b"x"), 600)
            slow, quick = await asyncio.gather(_answers(b, "slow", 1, 30), _answers(b, "quick", 6, 30))
            return slow, quick, t0

    slow, quick, t0 = asyncio.run(main())
    assert [a["frame_index"] for _, a in slow] == [1]
    assert [a["frame_index"] for _, a in quick] == [1, 2, 3, 4, 5, 6]  # in order, none lost
    assert [a["seq"] for _, a in quick] == sorted(a["seq"] for _, a in quick)
    # the quick frames sent while the slow one (1.5 s) is stepped are answered before it ends
    assert quick[-1][0] < slow[0][0], (quick[-1][0] - t0, slow[0][0] - t0)
    # lwl_lane_busy_seconds counts the steps: 1.5 s + 6 x 0.05 s, plus answering them
    assert 1.8 <= _lanes_busy_s() - busy_before < 4.0


def test_an_op_waits_for_the_frames_before_it_and_precedes_those_after(sleepy: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    async def op_probe(self: Worker, h: dict[str, Any], blobs: list[bytes]) -> tuple[None, None]:
        seen.append(self.sessions[h["sid"]].tracker.frame_index)
        return None, None

    monkeypatch.setattr(Worker, "_op_probe", op_probe, raising=False)

    async def main() -> list[int]:
        async with _two_lane_worker({"a": 0.1, "b": 0.1}) as (b, w):
            for _ in range(3):
                for sid in ("a", "b"):
                    await b.submit_frame(sid, *pack({"op": "frame"}, b"x"), 600)
            await b.send_work(w.id, *pack({"op": "probe", "sid": "a"}))
            for _ in range(2):
                await b.submit_frame("a", *pack({"op": "frame"}, b"x"), 600)
            got = await _answers(b, "a", 5, 30)
            return [a["frame_index"] for _, a in got]

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]
    assert seen == [3]


def test_an_op_does_not_wait_for_other_sessions_frames(sleepy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The api sends `adopt` for every stream that waited a second for an answer: under load, ops that
    waited for the whole queue each time starved the lanes."""
    handled: list[tuple[str, float]] = []

    async def op_probe(self: Worker, h: dict[str, Any], blobs: list[bytes]) -> tuple[None, None]:
        handled.append((h["sid"], time.monotonic()))
        return None, None

    monkeypatch.setattr(Worker, "_op_probe", op_probe, raising=False)

    async def main() -> list:
        async with _two_lane_worker({"slow": 1.5, "quick": 0.05}) as (b, w):
            for sid in ("slow", "slow", "quick"):
                await b.submit_frame(sid, *pack({"op": "frame"}, b"x"), 600)
            await asyncio.sleep(0.3)  # the first slow frame is being stepped, the second waits
            await b.send_work(w.id, *pack({"op": "adopt", "sid": "slow"}))  # held here: a no-op
            await b.send_work(w.id, *pack({"op": "probe", "sid": "quick"}))
            await b.submit_frame("quick", *pack({"op": "frame"}, b"x"), 600)
            slow, quick = await asyncio.gather(_answers(b, "slow", 2, 30), _answers(b, "quick", 2, 30))
            return [slow, quick]

    slow, quick = asyncio.run(main())
    assert [a["frame_index"] for _, a in slow] == [1, 2]
    assert [a["frame_index"] for _, a in quick] == [1, 2]
    assert [sid for sid, _ in handled] == ["quick"]
    # the op on "quick" and the frame after it did not wait for the slow session's queued frames
    assert handled[0][1] < slow[0][0] and quick[1][0] < slow[0][0]

"""Load: 16 sessions x 50 frames at once over `lwl api` + two `lwl worker` processes on Redis, through
real WebSocket clients. Every frame is answered once, in order, with a result: 0 lost, duplicated or
reordered, every session answered, both workers used.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import httpx
import pytest
import websockets
from conftest import first_mask, jpeg_bytes, make_frame

from model.media import encode_label_png

SESSIONS, FRAMES = 16, int(os.environ.get("LWL_LOAD_FRAMES", "50"))  # make load: 200


def _frames(seed: int) -> list[str]:
    """A session's frames, encoded before any stream opens (encoding 16 x 200 JPEGs inside the event loop
    would stall it past the WebSocket keepalive of the streams already open)."""
    return [base64.b64encode(jpeg_bytes(make_frame(i % 20, seed))).decode() for i in range(1, FRAMES + 1)]


async def _session(url: str, seed: int, images: list[str]) -> tuple[str, list[dict]]:
    """Create a session, then send FRAMES frames (mode=all, ids 1..FRAMES) while reading the answers."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        r = await c.post("/v1/sessions", files={"image": jpeg_bytes(make_frame(0, seed)),
                                                 "mask": encode_label_png(first_mask())})
        assert r.status_code == 201, r.text
        created = r.json()
    answers: list[dict] = []
    async with websockets.connect(created["ws_url"] + "&max_inflight=4", max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"

        async def send() -> None:
            for i, image in enumerate(images, 1):
                await ws.send(json.dumps({"type": "frame", "id": i, "image": image}))

        sender = asyncio.create_task(send())
        while len(answers) < FRAMES:
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 90)))
        await sender
        await ws.send(json.dumps({"type": "close"}))
        extra = [json.loads(m) async for m in ws]  # nothing more may come: a duplicate would show here
        assert extra == [], extra
    return created["worker_id"], answers


@pytest.mark.slow
def test_16_sessions_50_frames_two_workers(cluster_factory) -> None:  # noqa: ANN001
    c = cluster_factory(True, LWL_MAX_SESSIONS_PER_WORKER="10", LWL_MAX_BATCH="8")
    c.start("api")
    c.start("worker", LWL_WORKER_ID="load-a")
    c.start("worker", LWL_WORKER_ID="load-b")
    c.wait_ready(workers=2)

    frames = [_frames(seed) for seed in range(SESSIONS)]

    async def main() -> list[tuple[str, list[dict]]]:
        return await asyncio.gather(*(_session(c.url, seed, frames[seed]) for seed in range(SESSIONS)))

    t0 = time.monotonic()
    runs = asyncio.run(main())
    dt = time.monotonic() - t0
    print(f"\n{SESSIONS} sessions x {FRAMES} frames over 2 workers: {dt:.1f} s, "
          f"{SESSIONS * FRAMES / dt:.1f} frames/s")
    assert len(runs) == SESSIONS
    for wid, answers in runs:
        kinds = [a["type"] for a in answers]
        assert kinds == ["result"] * FRAMES, [a for a in answers if a["type"] != "result"][:3]
        assert [a["id"] for a in answers] == list(range(1, FRAMES + 1))  # none lost, doubled or reordered
        assert [a["frame_index"] for a in answers] == list(range(1, FRAMES + 1))
        seqs = [a["seq"] for a in answers]
        assert seqs == list(range(seqs[0], seqs[0] + FRAMES))
        assert {a["worker_id"] for a in answers} == {wid}  # no worker died: each session stayed put
    assert {wid for wid, _ in runs} == {"load-a", "load-b"}
    workers = {w["id"]: w for w in httpx.get(f"{c.url}/v1/workers").json()}
    assert sum(w["sessions"] for w in workers.values()) == SESSIONS  # placement need not be even

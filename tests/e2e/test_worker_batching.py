"""One worker, several sessions streaming at once: their frames are stepped together, each session's
answers stay in order and none is lost (lwl serve and api + worker + Redis). With LWL_CPU_LANES=2 the
waiting sessions are split over two lanes stepping side by side: the masks must still be exactly
those of `lwl segment` on each session's frames (one torch thread everywhere, as in `lwl segment`:
another thread count sums in another order, which the tiny random model's near-0.5 masks show)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from conftest import first_mask, free_port, jpeg_bytes, lwl_segment, make_frame
from PIL import Image

from model.media import encode_label_png, write_label_png
from service.codec import labels_from_result

N_SESSIONS, N_FRAMES = 4, 8


def _batches(url: str) -> tuple[float, float]:
    """(frames stepped in batches, batches) from the worker's lwl_batch_frames histogram."""
    text = httpx.get(url).text
    total = re.search(r"^lwl_batch_frames_sum (\S+)$", text, re.M)
    count = re.search(r"^lwl_batch_frames_count (\S+)$", text, re.M)
    return (float(total.group(1)) if total else 0.0), (float(count.group(1)) if count else 0.0)


async def _stream(url: str, seed: int) -> list[dict]:
    """Create a session and stream all frames at once (mode=all): the answers, in arrival order."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        r = await c.post("/v1/sessions", files={"image": jpeg_bytes(make_frame(0, seed)),
                                                 "mask": encode_label_png(first_mask())})
        assert r.status_code == 201, r.text
        created = r.json()
    answers = []
    ws_url = created["ws_url"].split("?")[0] + "?max_inflight=4"
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "auth", "token": created["token"]}))
        assert json.loads(await ws.recv())["type"] == "ready"
        for i in range(1, N_FRAMES + 1):
            image = base64.b64encode(jpeg_bytes(make_frame(i, seed))).decode()
            await ws.send(json.dumps({"type": "frame", "id": i, "image": image}))
        while len(answers) < N_FRAMES:
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
    return answers


def _offline_labels(weights: Path, tmp: Path, seed: int) -> list[np.ndarray]:
    """`lwl segment` on the very JPEG bytes the session streamed: its label maps of frames 1..N."""
    d = tmp / f"offline-{seed}"
    (d / "frames").mkdir(parents=True)
    for i in range(N_FRAMES + 1):
        (d / "frames" / f"{i:05d}.jpg").write_bytes(jpeg_bytes(make_frame(i, seed)))
    write_label_png(d / "mask.png", first_mask())
    pngs = lwl_segment(weights, d / "frames", d, "--mask", str(d / "mask.png"))
    return [np.asarray(Image.open(io.BytesIO(p))) for p in pngs[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("redis,lanes", [(False, 0), (True, 0), (False, 2)],
                         ids=["serve", "api+worker+redis", "serve-2-cpu-lanes"])
def test_sessions_stream_at_once_in_order(cluster_factory, weights, tmp_path, redis: bool,  # noqa: ANN001
                                          lanes: int) -> None:
    port = free_port()
    c = cluster_factory(redis, LWL_MAX_BATCH="8", LWL_MAX_SESSIONS_PER_WORKER="8", LWL_CPU_LANES=str(lanes))
    if redis:
        c.start("api")
        c.start("worker", LWL_WORKER_METRICS_PORT=str(port))
        metrics = f"http://127.0.0.1:{port}/metrics"
    else:
        c.start("serve")
        metrics = c.url + "/metrics"
    c.wait_ready(workers=1)

    async def main() -> list[list[dict]]:
        return await asyncio.gather(*(_stream(c.url, seed) for seed in range(N_SESSIONS)))

    every = asyncio.run(main())
    for answers in every:
        assert [a["type"] for a in answers] == ["result"] * N_FRAMES, answers
        assert [a["id"] for a in answers] == list(range(1, N_FRAMES + 1))
        assert [a["frame_index"] for a in answers] == list(range(1, N_FRAMES + 1))
        assert np.all(np.diff([a["seq"] for a in answers]) > 0)
    frames, batches = _batches(metrics)
    # some steps held several sessions' frames (with two lanes, two waiting sessions take one lane each)
    assert batches > 0 and (frames > batches or lanes), (frames, batches)
    if lanes:
        assert '"lanes": 2' in c.procs[0].logs(), c.procs[0].logs()[-2000:]
        for seed, answers in enumerate(every[:2]):
            for i, (got, want) in enumerate(zip((labels_from_result(a) for a in answers),
                                                _offline_labels(weights, tmp_path, seed), strict=True)):
                assert np.array_equal(got, want), (seed, i, int((got != want).sum()))

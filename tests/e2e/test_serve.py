"""`lwl serve` (api + in-process worker, no Redis): SDK and a plain WebSocket client, metrics, JSON logs,
and every kind of bad input answered with a 4xx JSON body while other sessions stay intact.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re

import httpx
import numpy as np
import pytest
from conftest import first_mask, jpeg_bytes, make_frame, offline_pngs
from PIL import Image
from websockets.sync.client import connect

from model.media import encode_label_png
from service.client import AsyncClient, Client, LWLError


def _frames_metric(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    m = re.search(r"^lwl_frames_segmented_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def serve(cluster_factory):  # noqa: ANN001, ANN201
    c = cluster_factory(False, LWL_MAX_UPLOAD_MB="1", LWL_MAX_FRAME_PIXELS=str(400 * 400))
    proc = c.start("serve")
    c.wait_ready(workers=1)
    c.proc = proc
    return c


@pytest.mark.slow
def test_serve_sdk_metrics_and_raw_websocket(serve, clip, weights, tmp_path) -> None:  # noqa: ANN001
    frames, mask = clip["frames"], clip["mask"]
    ref = offline_pngs(weights, frames, mask, tmp_path / "offline")
    client = Client(serve.url)
    before = _frames_metric(serve.url)

    s = client.create_session(frames[0], mask=mask)
    assert base64.b64decode(s.result["labels"]) == ref[0]
    out = list(s.stream(frames[1:3]))
    assert [base64.b64decode(m["labels"]) for m in out] == ref[1:3]
    assert all(m["compute_ms"] > 0 and len(m["objects"]) == 2 for m in out)
    assert _frames_metric(serve.url) - before == 3  # create + 2 streamed frames
    text = httpx.get(f"{serve.url}/metrics").text
    for name in ("lwl_frame_latency_seconds_bucket", 'stage="end_to_end"', 'stage="model"',
                 "lwl_active_sessions", "lwl_queue_depth", "lwl_jobs", "lwl_device_memory_bytes"):
        assert name in text

    # a plain WebSocket client, as a browser would: token in the first message, JSON envelope, RLE masks
    s2 = client.create_session(frames[0], mask=mask)
    ws_url = s2.ws_url.split("?")[0] + "?format=rle"
    with connect(ws_url) as ws:
        ws.send(json.dumps({"type": "auth", "token": s2.token}))
        ready = json.loads(ws.recv())
        assert ready["type"] == "ready" and ready["format"] == "rle"
        b64 = base64.b64encode(frames[1].read_bytes()).decode()
        ws.send(json.dumps({"type": "frame", "id": "f1", "image": b64}))
        msg = json.loads(ws.recv())
        assert msg["type"] == "result" and msg["id"] == "f1" and msg["frame_index"] == 1
        assert encode_label_png(s2.labels(msg)) == ref[1]
        ws.send(b"not an image")
        err = json.loads(ws.recv())
        assert err["type"] == "error" and err["code"] == "bad_image"
        ws.send(frames[2].read_bytes())  # the session goes on after a bad frame
        msg = json.loads(ws.recv())
        assert msg["frame_index"] == 2 and encode_label_png(s2.labels(msg)) == ref[2]

    with connect(s2.ws_url.split("?")[0] + "?token=wrong") as ws, pytest.raises(Exception):  # noqa: B017
        ws.recv()
        ws.recv()
    assert ws.close_code == 4403

    # mode=latest, one frame in flight: a burst is answered in order, the newest frame always processed
    s3 = client.create_session(frames[0], mask=mask)
    burst = [frames[1], frames[2], frames[3], frames[1], frames[2], frames[3]]
    msgs = list(s3.stream(burst, mode="latest", max_inflight=1))
    assert len(msgs) == len(burst) and {m["type"] for m in msgs} <= {"result", "skipped"}
    done = [m["frame_index"] for m in msgs if m["type"] == "result"]
    assert done == list(range(1, len(done) + 1)) and msgs[-1]["type"] == "result"

    # the asyncio SDK: same masks
    async def run_async() -> list[dict]:
        async with AsyncClient(serve.url) as ac:
            s4 = await ac.create_session(frames[0], mask=mask)
            out = [m async for m in s4.stream(frames[1:2])]
            await s4.delete()
            return out

    out = asyncio.run(run_async())
    assert [base64.b64decode(m["labels"]) for m in out] == ref[1:2]

    # JSON logs: one object per line, with session ids
    lines = [json.loads(line) for line in serve.proc.logs().splitlines() if line.startswith("{")]
    assert any(rec.get("session_id") == s.id for rec in lines)
    assert s.token not in serve.proc.logs() and s3.token not in serve.proc.logs()  # tokens are redacted


@pytest.mark.slow
def test_bad_input_gets_4xx_and_leaves_sessions_intact(serve, clip) -> None:  # noqa: ANN001
    frames, mask = clip["frames"], clip["mask"]
    url = serve.url
    good = Client(url).create_session(frames[0], mask=mask)
    img, msk = frames[0].read_bytes(), mask.read_bytes()

    def post(files: dict, data: dict | None = None, path: str = "/v1/sessions") -> httpx.Response:
        return httpx.post(url + path, files=files, data=data or {}, timeout=60)

    cases = {
        "bad_image": post({"image": b"\xff\xd8garbage", "mask": msk}),
        "mask_size_mismatch": post({"image": img, "mask": encode_label_png(np.ones((60, 80), np.uint8))}),
        "empty_mask": post({"image": img, "mask": encode_label_png(np.zeros((120, 160), np.uint8))}),
        "box_outside_frame": post({"image": img}, {"boxes": json.dumps({"1": [165, 10, 40, 40]})}),
        "no_objects": post({"image": img}),
        "bad_boxes": post({"image": img}, {"boxes": "[1, 2"}),
        "upload_too_large": post({"image": b"\x00" * (1024 * 1024 + 10), "mask": msk}),
        "frame_too_large": post({"image": jpeg_bytes(np.zeros((500, 500, 3), np.uint8)), "mask": msk}),
        "bad_video": post({"video": b"this is not a video"}, {"boxes": json.dumps({"1": [1, 1, 5, 5]})},
                          path="/v1/jobs"),
    }
    expect = {"upload_too_large": 413, "frame_too_large": 413}
    for code, r in cases.items():
        assert r.status_code == expect.get(code, 400), (code, r.status_code, r.text)
        body = r.json()
        assert body["code"] == code and body["detail"], (code, body)

    auth = {"Authorization": f"Bearer {good.token}"}
    r = httpx.get(f"{url}/v1/sessions/0123456789abcdef", headers=auth)
    assert r.status_code == 404 and r.json()["code"] == "unknown_session"
    r = httpx.get(f"{url}/v1/sessions/{good.id}", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json()["code"] == "wrong_token"
    r = httpx.get(f"{url}/v1/sessions/{good.id}")
    assert r.status_code == 401
    # unknown object id in a correction: the model's InputError becomes a 400
    bad = np.zeros((120, 160), np.uint8)
    bad[5:20, 5:20] = 7
    r = httpx.post(f"{url}/v1/sessions/{good.id}/corrections", headers=auth,
                   files={"mask": encode_label_png(bad)}, timeout=60)
    assert r.status_code == 400 and "7" in r.json()["detail"], r.text
    r = httpx.delete(f"{url}/v1/sessions/{good.id}/objects/9", headers=auth, timeout=60)
    assert r.status_code == 404 and r.json()["code"] == "unknown_object"
    r = httpx.post(f"{url}/v1/sessions/{good.id}/frames", headers=auth, files={"image": b"junk"})
    assert r.status_code == 400

    # the good session is untouched: next frame over HTTP segments as usual
    res = good.segment(make_frame(1))
    assert res["frame_index"] == 1 and [o["id"] for o in res["objects"]] == [1, 2]
    # a correction of tracked objects on the current frame
    res = good.correct(first_mask())
    assert res["frame_index"] == 1 and sorted(o["id"] for o in res["objects"]) == [1, 2]
    # and the add-object path works on the current frame
    extra = np.zeros((120, 160), np.uint8)
    extra[5:25, 120:150] = 3
    res = good.add_objects(mask=extra)
    assert sorted(o["id"] for o in res["objects"]) == [1, 2, 3]
    assert good.info()["objects"] == [1, 2, 3]
    with pytest.raises(LWLError):
        good.add_objects(boxes={4: (-50, 0, 10, 10)})  # no area inside the frame (past its edge is clipped)
    assert first_mask().shape == Image.open(io.BytesIO(base64.b64decode(res["labels"]))).size[::-1]

    # deleting a session closes its open stream with 4410
    with connect(good.ws_url) as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        good.delete()
        with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed
            ws.recv(timeout=10)
    assert ws.close_code == 4410

"""Edits inside the live WebSocket stream and sessions saved and restored (issue 25), with real
processes: `lwl serve` and a plain WebSocket client speaking docs/API.md. An edit sent mid-stream, with
frames and edits in flight (max_inflight 4), gives the masks of the same edits sent over REST at the
same frame; a saved session continues identically in a new session and in the library; bad blobs and
malformed edits get their documented 4xx codes."""

from __future__ import annotations

import base64
import io
import json
import struct

import httpx
import numpy as np
import pytest
from conftest import H, W, first_mask, jpeg_bytes, make_frame
from PIL import Image
from websockets.sync.client import connect

from model.media import encode_label_png

FRAMES = [jpeg_bytes(make_frame(i)) for i in range(8)]


def correction() -> np.ndarray:
    """Object 1 moved by hand; object 2 kept where it started."""
    m = np.zeros((H, W), np.uint8)
    m[26:66, 30:80] = 1
    m[70:105, 96:136] = 2
    return m


BOX3 = {"3": [110, 10, 30, 25]}


def labels(msg: dict) -> np.ndarray:
    assert msg["type"] in ("result", "corrected", "added", "removed"), msg
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(msg["labels"]))))


def binary_edit(header: dict, png: bytes) -> bytes:
    """docs/API.md's binary edit: LWLM, the JSON header's length (big-endian), the header, the PNG."""
    text = json.dumps(header).encode()
    return b"LWLM" + struct.pack(">I", len(text)) + text + png


def create(url: str, **files: bytes) -> dict:
    parts = files or {"image": FRAMES[0], "mask": encode_label_png(first_mask())}
    r = httpx.post(f"{url}/v1/sessions", files={k: (k, v) for k, v in parts.items()}, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def rest_reference(url: str) -> list[np.ndarray]:
    """Frames 1-2, correct, frame 3, add box 3, frame 4, remove 2, frame 5: paused, each edit over REST."""
    s = create(url)
    auth = {"Authorization": f"Bearer {s['token']}"}
    base = f"{url}/v1/sessions/{s['session_id']}"

    def frame(i: int) -> dict:
        return httpx.post(f"{base}/frames", files={"image": ("f", FRAMES[i])}, headers=auth, timeout=60).json()

    out = [frame(1), frame(2)]
    out.append(httpx.post(f"{base}/corrections", files={"mask": ("m", encode_label_png(correction()))},
                          headers=auth, timeout=60).json())
    out.append(frame(3))
    out.append(httpx.post(f"{base}/objects", data={"boxes": json.dumps(BOX3)}, headers=auth, timeout=60).json())
    out.append(frame(4))
    httpx.delete(f"{base}/objects/2", headers=auth, timeout=60).raise_for_status()
    out.append(frame(5))
    return [labels(m) for m in out]  # f1, f2, corrected, f3, added, f4, f5


def stream_edits(ws_url: str) -> tuple[list[dict], dict]:
    """The same frames and edits, all sent at once on one stream with 4 in flight (the correction as a
    binary edit, the others as JSON)."""
    with connect(ws_url + "&max_inflight=4", max_size=None) as ws:
        ready = json.loads(ws.recv())
        sent = [FRAMES[1], FRAMES[2],
                binary_edit({"type": "correct", "id": "c1"}, encode_label_png(correction())),
                FRAMES[3], json.dumps({"type": "add", "boxes": BOX3, "id": "a3"}), FRAMES[4],
                json.dumps({"type": "remove", "object_id": 2, "id": "r2"}), FRAMES[5]]
        for m in sent:
            ws.send(m)
        answers = [json.loads(ws.recv()) for _ in sent]
    return answers, ready


@pytest.fixture
def serve(cluster_factory):  # noqa: ANN001, ANN201
    c = cluster_factory(False, LWL_MAX_SESSION_STATE_MB="40")
    c.start("serve")
    c.wait_ready(workers=1)
    return c


@pytest.mark.slow
def test_edits_in_the_stream_equal_rest_edits_and_a_saved_session_continues(serve, weights) -> None:  # noqa: ANN001
    ref = rest_reference(serve.url)
    s = create(serve.url)
    answers, ready = stream_edits(s["ws_url"])
    assert [a["type"] for a in answers] == ["result", "result", "corrected", "result", "added", "result",
                                            "removed", "result"]
    assert [a["seq"] for a in answers] == list(range(ready["next_seq"], ready["next_seq"] + 8))
    assert [answers[k].get("id") for k in (2, 4, 6)] == ["c1", "a3", "r2"]
    edits = [answers[k] for k in (2, 4, 6)]
    assert [o["id"] for o in edits[1]["objects"]] == [1, 2, 3] and edits[2]["object_id"] == 2
    got = [labels(answers[k]) for k in (0, 1, 2, 3, 4, 5, 7)]
    assert [np.array_equal(a, b) for a, b in zip(got, ref, strict=True)] == [True] * 7
    assert not (labels(answers[6]) == 2).any() and set(np.unique(got[-1])) <= {0, 1, 3}
    got = got[-1]

    # save, restore into a new session and into the library: both continue with the same masks
    auth = {"Authorization": f"Bearer {s['token']}"}
    r = httpx.get(f"{serve.url}/v1/sessions/{s['session_id']}/state", headers=auth, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    blob = r.content
    assert httpx.get(f"{serve.url}/v1/sessions/{s['session_id']}/state", timeout=10).status_code == 401
    twin = create(serve.url, state=blob)
    assert [o["id"] for o in twin["objects"]] == [1, 3]
    assert np.array_equal(labels(twin["result"]), got)
    a = [httpx.post(f"{serve.url}/v1/sessions/{x['session_id']}/frames", files={"image": ("f", FRAMES[6])},
                    headers={"Authorization": f"Bearer {x['token']}"}, timeout=60).json() for x in (s, twin)]
    assert np.array_equal(labels(a[0]), labels(a[1]))

    import torch

    from model.api import load_model
    from model.media import read_image

    torch.set_num_threads(1)
    tracker = load_model(weights=weights, device="cpu", threads=None).restore_tracker(blob)
    lib = tracker.step(read_image(FRAMES[6]))
    assert np.array_equal(lib.labels, labels(a[0]))
    back = create(serve.url, state=tracker.export_state())  # and from the notebook back into the service
    assert np.array_equal(labels(back["result"]), lib.labels)


def test_bad_blobs_are_4xx(serve) -> None:  # noqa: ANN001
    s = create(serve.url)
    blob = httpx.get(f"{serve.url}/v1/sessions/{s['session_id']}/state",
                     headers={"Authorization": f"Bearer {s['token']}"}, timeout=60).content
    n = struct.unpack(">I", blob[8:12])[0]
    head = json.loads(blob[12 : 12 + n])

    def with_head(**fields: object) -> bytes:
        text = json.dumps({**head, **fields}).encode()
        return b"LWLSTATE" + struct.pack(">I", len(text)) + text + blob[12 + n :]

    cases = {"truncated": (blob[: len(blob) // 2], 400, "bad_state"),
             "header cut": (blob[:20], 400, "bad_state"),
             "other model": (with_head(model="other"), 400, "unknown_model"),
             "other weights": (with_head(weights="0123456789abcdef"), 400, "unknown_model"),
             "other version": (with_head(version=2), 400, "bad_state"),
             "torch zip (v2)": (b"PK\x03\x04" + bytes(100), 400, "bad_state"),
             "not a state": (b"hello", 400, "bad_state"),
             "too many objects": (with_head(objects=list(range(1, 40))), 400, "too_many_objects"),
             "huge frames": (with_head(frame_hw=[10000, 10000]), 413, "frame_too_large"),
             "payload lies": (with_head(objects=[1]), 400, "bad_state"),
             "oversized": (blob + bytes(41 << 20), 413, "state_too_large")}
    for name, (data, status, code) in cases.items():
        r = httpx.post(f"{serve.url}/v1/sessions", files={"state": ("s", data)}, timeout=60)
        assert (r.status_code, r.json().get("code")) == (status, code), (name, r.status_code, r.text[:300])
    r = httpx.post(f"{serve.url}/v1/sessions", files={"state": ("s", blob), "image": ("i", FRAMES[0])}, timeout=60)
    assert (r.status_code, r.json()["code"]) == (400, "bad_state")
    assert create(serve.url, state=blob)["objects"]  # the good blob still works
    paths = httpx.get(f"{serve.url}/openapi.json").json()["paths"]
    assert "get" in paths["/v1/sessions/{sid}/state"] and "state" in json.dumps(paths["/v1/sessions"]["post"])


def test_malformed_edits_get_errors_and_the_stream_goes_on(serve) -> None:  # noqa: ANN001
    s = create(serve.url)
    small = encode_label_png(np.ones((10, 10), np.uint8))
    bad = [(json.dumps({"type": "correct", "id": 1}), 400, "bad_mask"),
           (json.dumps({"type": "correct", "mask": "***", "id": 2}), 400, "bad_mask"),
           (json.dumps({"type": "correct", "mask": base64.b64encode(small).decode(), "id": 3}), 400,
            "mask_size_mismatch"),
           (json.dumps({"type": "add", "boxes": {"4": [1, 2]}, "id": 4}), 400, "bad_boxes"),
           (json.dumps({"type": "add", "id": 5}), 400, "no_objects"),
           (json.dumps({"type": "remove", "object_id": "x"}), None, "bad_message"),
           (json.dumps({"type": "correct", "mask": 5}), None, "bad_message"),
           (b"LWLM\x00\x00\x10\x00{}", None, "bad_message"),
           (binary_edit({"type": "remove", "object_id": 1}, b""), None, "bad_message")]
    worker_refused = [(json.dumps({"type": "remove", "object_id": 9, "id": "r9"}), 404, "unknown_object"),
                      (json.dumps({"type": "add", "boxes": {"1": [1, 1, 20, 20]}, "id": "a1"}), 400,
                       "duplicate_object"),
                      (json.dumps({"type": "correct", "id": "c7",
                                   "mask": base64.b64encode(encode_label_png(np.full((H, W), 7, np.uint8))).decode()}),
                       400, "bad_input")]
    with connect(s["ws_url"], max_size=None) as ws:
        json.loads(ws.recv())
        for msg, status, code in bad + worker_refused:
            ws.send(msg)
            got = json.loads(ws.recv())
            assert got["type"] == "error" and got["code"] == code and got.get("status") == status, (msg[:80], got)
            assert ("seq" in got) == ((msg, status, code) in worker_refused)  # applied (as a no-op) or not sent
        ws.send(FRAMES[1])
        assert json.loads(ws.recv())["type"] == "result"


def library_reference(weights, n: int) -> list[np.ndarray]:  # noqa: ANN001
    """In the library: frames 1-2, correct, add box 3, then frames 3..n-1 (the labels of each step)."""
    import torch

    from model.api import load_model
    from model.media import read_image

    torch.set_num_threads(1)
    tr = load_model(weights=weights, device="cpu", threads=None).new_tracker(crop_size=(64, 112))
    tr.step(read_image(FRAMES[0]), mask=first_mask())
    out = [tr.step(read_image(FRAMES[i])).labels for i in (1, 2)]
    out.append(tr.correct(correction()).labels)
    out.append(tr.add_objects(boxes={3: tuple(BOX3["3"])}).labels)
    return out + [tr.step(read_image(FRAMES[i])).labels for i in range(3, n)]


@pytest.mark.slow
def test_a_worker_killed_after_an_edit_resumes_to_identical_masks(cluster_factory, weights) -> None:  # noqa: ANN001
    import signal

    ref = library_reference(weights, 6)
    c = cluster_factory(True, LWL_SNAPSHOT_EVERY="100")  # the edits stay in the replay log
    c.start("api")
    workers = {w: c.start("worker", LWL_WORKER_ID=w) for w in ("e1", "e2")}
    c.wait_ready(workers=2)
    s = create(c.url)
    with connect(s["ws_url"] + "&max_inflight=2", max_size=None) as ws:
        json.loads(ws.recv())
        for m in (FRAMES[1], FRAMES[2], json.dumps({"type": "correct", "id": "c",
                                                    "mask": base64.b64encode(encode_label_png(correction())).decode()}),
                  binary_edit({"type": "add", "boxes": BOX3, "id": "a"}, b"")):
            ws.send(m)
        before = [json.loads(ws.recv()) for _ in range(4)]
        assert [m["type"] for m in before] == ["result", "result", "corrected", "added"]
        workers[s["worker_id"]].stop(signal.SIGKILL)
        for i in (3, 4, 5):
            ws.send(FRAMES[i])
        after = [json.loads(ws.recv()) for _ in range(3)]
    assert {m["worker_id"] for m in after} == {"e2" if s["worker_id"] == "e1" else "e1"}
    got = [labels(m) for m in before + after]
    assert [np.array_equal(a, b) for a, b in zip(got, ref, strict=True)] == [True] * 7


def test_sdk_edits_in_the_stream_save_and_restore(serve, tmp_path) -> None:  # noqa: ANN001
    import asyncio

    from service.client import AsyncClient, Client

    c = Client(serve.url)
    s = c.create_session(FRAMES[0], mask=first_mask())
    stream = s.stream(FRAMES[1:4], max_inflight=1)
    types = []
    for m in stream:
        types.append(m["type"])
        if len(types) == 1:  # after frame 1: correct, add box 3, remove 2, then frames 2 and 3
            stream.correct(correction())
            stream.add(boxes={3: BOX3["3"]})
            stream.remove(2)
    assert types == ["result", "corrected", "added", "removed", "result", "result"]
    saved = s.save(tmp_path / "s.lwlstate")
    twin = c.restore(saved)
    assert [o["id"] for o in twin.objects] == [1, 3]
    a, b = s.segment(FRAMES[4]), twin.segment(FRAMES[4])
    assert np.array_equal(s.labels(a), s.labels(b))

    async def run() -> list[str]:
        async with AsyncClient(serve.url) as ac:
            t = await ac.restore(saved.read_bytes())
            st, out = t.stream(FRAMES[5:7], max_inflight=1), []
            async for m in st:
                out.append(m["type"])
                if len(out) == 1:
                    st.remove(3)
            await t.save(tmp_path / "t.lwlstate")
            return out

    assert asyncio.run(run()) == ["result", "removed", "result"]


def test_mode_latest_never_skips_an_edit_and_keeps_its_place(serve) -> None:  # noqa: ANN001
    s = create(serve.url)

    def frame(i: int) -> str:
        return json.dumps({"type": "frame", "id": f"f{i}", "image": base64.b64encode(FRAMES[i]).decode()})

    fix = base64.b64encode(encode_label_png(correction())).decode()
    with connect(s["ws_url"] + "&mode=latest&max_inflight=1", max_size=None) as ws:
        json.loads(ws.recv())
        for m in (frame(1), frame(2), frame(3), json.dumps({"type": "correct", "mask": fix, "id": "c"}),
                  frame(4), frame(5)):
            ws.send(m)
        got = [json.loads(ws.recv()) for _ in range(6)]
    by_id = {m["id"]: m for m in got}
    assert by_id["c"]["type"] == "corrected" and by_id["f3"]["type"] == "result"  # the frame before it is kept
    assert by_id["c"]["frame_index"] == by_id["f3"]["frame_index"]  # applied right after frame 3
    order = [m["id"] for m in got if m["type"] != "skipped"]
    assert order.index("f3") + 1 == order.index("c") and order[-1] == "f5"

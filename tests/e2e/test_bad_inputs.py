"""The bad-input matrix: every malformed REST request gets a 4xx with the JSON `code`/`detail` body,
every malformed WebSocket option or message its documented close code or `error` message, no server path
in any text, and a canary session streams frames the whole time, in order, none lost.

Run against `lwl serve` and against `lwl api` + `lwl worker` + Redis (tiny random weights, small frames);
the canary is a real WebSocket client in a thread.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import Cluster, first_mask, jpeg_bytes, make_frame, redis_available
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from model.media import encode_label_png

H, W = 120, 160
MAX_UPLOAD_MB = 1


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def huge_1bit_png(side: int = 20000) -> bytes:
    """A 1-bit PNG of side x side pixels: 400 Mpx in a few tens of KB (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


FRAME = jpeg_bytes(make_frame(0))
MASK = encode_label_png(first_mask())


class Canary:
    """A session streaming frames over a WebSocket in a thread until stopped; it records every answer."""

    def __init__(self, url: str) -> None:
        r = httpx.post(f"{url}/v1/sessions", files={"image": FRAME, "mask": MASK}, timeout=120)
        assert r.status_code == 201, r.text
        self.ws_url = r.json()["ws_url"]
        self.answers: list[dict] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with connect(self.ws_url, max_size=2**24) as ws:
                assert json.loads(ws.recv())["type"] == "ready"
                i = 1
                while not self.stop.is_set():
                    ws.send(jpeg_bytes(make_frame(i % 20)))
                    self.answers.append(json.loads(ws.recv(timeout=120)))
                    i += 1
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            self.error = exc

    def check(self, at_least: int) -> None:
        """Still streaming, every answer a result, seqs consecutive (none lost, none twice, in order)."""
        assert self.error is None, repr(self.error)
        assert self.thread.is_alive()
        assert all(a["type"] == "result" for a in self.answers), [a for a in self.answers if a["type"] != "result"]
        seqs = [a["seq"] for a in self.answers]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        assert len(seqs) >= at_least, len(seqs)


@pytest.fixture(scope="module", params=["serve", "api+worker+redis"])
def svc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Iterator[Cluster]:
    redis = request.param != "serve"
    if redis and not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379 (run bash .ci/ensure-redis.sh)")
    c = Cluster(tmp_path_factory.mktemp("bad"), weights, redis=redis, LWL_MAX_UPLOAD_MB=str(MAX_UPLOAD_MB),
                LWL_MAX_FRAME_PIXELS=str(400 * 400))
    for cmd in ("api", "worker") if redis else ("serve",):
        c.start(cmd)
    c.wait_ready(workers=1)
    c.canary = Canary(c.url)
    yield c
    c.canary.stop.set()
    c.close()


@pytest.fixture(scope="module")
def session(svc: Cluster) -> dict:
    """A second session the bad requests aim at (so the canary is only disturbed through the worker)."""
    r = httpx.post(f"{svc.url}/v1/sessions", files={"image": FRAME, "mask": MASK}, timeout=120)
    assert r.status_code == 201, r.text
    return r.json()


def _create(**files_and_data: object) -> Callable[[str, dict], httpx.Response]:
    files = {k: v for k, v in files_and_data.items() if isinstance(v, bytes)}
    data = {k: v for k, v in files_and_data.items() if not isinstance(v, bytes)}
    return lambda url, s: httpx.post(f"{url}/v1/sessions", files=files or None, data=data, timeout=120)


def _on_session(method: str, path: str, **kw: object) -> Callable[[str, dict], httpx.Response]:
    def call(url: str, s: dict) -> httpx.Response:
        return httpx.request(method, f"{url}/v1/sessions/{s['session_id']}{path}",
                             headers={"Authorization": f"Bearer {s['token']}"}, timeout=120, **kw)

    return call


grey_soft = np.zeros((H, W), np.uint8)
grey_soft[30:90, 40:120] = 255
for k in range(1, 56):  # a feathered edge: 55 grey levels around a white square
    grey_soft[30 - (k % 25 // 5) - 1, 40 + k] = 255 - 4 * k
many_ids = np.zeros((H, W), np.uint8)
many_ids.reshape(-1)[: 254 * 10] = np.repeat(np.arange(1, 255, dtype=np.uint8), 10)
sixteen = np.zeros((H, W), np.uint16)
sixteen[10:20, 10:20] = 300
extra_ids = np.zeros((H, W), np.uint8)
extra_ids.reshape(-1)[: 31 * 10] = np.repeat(np.arange(3, 34, dtype=np.uint8), 10)  # 31 new + 2 tracked > 32
too_big_frame = jpeg_bytes(np.full((500, 500, 3), 128, np.uint8))  # 250000 px > LWL_MAX_FRAME_PIXELS here

REST_CASES: dict[str, tuple[Callable[[str, dict], httpx.Response], int, str]] = {
    "create without image": (_create(mask=MASK), 400, "bad_image"),  # image or a saved state (issue 25)
    "create with junk image": (_create(image=b"junk", mask=MASK), 400, "bad_image"),
    "create with empty image": (_create(image=b"", mask=MASK), 400, "bad_image"),
    "create without objects": (_create(image=FRAME), 400, "no_objects"),
    "create with 20000x20000 1-bit mask": (_create(image=FRAME, mask=huge_1bit_png()), 413, "mask_too_large"),
    "create with 20000x20000 1-bit frame": (_create(image=huge_1bit_png(), mask=MASK), 413, "frame_too_large"),
    "create with frame over the pixel limit": (_create(image=too_big_frame, boxes='{"1": [1, 1, 9, 9]}'), 413,
                                               "frame_too_large"),
    "create with mask of another size": (_create(image=FRAME, mask=encode_label_png(np.ones((60, 80), np.uint8))),
                                         400, "mask_size_mismatch"),
    "create with 254 object ids": (_create(image=FRAME, mask=encode_label_png(many_ids)), 400, "too_many_objects"),
    "create with 16-bit mask id 300": (_create(image=FRAME, mask=png(sixteen)), 400, "bad_mask"),
    "create with soft-edged greyscale mask": (_create(image=FRAME, mask=png(grey_soft, "L")), 400,
                                              "too_many_objects"),
    "create with junk mask": (_create(image=FRAME, mask=b"\x89PNG junk"), 400, "bad_mask"),
    "create with empty mask": (_create(image=FRAME, mask=encode_label_png(np.zeros((H, W), np.uint8))), 400,
                               "empty_mask"),
    "create with crop 2048x2048": (_create(image=FRAME, mask=MASK, crop_size="2048x2048"), 400, "crop_too_large"),
    "create with crop abc": (_create(image=FRAME, mask=MASK, crop_size="abc"), 400, "bad_crop_size"),
    "create with format gif": (_create(image=FRAME, mask=MASK, format="gif"), 400, "bad_format"),
    "create with unknown model": (_create(image=FRAME, mask=MASK, model="nope"), 400, "unknown_model"),
    "create with NaN box": (_create(image=FRAME, boxes='{"1": [NaN, 1, 5, 5]}'), 400, "bad_boxes"),
    "create with 3-number box": (_create(image=FRAME, boxes='{"1": [1, 5, 5]}'), 400, "bad_boxes"),
    "create with boxes not JSON": (_create(image=FRAME, boxes="[1,2"), 400, "bad_boxes"),
    "create with fractional object id": (_create(image=FRAME, boxes='{"1.5": [1, 1, 5, 5]}'), 400, "bad_boxes"),
    "create with object id 0": (_create(image=FRAME, boxes='{"0": [1, 1, 5, 5]}'), 400, "bad_object_id"),
    "create with object id 10^30": (_create(image=FRAME, boxes='{"1000000000000000000000000000000": [1, 1, 5, 5]}'),
                                    400, "bad_object_id"),
    "create with box far outside": (_create(image=FRAME, boxes='{"1": [1e30, 1e30, 5, 5]}'), 400,
                                    "box_outside_frame"),
    "create with 40 boxes": (_create(image=FRAME, boxes=json.dumps({str(i): [1, 1, 5, 5] for i in range(1, 41)})),
                             400, "too_many_objects"),
    "create with a JSON body": (lambda url, s: httpx.post(f"{url}/v1/sessions", json={"image": "x"}), 400,
                                "bad_image"),
    "session id with path characters": (lambda url, s: httpx.get(f"{url}/v1/sessions/..%2F..%2Fetc%2Fpasswd"), 404,
                                        None),
    "session id not hex": (lambda url, s: httpx.get(f"{url}/v1/sessions/{'z' * 32}", headers={"X-Session-Token": "t"}),
                           404, "unknown_session"),
    "unknown path": (lambda url, s: httpx.get(f"{url}/v1/nothing/here"), 404, "not_found"),
    "wrong method": (lambda url, s: httpx.put(f"{url}/v1/sessions"), 405, "method_not_allowed"),
    "frame without token": (lambda url, s: httpx.post(f"{url}/v1/sessions/{s['session_id']}/frames",
                                                      files={"image": FRAME}), 401, "missing_token"),
    "frame with wrong token": (lambda url, s: httpx.post(f"{url}/v1/sessions/{s['session_id']}/frames",
                                                         files={"image": FRAME}, headers={"X-Session-Token": "x"}),
                               403, "wrong_token"),
    "frame with format gif": (_on_session("POST", "/frames", files={"image": FRAME}, data={"format": "gif"}), 400,
                              "bad_format"),
    "frame of junk": (_on_session("POST", "/frames", files={"image": b"junk"}), 400, "bad_image"),
    "frame over the upload limit": (_on_session("POST", "/frames", files={"image": b"\xff" * (MAX_UPLOAD_MB << 21)}),
                                    413, "upload_too_large"),
    "frame of another size": (_on_session("POST", "/frames", files={"image": jpeg_bytes(make_frame(0)[:60])}), 400,
                              "bad_input"),
    "correction with a 20000x20000 mask": (_on_session("POST", "/corrections", files={"mask": huge_1bit_png()}),
                                           413, "mask_too_large"),
    "correction of another size": (_on_session("POST", "/corrections",
                                               files={"mask": encode_label_png(np.ones((60, 80), np.uint8))}), 400,
                                   "mask_size_mismatch"),
    "correction of an unknown object": (_on_session("POST", "/corrections", files={"mask": encode_label_png(
                                            ((first_mask() > 0) * 9).astype(np.uint8))}), 400, "bad_input"),
    "add objects past the limit": (_on_session("POST", "/objects", files={"mask": encode_label_png(extra_ids)}), 400,
                                   "too_many_objects"),
    "add an object tracked already": (_on_session("POST", "/objects", data={"boxes": '{"1": [1, 1, 9, 9]}'}), 400,
                                      "duplicate_object"),
    "add nothing": (_on_session("POST", "/objects"), 400, "no_objects"),
    "remove an unknown object": (_on_session("DELETE", "/objects/9"), 404, "unknown_object"),
    "remove object abc": (_on_session("DELETE", "/objects/abc"), 422, "invalid_request"),
    "job with a video that is not one": (lambda url, s: httpx.post(f"{url}/v1/jobs", files={"video": b"not a video",
                                                                                            "mask": MASK}), 400,
                                         "bad_video"),
    "job with init_frame -1": (lambda url, s: httpx.post(f"{url}/v1/jobs", files={"video": b"x", "mask": MASK},
                                                         data={"init_frame": "-1"}), 422, "invalid_request"),
    "unknown job": (lambda url, s: httpx.get(f"{url}/v1/jobs/{'0' * 32}"), 404, "unknown_job"),
}


@pytest.mark.parametrize("case", list(REST_CASES))
def test_bad_rest_request_gets_its_4xx_json(svc: Cluster, session: dict, case: str) -> None:
    call, status, code = REST_CASES[case]
    r = call(svc.url, session)
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) >= {"code", "detail"} and body["detail"], body
    if code is not None:
        assert body["code"] == code, body
    assert not re.search(r"(/tmp/|/home/|/work/|\.py\b|Traceback)", json.dumps(body)), body


def _close_code(url: str, first: str | bytes | None = None) -> tuple[int, list[dict]]:
    """Connect, optionally send one message, read until the server closes; the close code and messages."""
    msgs = []
    with connect(url) as ws:
        if first is not None:
            ws.send(first)
        try:
            while True:
                msgs.append(json.loads(ws.recv(timeout=30)))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else 1006, msgs


def _ws(svc: Cluster, s: dict, query: str) -> str:
    return svc.url.replace("http", "ws") + f"/v1/sessions/{s['session_id']}/stream?{query}"


@pytest.mark.parametrize(("query", "first", "code"), [
    ("token={token}&max_inflight=abc", None, 4400),
    ("token={token}&max_inflight=0", None, 4400),
    ("token={token}&mode=fastest", None, 4400),
    ("token={token}&format=gif", None, 4400),
    ("token={token}&resume_from=-3", None, 4400),
    ("token=wrong", None, 4403),
    ("", json.dumps({"type": "auth", "token": 12345}), 4401),
    ("", json.dumps(["auth"]), 4401),
    ("", b"\x00\x01", 4401),
])
def test_bad_stream_option_gets_its_close_code(svc: Cluster, session: dict, query: str, first: object,
                                               code: int) -> None:
    got, msgs = _close_code(_ws(svc, session, query.format(token=session["token"])), first)
    assert got == code, (got, msgs)
    assert msgs and msgs[-1]["type"] == "error" and msgs[-1]["code"], msgs


def test_unknown_session_stream_closes_4404(svc: Cluster) -> None:
    got, _ = _close_code(svc.url.replace("http", "ws") + f"/v1/sessions/{'a' * 32}/stream?token=x")
    assert got == 4404


def test_bad_stream_messages_get_errors_and_the_stream_goes_on(svc: Cluster, session: dict) -> None:
    with connect(_ws(svc, session, f"token={session['token']}")) as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        sent_bad = ["not json", json.dumps([1, 2]), json.dumps({"type": "frame", "image": 5}),
                    json.dumps({"type": "frame", "image": "***"}),
                    json.dumps({"type": "frame", "image": base64.b64encode(FRAME).decode(), "id": {"a": 1}}),
                    json.dumps({"type": "frame", "image": base64.b64encode(FRAME).decode(), "id": "x" * 500})]
        for m in sent_bad:
            ws.send(m)
            err = json.loads(ws.recv(timeout=30))
            assert err["type"] == "error" and err["code"] in ("bad_message", "bad_image"), (m[:40], err)
        ws.send(b"junk bytes")
        err = json.loads(ws.recv(timeout=60))
        assert err["type"] == "error" and err["code"] == "bad_image", err
        ws.send(json.dumps({"type": "frame", "image": base64.b64encode(jpeg_bytes(make_frame(1))).decode(),
                            "id": "good"}))
        ok = json.loads(ws.recv(timeout=60))
        assert ok["type"] == "result" and ok["id"] == "good", ok


def test_a_second_stream_takes_the_session_over(svc: Cluster, session: dict) -> None:
    """One stream per session: the newer one wins; the older one's next frame closes it with 4409."""
    url = _ws(svc, session, f"token={session['token']}")
    with connect(url) as old:
        assert json.loads(old.recv())["type"] == "ready"
        with connect(url) as new:
            assert json.loads(new.recv())["type"] == "ready"
            old.send(jpeg_bytes(make_frame(2)))
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    old.recv(timeout=30)
            assert info.value.rcvd.code == 4409
            new.send(jpeg_bytes(make_frame(2)))
            assert json.loads(new.recv(timeout=60))["type"] == "result"


def test_zz_canary_streamed_throughout_and_nothing_failed_inside(svc: Cluster) -> None:
    """Runs last in the module: the canary kept streaming in order, and no request reached a 500."""
    svc.canary.check(at_least=3)
    metrics = httpx.get(f"{svc.url}/metrics").text
    assert not re.search(r'lwl_errors_total\{code="internal"\} [1-9]', metrics)
    log = "\n".join(p.logs() for p in svc.procs)
    assert "Traceback" not in log, log[-3000:]
    assert '"status": 500' not in log and " 500 " not in log


def test_resume_after_a_dropped_stream_applies_no_frame_twice(svc: Cluster) -> None:
    """A client whose connection drops with frames in flight reconnects with resume_from: the frames the
    session accepted are answered on the new stream with their ids, the client resends only the rest, and the
    session applied every frame exactly once."""
    r = httpx.post(f"{svc.url}/v1/sessions", files={"image": FRAME, "mask": MASK}, timeout=120)
    s = r.json()
    frames = {f"f{i}": base64.b64encode(jpeg_bytes(make_frame(i))).decode() for i in range(1, 6)}
    with connect(s["ws_url"] + "&max_inflight=4") as ws:
        ready = json.loads(ws.recv())
        first = ready["next_seq"]
        for fid in ("f1", "f2", "f3", "f4"):
            ws.send(json.dumps({"type": "frame", "image": frames[fid], "id": fid}))
        got = json.loads(ws.recv(timeout=60))
        assert got["id"] == "f1" and got["seq"] == first
    # the connection is gone; f2..f4 may or may not have been accepted: the server says which were
    with connect(s["ws_url"] + f"&resume_from={first + 1}") as ws:
        ready = json.loads(ws.recv())
        assert ready["type"] == "ready" and ready["lost"] == [], ready
        resumed = [x["id"] for x in ready["resumed"]]
        assert resumed == ["f2", "f3", "f4"][: len(resumed)], ready
        answers = [json.loads(ws.recv(timeout=60)) for _ in resumed]
        assert [a["id"] for a in answers] == resumed and all(a["type"] == "result" for a in answers)
        for fid in ["f2", "f3", "f4", "f5"][len(resumed):]:  # only what the session never accepted
            ws.send(json.dumps({"type": "frame", "image": frames[fid], "id": fid}))
            a = json.loads(ws.recv(timeout=60))
            assert a["type"] == "result" and a["id"] == fid
    info = httpx.get(f"{svc.url}/v1/sessions/{s['session_id']}", headers={"X-Session-Token": s["token"]}).json()
    assert info["frames"] == 6, info  # the first frame and f1..f5, each once


def test_tracker_memory_budgets_admit_sessions_before_any_model_work(cluster_factory) -> None:  # noqa: ANN001
    """A session bounded above LWL_MAX_SESSION_STATE_MB is refused (413); one that would pass the worker's
    LWL_WORKER_STATE_MB is not placed (503 no_capacity + Retry-After); an add past the session budget is
    refused and changes nothing. (The tiny model's bound: about 1.3 MB per object on 160x120 frames.)"""
    c = cluster_factory(False, LWL_MAX_SESSION_STATE_MB="2", LWL_WORKER_STATE_MB="3.5")
    c.start("serve")
    c.wait_ready(workers=1)
    one = encode_label_png((first_mask() == 1).astype(np.uint8))
    r = httpx.post(f"{c.url}/v1/sessions", files={"image": FRAME, "mask": MASK}, timeout=60)  # 2 objects: 2.6 MB
    assert r.status_code == 413 and r.json()["code"] == "session_too_large", r.text
    first = httpx.post(f"{c.url}/v1/sessions", files={"image": FRAME, "mask": one}, timeout=60)
    assert first.status_code == 201, first.text
    s = first.json()
    grow = httpx.post(f"{c.url}/v1/sessions/{s['session_id']}/objects", headers={"X-Session-Token": s["token"]},
                      data={"boxes": '{"2": [100, 70, 40, 35]}'}, timeout=60)
    assert grow.status_code == 413 and grow.json()["code"] == "session_too_large", grow.text
    info = httpx.get(f"{c.url}/v1/sessions/{s['session_id']}", headers={"X-Session-Token": s["token"]}).json()
    assert info["objects"] == [1]
    second = httpx.post(f"{c.url}/v1/sessions", files={"image": FRAME, "mask": one}, timeout=60)
    assert second.status_code == 201, second.text  # 2 x 1.3 MB fits 3.5 MB
    third = httpx.post(f"{c.url}/v1/sessions", files={"image": FRAME, "mask": one}, timeout=60)
    assert third.status_code == 503 and third.json()["code"] == "no_capacity", third.text
    assert int(third.headers["Retry-After"]) >= 1
    w = httpx.get(f"{c.url}/v1/workers").json()[0]
    assert 2 * 2**20 < w["state_bytes"] <= w["state_budget_bytes"] == int(3.5 * 2**20), w
    store = w["store_bytes"]  # two sessions' snapshots in the store: each about its tracker state
    assert 0 < store["max_session"] < store["total"] and store["snapshots"] <= store["total"], store
    assert store["total"] <= w["state_bytes"] + 2**20, (store, w["state_bytes"])
    metrics = httpx.get(f"{c.url}/metrics").text
    assert re.search(r'^lwl_store_bytes\{scope="total"\} [1-9]', metrics, re.M), metrics[-2000:]

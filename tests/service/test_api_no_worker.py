"""The api alone (in-process store, no worker, no model): input checks, auth, capacity, health, schema.

These answers must come from the api itself, before any work reaches a worker.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.media import encode_label_png
from service.api import create_app
from service.backends import MemoryBackend
from service.settings import Settings


def _jpeg(h: int = 120, w: int = 160) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def client(tmp_path) -> TestClient:  # noqa: ANN001
    s = Settings(results_dir=str(tmp_path), max_upload_mb=0.5, max_frame_pixels=300 * 300)
    with TestClient(create_app(s, MemoryBackend())) as c:
        yield c


def _mask(value: int = 1, h: int = 120, w: int = 160) -> bytes:
    m = np.zeros((h, w), np.uint8)
    m[10:40, 10:50] = value
    return encode_label_png(m)


@pytest.mark.parametrize(("files", "data", "status", "code"), [
    ({"image": b"garbage", "mask": _mask()}, {}, 400, "bad_image"),
    ({"image": _jpeg(), "mask": _mask(h=60, w=80)}, {}, 400, "mask_size_mismatch"),
    ({"image": _jpeg(), "mask": _mask(0)}, {}, 400, "empty_mask"),
    ({"image": _jpeg(), "mask": b"not a png"}, {}, 400, "bad_mask"),
    ({"image": _jpeg()}, {}, 400, "no_objects"),
    ({"image": _jpeg()}, {"boxes": '{"1": [170, 100, 30, 30]}'}, 400, "box_outside_frame"),
    ({"image": _jpeg()}, {"boxes": '{"1": [10, 10, 0, 30]}'}, 400, "box_outside_frame"),
    ({"image": _jpeg()}, {"boxes": '{"300": [10, 10, 5, 5]}'}, 400, "bad_object_id"),
    ({"image": _jpeg()}, {"boxes": "{oops"}, 400, "bad_boxes"),
    ({"image": _jpeg(), "mask": _mask()}, {"crop_size": "100x100"}, 400, "bad_crop_size"),
    ({"image": _jpeg(), "mask": _mask()}, {"format": "gif"}, 400, "bad_format"),
    ({"image": _jpeg(400, 400), "mask": _mask(h=400, w=400)}, {}, 413, "frame_too_large"),
    ({"image": b"\xff" * (600 * 1024), "mask": _mask()}, {}, 413, "upload_too_large"),
    ({"image": _jpeg(), "mask": _mask()}, {}, 503, "no_capacity"),
    ({"image": _jpeg()}, {"boxes": '{"1": [150, 100, 30, 30]}'}, 503, "no_capacity"),  # past the edge: clipped
])
def test_create_session_errors(client: TestClient, files: dict, data: dict, status: int, code: str) -> None:
    r = client.post("/v1/sessions", files=files, data=data)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["detail"]
    if status == 503:
        assert int(r.headers["retry-after"]) >= 1


def test_unknown_session_job_and_health(client: TestClient) -> None:
    r = client.get("/v1/sessions/abc", headers={"Authorization": "Bearer x"})
    assert r.status_code == 404 and r.json()["code"] == "unknown_session"
    assert client.get("/v1/jobs/abc").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["code"] == "no_worker"
    with client.websocket_connect("/v1/sessions/abc/stream?token=x") as ws:
        assert json.loads(ws.receive_text())["code"] == "unknown_session"
        assert ws.receive()["code"] == 4404


def test_bad_video_job(client: TestClient) -> None:
    r = client.post("/v1/jobs", files={"video": b"\x00\x01 definitely not a video", "mask": _mask()})
    assert r.status_code == 400 and r.json()["code"] == "bad_video"


def test_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/sessions", "/v1/sessions/{sid}", "/v1/sessions/{sid}/frames", "/v1/jobs",
              "/v1/jobs/{jid}", "/v1/jobs/{jid}/result", "/healthz", "/readyz"):
        assert p in paths
    assert client.get("/docs").status_code == 200


def test_cors_only_when_configured(tmp_path) -> None:  # noqa: ANN001
    pre = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    s = Settings(results_dir=str(tmp_path), cors_origins="http://app.example, http://other.example")
    with TestClient(create_app(s, MemoryBackend())) as c:
        r = c.options("/v1/sessions", headers=pre)
        assert r.headers["access-control-allow-origin"] == "http://app.example"
    with TestClient(create_app(Settings(results_dir=str(tmp_path)), MemoryBackend())) as c:
        assert "access-control-allow-origin" not in c.options("/v1/sessions", headers=pre).headers


def test_refusals_by_middleware_carry_cors_headers(tmp_path) -> None:  # noqa: ANN001
    """A cross-origin page must be able to read why it was refused (a missing API key, a body too large),
    not see a CORS error: CORS wraps every other middleware."""
    s = Settings(results_dir=str(tmp_path), cors_origins="http://app.example",
                 api_keys="ops:secret-key-of-the-ops-team", max_upload_mb=1)
    origin = {"Origin": "http://app.example"}
    with TestClient(create_app(s, MemoryBackend())) as c:
        r = c.get(f"/v1/sessions/{'a' * 32}", headers=origin)
        assert r.status_code == 401 and r.json()["code"] == "missing_api_key"
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = c.post("/v1/sessions", headers={**origin, "X-API-Key": "secret-key-of-the-ops-team"},
                   files={"image": b"x" * (3 << 20)})
        assert r.status_code == 413 and r.json()["code"] == "upload_too_large"
        assert r.headers["access-control-allow-origin"] == "http://app.example"

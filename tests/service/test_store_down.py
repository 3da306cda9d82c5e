"""Redis unreachable: every REST call answers 503 `store_down` JSON with Retry-After, never a plain-text
500, and a WebSocket stream gets an `error` message and close code 1013.

The api runs in-process (TestClient) on a real RedisBackend pointed at a loopback port where nothing
listens: the redis client fails the way it does while Redis is down or restarting.
"""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.websockets import WebSocketDisconnect

from model.media import encode_label_png
from service.api import create_app
from service.backends import RedisBackend
from service.settings import Settings


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: connecting is refused


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def client(tmp_path) -> TestClient:  # noqa: ANN001
    s = Settings(results_dir=str(tmp_path), heartbeat_s=2)
    app = create_app(s, RedisBackend(f"redis://127.0.0.1:{_dead_port()}/0", "lwltest-down"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


SID = "0123456789abcdef0123456789abcdef"
MASK = np.zeros((48, 64), np.uint8)
MASK[10:30, 10:30] = 1

CALLS = [
    ("GET", f"/v1/sessions/{SID}", {}),
    ("DELETE", f"/v1/sessions/{SID}", {}),
    ("POST", f"/v1/sessions/{SID}/frames", {"files": {"image": ("f.jpg", _jpeg(), "image/jpeg")}}),
    ("POST", "/v1/sessions", {"files": {"image": ("f.jpg", _jpeg(), "image/jpeg"),
                                        "mask": ("m.png", encode_label_png(MASK), "image/png")}}),
    ("GET", "/v1/workers", {}),
    ("GET", "/v1/info", {}),
    ("GET", f"/v1/jobs/{SID}", {}),
    ("GET", "/metrics", {}),
]


@pytest.mark.parametrize(("method", "path", "kw"), CALLS, ids=[f"{m} {p}" for m, p, _ in CALLS])
def test_rest_store_down_is_503_json(client: TestClient, method: str, path: str, kw: dict) -> None:
    r = client.request(method, path, headers={"Authorization": "Bearer tok"}, **kw)
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["code"] == "store_down" and r.json()["detail"]
    assert int(r.headers["retry-after"]) >= 1
    assert "Traceback" not in r.text and "127.0.0.1" not in r.text


def test_readyz_says_store_down(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["code"] == "store_down"
    assert client.get("/healthz").status_code == 200  # liveness does not depend on Redis


def test_websocket_store_down_closes_1013(client: TestClient) -> None:
    with client.websocket_connect(f"/v1/sessions/{SID}/stream?token=tok") as ws:
        msg = ws.receive_json()
        assert msg["type"] == "error" and msg["code"] == "store_down"
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
    assert e.value.code == 1013

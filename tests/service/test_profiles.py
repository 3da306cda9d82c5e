"""A worker serves several models by name (the bundled profiles fast and accurate): a session or a job
names one with `profile` (or `model`), gets the worker's first model when it names none, and a name no
live worker serves is a 400. Two tiny models with different seeds stand in for the profiles: their masks
differ, so the answer shows which model stepped."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.api import load_model
from model.media import encode_label_png
from model.testing import tiny_weights
from service.api import create_app
from service.backends import MemoryBackend
from service.settings import Settings
from service.worker import Worker


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("profiles")
    out = {}
    for name, seed in (("fast", 0), ("accurate", 1)):
        m = load_model(tiny_weights(d / f"{name}.safetensors", seed=seed), "cpu", threads=None)
        m.name = name
        out[name] = m
    return out


def _clip() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two frames and the first one's mask."""
    rng = np.random.default_rng(3)
    frames = (rng.random((2, 96, 128, 3)) * 255).astype(np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    mask[30:70, 40:90] = 1
    return frames[0], frames[1], mask


def _second_labels(model, first: np.ndarray, second: np.ndarray, mask: np.ndarray) -> bytes:  # noqa: ANN001
    tracker = model.new_tracker()
    tracker.step(first, mask=mask)
    return encode_label_png(tracker.step(second).labels)


def test_sessions_and_jobs_choose_a_profile(models: dict, tmp_path: Path) -> None:
    s = Settings(results_dir=str(tmp_path), torch_threads=1, heartbeat_s=0.2)
    backend = MemoryBackend()
    worker = Worker(s, backend, models=models, worker_id="w")
    frame, second, mask = _clip()
    want = {n: _second_labels(m, frame, second, mask) for n, m in models.items()}
    assert want["fast"] != want["accurate"]  # the two stand-ins are told apart by their masks
    files = {"image": ("f.png", _png(frame), "image/png"), "mask": ("m.png", encode_label_png(mask), "image/png")}
    with TestClient(create_app(s, backend, worker)) as c:
        info = c.get("/v1/info").json()
        assert {m["name"]: m["default"] for m in info["models"]} == {"fast": True, "accurate": False}
        for form, name in (({}, "fast"), ({"profile": "accurate"}, "accurate"), ({"model": "accurate"}, "accurate"),
                           ({"profile": "fast", "model": "fast"}, "fast")):
            r = c.post("/v1/sessions", files=files, data=form)
            assert r.status_code == 201, r.text
            sid, auth = r.json()["session_id"], {"Authorization": f"Bearer {r.json()['token']}"}
            r = c.post(f"/v1/sessions/{sid}/frames", files={"image": ("f.png", _png(second), "image/png")},
                       headers=auth)
            assert base64.b64decode(r.json()["labels"]) == want[name], form
            assert c.get(f"/v1/sessions/{sid}", headers=auth).json()["model"] == name
        for form, code in (({"profile": "tiny"}, "unknown_model"), ({"profile": "fast", "model": "accurate"},
                                                                     "bad_profile")):
            r = c.post("/v1/sessions", files=files, data=form)
            assert r.status_code == 400 and r.json()["code"] == code, r.text
        r = c.post("/v1/jobs", files={"video": ("v.mp4", b"\0" * 64)}, data={"profile": "nope"})
        assert r.status_code == 400 and r.json()["code"] == "unknown_model", r.text

"""End-to-end fixtures: tiny random weights, synthetic frames, real `lwl` processes on loopback.

Tests drive the service as users do: separate processes, real Redis (a fresh key prefix per test),
the SDK or a plain WebSocket client. Frames are small (120x160) and crops small (64x112) so the
suite stays fast on 2 shared CPU cores.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"
CROP = "64x112"
H, W = 120, 160


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL).ping())
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weights checkpoint in the project's safetensors format (model.testing helper)."""
    from model.testing import tiny_weights

    return Path(tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors"))


def make_frame(i: int, seed: int = 0) -> np.ndarray:
    """A textured frame with two squares moving a few pixels per frame."""
    rng = np.random.default_rng(seed)
    img = (rng.random((H, W, 3)) * 60 + 40).astype(np.uint8)
    img[20 + 2 * i : 60 + 2 * i, 20 + 3 * i : 70 + 3 * i] = (220, 60, 60)
    img[70:105, 100 - 2 * i : 140 - 2 * i] = (60, 200, 90)
    return img


def first_mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[20:60, 20:70] = 1
    m[70:105, 100:140] = 2
    return m


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A short clip as JPEG files + the first frame's indexed PNG mask (DAVIS layout)."""
    from model.media import write_label_png

    d = tmp_path_factory.mktemp("clip")
    (d / "JPEGImages").mkdir()
    (d / "Annotations").mkdir()
    frames = []
    for i in range(4):
        p = d / "JPEGImages" / f"{i:05d}.jpg"
        Image.fromarray(make_frame(i)).save(p, quality=90)
        frames.append(p)
    mask = d / "Annotations" / "00000.png"
    write_label_png(mask, first_mask())
    return {"dir": d, "frames": frames, "mask": mask}


def lwl_segment(weights: Path, source: Path, out: Path, *init: str) -> list[bytes]:
    """Run `lwl segment` offline (same thread count as the service processes); the PNGs it writes."""
    res = out / "masks"
    cmd = [sys.executable, "-m", "service.cli", "segment", str(source), *init, "--weights", str(weights),
           "--size", CROP, "--device", "cpu", "--quiet", "--out", str(res)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count as the service processes
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return [p.read_bytes() for p in sorted(res.glob("*.png"))]


def offline_pngs(weights: Path, frames: list[Path], mask: Path, out: Path) -> list[bytes]:
    """What `lwl segment` writes for these frames: the reference for bit-identity."""
    frame_dir = out / "frames"
    frame_dir.mkdir(parents=True, exist_ok=True)
    for p in frames:
        (frame_dir / p.name).write_bytes(p.read_bytes())
    pngs = lwl_segment(weights, frame_dir, out, "--mask", str(mask))
    assert len(pngs) == len(frames)
    return pngs


class Proc:
    """A running `lwl` subcommand with its environment and log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.stopped = False
        self.f = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen([sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT,
                                  stdout=self.f, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        self.stopped = True
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.f.close()
        return self.p.returncode

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


class Cluster:
    """Starts api/worker/serve processes sharing one environment; stops them all at the end."""

    def __init__(self, tmp: Path, weights: Path, redis: bool, **extra: str) -> None:
        self.tmp = tmp
        self.prefix = f"lwltest-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LWL_HOST": "127.0.0.1", "LWL_PORT": str(self.port),
                    "LWL_WEIGHTS": str(weights), "LWL_CROP_SIZE": CROP, "LWL_DEVICE": "cpu",
                    "LWL_RESULTS_DIR": str(tmp / "results"), "LWL_HEARTBEAT_S": "0.5",
                    "LWL_KEY_PREFIX": self.prefix, "LWL_LOG_JSON": "true", "LWL_WORKER_METRICS_PORT": "0",
                    "OMP_NUM_THREADS": "1", "LWL_REDIS_URL": REDIS_URL if redis else "", **extra}
        self.procs: list[Proc] = []
        self.redis = redis

    def start(self, *args: str, **env: str) -> Proc:
        p = Proc(list(args), {**self.env, **env}, self.tmp / f"{args[0]}-{len(self.procs)}.log")
        self.procs.append(p)
        return p

    def wait_ready(self, workers: int = 1, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for p in self.procs:
                if p.stopped:
                    continue
                assert p.p.poll() is None, f"{p.args} exited:\n{p.logs()[-3000:]}"
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200 and r.json()["workers"] >= workers:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("service not ready:\n" + "\n".join(p.logs()[-2000:] for p in self.procs))

    def redis_client(self):  # noqa: ANN201 - redis.Redis
        import redis

        return redis.Redis.from_url(REDIS_URL, decode_responses=True)

    def close(self) -> None:
        for p in self.procs:
            if not p.stopped:
                p.stop()
        if self.redis:
            r = self.redis_client()
            keys = list(r.scan_iter(match=f"{self.prefix}:*"))
            if keys:
                r.delete(*keys)


@pytest.fixture
def cluster_factory(tmp_path: Path, weights: Path) -> Iterator:
    made: list[Cluster] = []

    def make(redis: bool, **extra: str) -> Cluster:
        if redis and not redis_available():
            pytest.skip("no Redis on 127.0.0.1:6379 (run bash .ci/ensure-redis.sh)")
        c = Cluster(tmp_path, weights, redis, **extra)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()

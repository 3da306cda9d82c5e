"""The web page tracking a camera, as a user sees it: frames/s answered, latency and model time.

Starts `lwl serve` with the settings a user gets (the bundled models, no thread setting), opens the page
in headless Debian Chromium with a 640x480 fake camera (a generated Y4M clip of a square moving over a
textured background, looped by Chromium at 25 fps), starts a session from the square's box with each
profile in turn (`?profile=`), and reads the page's own status line (frames/s, latency, model time)
every half second for `--seconds` after a warm-up. Writes bench/page-results.json.

    python -m bench.page                  # fast and accurate, 20 s each
    python -m bench.page --profiles fast --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.service import free_port
from tests.e2e.browser.conftest import CHROMIUM, write_y4m

ROOT = Path(__file__).resolve().parents[1]
HW = (480, 640)
SIDE = 120


def camera_clip(n: int = 100) -> tuple[list[np.ndarray], tuple[int, int, int, int]]:
    """`n` frames: a magenta square going right and back over a smooth textured background; its first box."""
    h, w = HW
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.stack([120 + 30 * np.sin(0.02 * xx + c) * np.cos(0.03 * yy - c) for c in range(3)], -1)
    bg = np.clip(bg, 0, 255).astype(np.uint8)
    x0, y = 100, (h - SIDE) // 2
    frames = []
    for i in range(n):
        x = x0 + int(round(300 * (1 - abs(1 - 2 * i / n))))
        img = bg.copy()
        img[y : y + SIDE, x : x + SIDE] = (230, 30, 200)
        frames.append(img)
    return frames, (x0, y, SIDE, SIDE)


def start_serve(port: int, log: Path) -> subprocess.Popen:
    """`lwl serve` as a user starts it: no thread or model setting from this process's environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") and not k.startswith("LWL_")}
    env.update(LWL_HOST="127.0.0.1", LWL_PORT=str(port), LWL_LOG_JSON="true", LWL_WORKER_METRICS_PORT="0")
    return subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(url: str, timeout: float = 300) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return httpx.get(f"{url}/v1/info", timeout=5).json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("lwl serve did not become ready")


def measure(browser: Any, url: str, box: tuple[int, ...], profile: str, warmup: float, seconds: float) -> dict:
    """One session from the camera with `profile`: the page's frames/s, latency and model time, sampled."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{url}/?source=camera&box={','.join(map(str, box))}&start=1&profile={profile}")
    page.wait_for_function("() => window.lwl && window.lwl.counts.answered >= 1", timeout=300_000)
    page.wait_for_timeout(warmup * 1000)
    n0, t0 = page.evaluate("() => window.lwl.counts.answered"), time.monotonic()
    samples: list[tuple[float, float, float]] = []
    while time.monotonic() - t0 < seconds:
        page.wait_for_timeout(500)
        vals = page.evaluate("() => ['st-fps', 'st-latency', 'st-compute'].map("
                             "(id) => parseFloat(document.getElementById(id).textContent))")
        if all(np.isfinite(vals)):
            samples.append(tuple(vals))
    answered = page.evaluate("() => window.lwl.counts.answered") - n0
    elapsed = time.monotonic() - t0
    page.close()
    s = np.asarray(samples) if samples else np.full((1, 3), np.nan)
    return {"profile": profile, "answered_fps": round(answered / elapsed, 2), "answered": int(answered),
            "seconds": round(elapsed, 1), "page_fps_median": round(float(np.median(s[:, 0])), 2),
            "latency_ms_median": round(float(np.median(s[:, 1])), 1),
            "model_ms_median": round(float(np.median(s[:, 2])), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="fast,accurate", help="comma-separated profiles to measure")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per profile")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds streamed before measuring")
    ap.add_argument("--out", default="bench/page-results.json")
    args = ap.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"bench.page: {CHROMIUM} not found (bash .ci/ensure-browser.sh installs it)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    frames, box = camera_clip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="lwl-bench-page-") as tmp:
        camera = write_y4m(Path(tmp) / "camera.y4m", frames, fps=25)
        proc = start_serve(port, Path(tmp) / "serve.log")
        try:
            info = wait_ready(url)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, chromium_sandbox=False,
                                             args=["--use-fake-device-for-media-stream",
                                                   "--use-fake-ui-for-media-stream",
                                                   f"--use-file-for-fake-video-capture={camera}"])
                runs = []
                for p in args.profiles.split(","):
                    r = measure(browser, url, box, p, args.warmup, args.seconds)
                    print(f"{p}: {r['answered_fps']} frames/s answered, page shows {r['page_fps_median']} frames/s, "
                          f"latency {r['latency_ms_median']} ms, model {r['model_ms_median']} ms (medians)")
                    runs.append(r)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
    meta = {"camera": f"{HW[1]}x{HW[0]} at 25 fps (Chromium fake camera, Y4M)", "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg()[0],
            "threads": [m.get("threads") for m in info.get("models", [])], "settings": "lwl serve defaults",
            "command": " ".join(["python -m bench.page", *(sys.argv[1:] if argv is None else argv)])}
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

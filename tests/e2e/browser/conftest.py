"""Browser-test harness: synthetic clips with a known box, a Y4M fake camera, a video Chromium decodes,
a headless Chromium (Playwright, sync API) and a tiny static HTTP server.

The page under test runs in a real browser, so its inputs must be files the browser itself reads: a Y4M
file for the fake camera and an H.264 MP4 (what users upload) for <video>. Every clip is generated here,
deterministically, with the square's exact box so tests can check what the page drew.

This directory is a package (it has __init__.py) so that this conftest is imported as `browser.conftest`
and does not replace tests/e2e/conftest.py as the module `conftest` that tests/e2e/test_*.py import from.
Browser tests import these helpers with `from .conftest import ...` and the parent's with `from conftest import ...`.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import os
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = Path("/usr/bin/chromium")
SQUARE = 60
SQUARE_RGB = (230, 30, 200)  # saturated magenta: far from every background colour
Box = tuple[int, int, int, int]  # x, y, w, h
Frames = list[tuple[np.ndarray, Box]]


def _bounce(start: int, step: int, span: int) -> int:
    """Position after `step` pixels of travel from `start`, reflected at 0 and `span` (a triangle wave)."""
    if span <= 0:
        return 0
    p = (start + step) % (2 * span)
    return p if p <= span else 2 * span - p


def moving_square_frames(n: int, h: int = 240, w: int = 320, seed: int = 0) -> Frames:
    """`n` RGB frames: a smooth low-saturation textured background and one 60x60 magenta square moving 4 px
    right and 2 px down per frame (bouncing at the borders), each with the square's exact box (x, y, w, h).

    The background is smooth so codecs keep it clean; it is textured so a tracker has something to work with.
    Box corners are even, so 4:2:0 chroma does not smear the square's edges by a pixel. Boxes do not repeat
    within the first 100 frames, so a frame's box identifies its index.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(0.01, 0.05, 2)
        px, py = rng.uniform(0, 2 * np.pi, 2)
        bg[..., c] = 125 + 35 * np.sin(fx * xx + px) * np.cos(fy * yy + py) + 10 * np.sin(0.21 * xx + 0.17 * yy + c)
    gray = bg.mean(axis=2, keepdims=True)
    bg = np.clip(gray + 0.3 * (bg - gray), 0, 255).astype(np.uint8)  # keep the background nearly grey
    side = min(SQUARE, h, w)
    x0, y0 = 2 * int(rng.integers(0, (w - side) // 2 + 1)), 2 * int(rng.integers(0, (h - side) // 2 + 1))
    out: Frames = []
    for i in range(n):
        x, y = _bounce(x0, 4 * i, w - side), _bounce(y0, 2 * i, h - side)
        img = bg.copy()
        img[y : y + side, x : x + side] = SQUARE_RGB
        out.append((img, (x, y, side, side)))
    return out


def rgb_to_yuv420(img: np.ndarray, full_range: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 Y, Cb, Cr planes, limited (studio) range unless `full_range`; chroma is the mean of each 2x2 block
    (420jpeg siting). Chromium's fake camera reads Y4M as limited range whatever the header says: full-range
    planes come back with stretched colours (the magenta square off by up to 15 per channel).
    """
    rgb = img.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = (b - y) / 1.772
    cr = (r - y) / 1.402
    if not full_range:
        y, cb, cr = 16 + y * (219 / 255), cb * (224 / 255), cr * (224 / 255)
    h, w = y.shape

    def sub(p: np.ndarray) -> np.ndarray:
        return p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) + 128

    planes = (y, sub(cb), sub(cr))
    return tuple(np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in planes)  # type: ignore[return-value]


def write_y4m(path: Path, frames: Frames | list[np.ndarray], fps: int = 25, full_range: bool = False) -> Path:
    """A YUV4MPEG2 file (C420jpeg) for Chromium's --use-file-for-fake-video-capture, which loops it.

    Limited range by default, as Chromium reads it (see rgb_to_yuv420); the XCOLORRANGE tag tells other readers.
    """
    imgs = [f[0] if isinstance(f, tuple) else f for f in frames]
    h, w = imgs[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 needs even frame sizes, got {w}x{h}")
    rng = "FULL" if full_range else "LIMITED"
    path = Path(path)
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg XYSCSS=420JPEG XCOLORRANGE={rng}\n".encode())
        for img in imgs:
            f.write(b"FRAME\n")
            for plane in rgb_to_yuv420(img, full_range):
                f.write(plane.tobytes())
    return path


def write_video(path: Path, frames: Frames | list[np.ndarray], fps: int = 25) -> Path:
    """An H.264 (yuv420p, no B-frames) MP4 with the index at the front, as users upload and Chromium plays.

    `path` may end in .webm instead, for VP9. One frame per 1/fps tick, the first at time 0.
    """
    import av

    imgs = [f[0] if isinstance(f, tuple) else f for f in frames]
    h, w = imgs[0].shape[:2]
    path = Path(path)
    webm = path.suffix == ".webm"
    opts = {} if webm else {"movflags": "+faststart"}
    with av.open(str(path), "w", options=opts) as box:
        if webm:
            stream = box.add_stream("libvpx-vp9", rate=fps, options={"deadline": "realtime", "cpu-used": "8"})
        else:
            stream = box.add_stream("libx264", rate=fps, options={"preset": "veryfast", "bf": "0", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i, img in enumerate(imgs):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            box.mux(stream.encode(frame))
        box.mux(stream.encode(None))
    return path


def find_square(img: np.ndarray, rgb: tuple[int, int, int] = SQUARE_RGB, tol: int = 40) -> Box | None:
    """Bounding box (x, y, w, h) of the pixels within `tol` of `rgb` in an RGB(A) image, None when there are none.

    Lets a test compare what the browser shows with the box moving_square_frames() drew.
    """
    near = (np.abs(img[..., :3].astype(np.int16) - np.array(rgb, np.int16)) <= tol).all(axis=-1)
    ys, xs = np.nonzero(near)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def data_url_rgb(url: str) -> np.ndarray:
    """An RGB array from a `data:image/png;base64,...` URL (canvas.toDataURL()), to read the page's pixels."""
    from PIL import Image

    head, _, data = url.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), head[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with extra headers (a CSP, for instance); quiet, and .mjs/.js served as JavaScript."""

    extra_headers: dict[str, str] = {}
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".y4m": "application/octet-stream", ".webm": "video/webm"}

    def end_headers(self) -> None:
        for k, v in self.extra_headers.items():
            self.send_header(k, v)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def serve_dir() -> Iterator[Callable[..., str]]:
    """`serve_dir(root, headers=None)` serves `root` over HTTP on 127.0.0.1 from a thread; returns its base URL.

    For pages that need no service (harness checks, browser feature probes). No Range support: load media
    through fetch() + a Blob URL, as a page does with an uploaded file.
    """
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(root: Path, headers: dict[str, str] | None = None) -> str:
        handler = type("Handler", (_Handler,), {"extra_headers": dict(headers or {})})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, name="serve_dir", daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def browser() -> Iterator[Callable[..., Browser]]:
    """`browser(fake_camera=None)` launches headless Debian Chromium with fake media devices (a Y4M file as the
    camera when given, Chromium's test pattern otherwise) and permission prompts auto-accepted.

    Skips only when Chromium or Playwright is missing (`make test` installs both). Never uses Playwright's own
    browser downloads. Everything launched is closed at teardown.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (run bash .ci/ensure-browser.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    # one Playwright per test: a session-wide sync Playwright leaves its event loop set, which breaks asyncio.run()
    pw = sync_playwright().start()
    launched: list[Browser] = []

    def launch(fake_camera: Path | None = None) -> Browser:
        args = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
        if fake_camera is not None:
            args.append(f"--use-file-for-fake-video-capture={Path(fake_camera).resolve()}")
        # Chromium refuses to start sandboxed as root; Playwright adds --no-sandbox when this is False.
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args,
                               chromium_sandbox=os.geteuid() != 0)
        launched.append(b)
        return b

    try:
        yield launch
    finally:
        for b in launched:
            b.close()
        pw.stop()


def page_errors(page: Page) -> list[str]:
    """Collect the page's console errors and uncaught exceptions from now on, so a test can assert none.

    Call it before page.goto(); the returned list fills as events arrive.
    """
    errors: list[str] = []

    def on_console(m: ConsoleMessage) -> None:
        if m.type == "error":
            errors.append(f"console.error: {m.text} ({m.location.get('url', '')})")

    page.on("console", on_console)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors

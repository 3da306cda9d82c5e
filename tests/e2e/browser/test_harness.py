"""The browser harness itself: the Y4M fake camera and the written videos reach a page as the frames we drew.

If these fail, a failing page test says nothing about the page. A static page from serve_dir stands in for
the service so these run in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from .conftest import SQUARE_RGB, data_url_rgb, find_square, moving_square_frames, page_errors, write_video, write_y4m

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>harness</title>
<link rel="icon" href="data:,"></head>
<body><video muted playsinline></video></body></html>"""

# Camera: the first frame getUserMedia delivers, with the track's settings.
CAMERA_JS = """async () => {
  const t0 = performance.now();
  const stream = await navigator.mediaDevices.getUserMedia({video: true});
  const v = document.querySelector('video');
  v.srcObject = stream;
  await v.play();
  await new Promise((res) => v.requestVideoFrameCallback(res));
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext('2d').drawImage(v, 0, 0);
  const s = stream.getVideoTracks()[0].getSettings();
  stream.getTracks().forEach((t) => t.stop());
  return {width: s.width, height: s.height, frameRate: s.frameRate, ms: performance.now() - t0, png: c.toDataURL()};
}"""

# Video: every frame in order by seeking to its middle and waiting for both `seeked` and the frame callback
# (measured reliable; pausing inside requestVideoFrameCallback and resuming later skips a frame now and then).
STEP_JS = """async ([url, fps]) => {
  const v = document.querySelector('video');
  const blob = await (await fetch(url)).blob();
  await new Promise((res, rej) => {
    v.onloadeddata = res;
    v.onerror = () => rej(new Error(v.error.message));
    v.src = URL.createObjectURL(blob);
  });
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d');
  const n = Math.round(v.duration * fps);
  const frames = [];
  for (let i = 0; i < n; i++) {
    const meta = await new Promise((res) => {
      let seeked = false, meta = null;
      v.requestVideoFrameCallback((now, m) => { meta = m; if (seeked) res(meta); });
      v.addEventListener('seeked', () => { seeked = true; if (meta) res(meta); }, {once: true});
      v.currentTime = (i + 0.5) / fps;
    });
    ctx.drawImage(v, 0, 0);
    frames.push({mediaTime: meta.mediaTime, png: c.toDataURL()});
  }
  return {width: v.videoWidth, height: v.videoHeight, duration: v.duration, frames};
}"""


def test_fake_camera_delivers_the_y4m_frames(tmp_path: Path, browser: Callable, serve_dir: Callable) -> None:
    frames = moving_square_frames(50)
    cam = write_y4m(tmp_path / "cam.y4m", frames, fps=25)
    (tmp_path / "index.html").write_text(PAGE)
    page = browser(fake_camera=cam).new_page()
    errors = page_errors(page)
    page.goto(serve_dir(tmp_path) + "/index.html")

    got = page.evaluate(CAMERA_JS)
    assert (got["width"], got["height"], got["frameRate"]) == (320, 240, 25)
    img = data_url_rgb(got["png"])
    box = find_square(img)
    boxes = [b for _, b in frames]
    assert box in boxes, f"the square is at {box}, not where any frame drew it"
    src = frames[boxes.index(box)][0]
    x, y, w, h = box
    # limited-range Y4M comes back within a few levels (a full-range file would be off by up to 15)
    assert np.abs(img[y + h // 2, x + w // 2].astype(int) - SQUARE_RGB).max() <= 6
    assert np.abs(img.astype(int) - src.astype(int)).mean() < 2
    assert errors == []


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_written_video_plays_every_frame_in_order(name: str, tmp_path: Path, browser: Callable,
                                                  serve_dir: Callable) -> None:
    frames = moving_square_frames(60)
    write_video(tmp_path / name, frames, fps=25)
    (tmp_path / "index.html").write_text(PAGE)
    page = browser().new_page()
    errors = page_errors(page)
    page.goto(serve_dir(tmp_path) + "/index.html")

    got = page.evaluate(STEP_JS, [name, 25])
    assert (got["width"], got["height"]) == (320, 240)
    assert got["duration"] == pytest.approx(2.4, abs=0.05)
    assert [f["mediaTime"] for f in got["frames"]] == pytest.approx([i / 25 for i in range(60)], abs=1e-3)
    for i, f in enumerate(got["frames"]):
        box = find_square(data_url_rgb(f["png"]))
        assert box is not None, f"frame {i}: no square"
        (x, y, w, h), (ex, ey, _, _) = box, frames[i][1]
        # lossy codecs blur the edges by a pixel or two; the centre says which frame this is (4 px per frame)
        assert abs(x + w / 2 - ex - 30) <= 1.5 and abs(y + h / 2 - ey - 30) <= 1.5, f"frame {i}: {box}, {frames[i][1]}"
    assert errors == []

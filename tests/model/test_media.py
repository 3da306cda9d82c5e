"""Masks as users save them (indexed, greyscale, colour, 16-bit), and the one video probe."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from model.errors import InputError
from model.media import DAVIS_PALETTE, FrameSource, probe_video, read_label_png


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_colour_masks_give_one_object_per_colour() -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[10:15, 10:20] = (0, 255, 0)
    rgb[2:5, 2:5] = (255, 0, 0)
    lab = read_label_png(png(rgb))
    assert lab[3, 3] == 1 and lab[12, 12] == 2 and lab[0, 0] == 0  # order of first appearance
    one = np.zeros((20, 30, 3), np.uint8)
    one[2:5, 2:5] = 255  # white on black: one object, not palette id 255
    assert set(np.unique(read_label_png(png(one)))) == {0, 1}
    pal = np.zeros((20, 30, 3), np.uint8)
    pal[2:5, 2:5] = DAVIS_PALETTE[3]
    pal[10:15, 10:20] = DAVIS_PALETTE[7]  # grey (128,128,128): id 7, not id 128
    assert set(np.unique(read_label_png(png(pal)))) == {0, 3, 7}
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[2:5, 2:5] = (255, 0, 0, 255)
    rgba[10:15, 10:20] = (0, 0, 255, 0)  # transparent: background whatever its colour
    assert set(np.unique(read_label_png(png(rgba)))) == {0, 1}


def test_soft_colour_masks_and_wide_ids_are_refused() -> None:
    ramp = np.zeros((20, 40, 3), np.uint8)
    ramp[:, :, 0] = np.arange(40, dtype=np.uint8)[None, :] * 6  # 40 shades: an anti-aliased picture
    with pytest.raises(InputError, match="colours"):
        read_label_png(png(ramp))
    wide = np.zeros((10, 10), np.uint16)
    wide[2:4, 2:4] = 300
    with pytest.raises(InputError, match="1..254"):
        read_label_png(png(wide))
    grey = np.zeros((10, 10), np.uint8)
    grey[1:3, 1:3], grey[5:7, 5:7] = 1, 2
    assert set(np.unique(read_label_png(png(grey)))) == {0, 1, 2}  # greyscale ids stay ids


def test_probe_video_and_frame_source(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(7):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe_video(path, count=True)
    assert (info.frames, info.fps, info.height, info.width) == (7, 12.0, 48, 64)
    src = FrameSource(path)
    assert src.fps == 12.0 and src.names is None
    assert [n for n, _ in src] == [f"{i:05d}" for i in range(7)]
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 100)
    with pytest.raises(InputError, match="cannot be decoded"):
        probe_video(tmp_path / "junk.mp4")

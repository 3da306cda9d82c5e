"""Masks drawn over frames (object colours, outlines, object numbers) and the overlay MP4 writer.

`lwl segment --overlay` and the service's video jobs both write their overlay videos here, so the two
look the same. Colours are the palette of the label PNGs.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.media import DAVIS_PALETTE


def outline(labels: np.ndarray) -> np.ndarray:
    """Pixels of an object that touch another label (or the frame's edge). Computed over the objects'
    bounding box plus a one-pixel margin only: at 1080p the frame is mostly background."""
    obj = (labels > 0) & (labels != 255)
    edge = np.zeros(labels.shape, dtype=bool)
    rows, cols = np.flatnonzero(obj.any(1)), np.flatnonzero(obj.any(0))
    if rows.size == 0:
        return edge
    y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, labels.shape[0])
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, labels.shape[1])
    lab = np.pad(labels[y0:y1, x0:x1], 1, mode="edge")
    c = lab[1:-1, 1:-1]
    win = (c != lab[:-2, 1:-1]) | (c != lab[2:, 1:-1]) | (c != lab[1:-1, :-2]) | (c != lab[1:-1, 2:])
    # the window's border is the frame's edge, or margin that holds no object pixel
    win[0, :] = win[-1, :] = True
    win[:, 0] = win[:, -1] = True
    edge[y0:y1, x0:x1] = win & obj[y0:y1, x0:x1]
    return edge


def draw_overlay(frame: np.ndarray, labels: np.ndarray, boxes: dict[int, tuple] | None = None,
                 alpha: float = 0.5) -> np.ndarray:
    """The frame with each object's mask blended in its colour, its outline solid, its number at its box.

    Only object pixels are touched, in 8-bit fixed point (rounded): a 1080p frame took 120-200 ms in
    float32 over every pixel, which was most of the cost of `lwl segment --overlay`."""
    lab = np.where(labels == 255, 0, labels).astype(np.uint8, copy=False)
    out = np.array(frame[..., :3], dtype=np.uint8, copy=True)
    on = lab > 0
    if on.any():
        a = int(round(alpha * 256))
        colour = DAVIS_PALETTE[lab[on]].astype(np.uint16)
        out[on] = ((out[on].astype(np.uint16) * (256 - a) + colour * a + 128) >> 8).astype(np.uint8)
        edge = outline(lab)
        out[edge] = DAVIS_PALETTE[lab[edge]]
    if boxes:
        out = _numbers(out, boxes)
    return out


def _numbers(img: np.ndarray, boxes: dict[int, tuple]) -> np.ndarray:
    """Object numbers on a tag of the object's colour at the top-left of its box."""
    h, w = img.shape[:2]
    size = max(10, min(h, w) // 24)
    font = ImageFont.load_default(size=size)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for oid, box in boxes.items():
        if box is None:
            continue
        text = str(oid)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + size // 2, bottom - top + size // 3
        x = int(min(max(0, box[0]), w - tw))
        y = int(min(max(0, box[1] - th), h - th))
        rgb = tuple(int(v) for v in DAVIS_PALETTE[oid])
        draw.rectangle([x, y, x + tw, y + th], fill=rgb)
        ink = (0, 0, 0) if sum(rgb) > 380 else (255, 255, 255)
        draw.text((x + size // 4 - left, y + size // 6 - top), text, fill=ink, font=font)
    return np.asarray(pil)


class OverlayWriter:
    """Appends overlay frames to an MP4 (H.264 where this FFmpeg has it) at the source's frame rate."""

    def __init__(self, path: str | Path, fps: float = 25.0, alpha: float = 0.5) -> None:
        import av

        self.path, self.fps, self.alpha = Path(path), fps, alpha
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = None
        self.frames = 0

    def _open_stream(self, h: int, w: int) -> None:
        rate = Fraction(self.fps).limit_denominator(1000)
        for codec in ("libx264", "h264", "mpeg4"):
            try:
                self.stream = self.container.add_stream(codec, rate=rate)
                break
            except Exception:  # noqa: BLE001 - codec missing from this FFmpeg build
                continue
        if self.stream is None:
            raise RuntimeError("no MP4 video encoder in this FFmpeg build")
        self.stream.width, self.stream.height = w, h
        self.stream.pix_fmt = "yuv420p"
        if self.stream.codec_context.name == "libx264":
            # a preview, not an archive: x264's default preset took 50 ms more per 1080p frame and
            # 200 MB more memory for a file 40% larger than this one
            self.stream.options = {"preset": "veryfast"}

    def write(self, frame: np.ndarray, labels: np.ndarray, boxes: dict[int, tuple] | None = None) -> None:
        """Append one RGB frame with its masks drawn on (cropped to even sides, as yuv420p needs)."""
        import av

        h, w = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2
        if self.stream is None:
            self._open_stream(h, w)
        img = draw_overlay(frame[:h, :w], labels[:h, :w], boxes, self.alpha)
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

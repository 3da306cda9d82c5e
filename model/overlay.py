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
    """Pixels of an object that touch another label (or the frame's edge)."""
    lab = np.pad(labels, 1, mode="edge")
    c = lab[1:-1, 1:-1]
    edge = (c != lab[:-2, 1:-1]) | (c != lab[2:, 1:-1]) | (c != lab[1:-1, :-2]) | (c != lab[1:-1, 2:])
    edge[0, :] = edge[-1, :] = True
    edge[:, 0] = edge[:, -1] = True
    return edge & (labels > 0) & (labels != 255)


def draw_overlay(frame: np.ndarray, labels: np.ndarray, boxes: dict[int, tuple] | None = None,
                 alpha: float = 0.5) -> np.ndarray:
    """The frame with each object's mask blended in its colour, its outline solid, its number at its box."""
    lab = np.where(labels == 255, 0, labels)
    colour = DAVIS_PALETTE[lab].astype(np.float32)
    img = frame.astype(np.float32)
    on = (lab > 0)[..., None]
    img = np.where(on, (1 - alpha) * img + alpha * colour, img)
    edge = outline(lab)
    img[edge] = colour[edge]
    out = np.clip(img, 0, 255).astype(np.uint8)
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

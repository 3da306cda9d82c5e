"""Reading frames, masks and videos; writing DAVIS-style indexed PNGs.

Frames are decoded with Pillow, which gives the same pixels as OpenCV (the reference's reader) on
baseline JPEGs. Everything returns numpy arrays: RGB uint8 (H, W, 3) frames, uint8 (H, W) label maps.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _davis_palette() -> np.ndarray:
    """The palette of DAVIS/pytracking result PNGs: 22 distinct colours, then grey levels."""
    pal = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    first = [
        (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
        (128, 128, 128), (64, 0, 0), (191, 0, 0), (64, 128, 0), (191, 128, 0), (64, 0, 128), (191, 0, 128),
        (64, 128, 128), (191, 128, 128), (0, 64, 0), (128, 64, 0), (0, 191, 0), (128, 191, 0), (0, 64, 128),
        (128, 64, 128),
    ]
    pal[: len(first)] = np.array(first, dtype=np.uint8)
    return pal


DAVIS_PALETTE = _davis_palette()

Source = str | Path | bytes | BinaryIO


def _open(src: Source, what: str) -> Image.Image:
    try:
        if isinstance(src, bytes):
            im = Image.open(io.BytesIO(src))
        else:
            im = Image.open(src)
        im.load()
        return im
    except FileNotFoundError:
        raise InputError(f"{what} not found: {src}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        name = "uploaded data" if isinstance(src, bytes) else str(src)
        raise InputError(f"{what} cannot be decoded ({name}): {exc}") from None


def read_image(src: Source) -> np.ndarray:
    """An image file or bytes -> RGB uint8 (H, W, 3)."""
    im = _open(src, "image")
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def read_label_png(src: Source) -> np.ndarray:
    """A mask: indexed PNG (values = object ids) or greyscale/binary image (non-zero = object 1)."""
    im = _open(src, "mask")
    if im.mode == "P":
        return np.asarray(im, dtype=np.uint8).copy()
    arr = np.asarray(im.convert("L"), dtype=np.uint8)
    if im.mode in ("L", "I", "I;16", "1") and arr.max() <= 255 and len(np.unique(arr)) > 2:
        return arr.copy()  # greyscale label map with several ids
    return (arr > 0).astype(np.uint8)


def encode_label_png(labels: np.ndarray) -> bytes:
    """Label map -> indexed PNG bytes with the DAVIS palette."""
    buf = io.BytesIO()
    write_label_png(buf, labels)
    return buf.getvalue()


def write_label_png(dst: str | Path | BinaryIO, labels: np.ndarray) -> None:
    """Write a uint8 label map as an indexed PNG (mode P, DAVIS palette)."""
    im = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    im.putpalette(DAVIS_PALETTE.reshape(-1).tolist())
    im.save(dst, format="PNG")


def list_frames(folder: str | Path) -> list[Path]:
    """Image files of a frame folder in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"frame folder not found: {folder}")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise InputError(f"no image frames (.jpg/.png) in {folder}")
    return frames


def iter_video_frames(src: str | Path | BinaryIO) -> Iterator[np.ndarray]:
    """Decode a video file (PyAV) into RGB uint8 frames."""
    import av  # local: only video paths need it

    try:
        container = av.open(src if not isinstance(src, Path) else str(src))
    except FileNotFoundError:
        raise InputError(f"video not found: {src}") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"video cannot be decoded: {exc}") from None
    try:
        if not container.streams.video:
            raise InputError("file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = 0
        try:
            for frame in container.decode(stream):
                n += 1
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise InputError(f"video cannot be decoded (after {n} frames): {exc}") from None
        if n == 0:
            raise InputError("video has no decodable frames")
    finally:
        container.close()


def video_info(src: str | Path) -> tuple[int, float]:
    """(frame count, frames per second) of a video, counted by decoding (container counts can lie)."""
    import av

    count = sum(1 for _ in iter_video_frames(src))
    with av.open(str(src)) as c:
        rate = c.streams.video[0].average_rate
    return count, float(rate) if rate else 25.0


def box_from_label(mask: np.ndarray) -> tuple[float, float, float, float]:
    """[x_min, y_min, x_max - x_min, y_max - y_min] of a binary mask (no +1: the benchmark convention, spec §6.13)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min()))

"""Video-job outputs that need no model: the overlay MP4 writer (PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.media import DAVIS_PALETTE


class OverlayWriter:
    """Blends each frame with its label map in DAVIS colours and appends it to an MP4."""

    def __init__(self, path: Path, fps: float = 25.0, alpha: float = 0.5) -> None:
        import av

        self.path, self.fps, self.alpha = path, fps, alpha
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = None
        self._av = av

    def _open_stream(self, h: int, w: int) -> None:
        from fractions import Fraction

        rate = Fraction(self.fps).limit_denominator(1000)
        for codec in ("libx264", "h264", "mpeg4"):
            try:
                self.stream = self.container.add_stream(codec, rate=rate)
                break
            except Exception:  # noqa: BLE001 - codec missing from this FFmpeg build
                continue
        assert self.stream is not None, "no MP4 video encoder available"
        self.stream.width, self.stream.height = w, h
        self.stream.pix_fmt = "yuv420p"

    def write(self, frame: np.ndarray, labels: np.ndarray) -> None:
        """Append one RGB frame with its labels painted on."""
        h, w = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2
        if self.stream is None:
            self._open_stream(h, w)
        img = frame[:h, :w].astype(np.float32)
        lab = labels[:h, :w]
        colour = DAVIS_PALETTE[lab].astype(np.float32)
        on = (lab > 0)[..., None]
        img = np.where(on, (1 - self.alpha) * img + self.alpha * colour, img)
        vf = self._av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

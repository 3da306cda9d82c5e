"""Every output of a segmented video, written in one place: a folder of PNGs (`lwl segment --out`), a
zip of PNGs, COCO RLE JSON and the overlay MP4 (`lwl segment --overlay`, video jobs).

`RESULT_FORMATS` declares the results a video job offers (format name -> file name, media type, a
label and a description); the api, the SDK and the web page read them from here or from `/v1/info`,
so one more format is one more entry (and its writer) in this file.

Each writer writes to a partial name and moves it into place on `commit()`, so a failed or
interrupted run leaves no half-written result behind (`discard()` removes the partial file).
Torch-free: the api process reads the registry without loading the model.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from model.errors import InputError
from model.media import encode_label_png, write_label_png
from model.rle import rle_encode
from model.video import SegmentedFrame

PART = ".part"  # suffix of a file being written


class OutputWriter(Protocol):
    """One output of a video: fed every segmented frame in order, then committed or discarded."""

    def write(self, f: SegmentedFrame) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...


class LabelFolder:
    """One DAVIS-palette PNG per frame, named like the input frame, into a folder. Written to a hidden
    sibling folder and moved into place only when the run succeeds."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        self.count = 0
        try:
            if self.out.exists() and not self.out.is_dir():
                raise InputError(f"--out {self.out} exists and is not a folder")
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot write to {self.out}: {exc.strerror or exc}") from None

    def write(self, f: SegmentedFrame) -> None:
        write_label_png(self.tmp / f"{f.name}.png", f.labels)

    def commit(self) -> None:
        """Move every written file into the folder (`count` says how many)."""
        self.out.mkdir(parents=True, exist_ok=True)
        files = sorted(self.tmp.iterdir())
        for p in files:
            os.replace(p, self.out / p.name)
        self.tmp.rmdir()
        self.count = len(files)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class _PartialFile:
    """A result file written as `<name>.part` and renamed when complete."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + PART)

    def commit(self) -> None:
        self.close()
        os.replace(self.part, self.path)

    def discard(self) -> None:
        try:  # the writer's own error is the one to report
            self.close()
        finally:
            self.part.unlink(missing_ok=True)

    def close(self) -> None:
        """Release what the writer holds open (nothing by default)."""


class LabelZip(_PartialFile):
    """A zip of DAVIS-palette PNGs, `00000.png`, `00001.png`, ... by frame index (stored, not deflated:
    PNGs are compressed already)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.zip: zipfile.ZipFile | None = zipfile.ZipFile(self.part, "w", zipfile.ZIP_STORED)

    def write(self, f: SegmentedFrame) -> None:
        assert self.zip is not None, "written after commit or discard"
        self.zip.writestr(f"{f.index:05d}.png", encode_label_png(f.labels))

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
            self.zip = None


def rle_frame(f: SegmentedFrame) -> dict[str, Any]:
    """One frame of the RLE JSON: each object's id, score, area, box and COCO RLE mask."""
    return {"frame_index": f.index, "objects": [
        {"id": oid, "score": o.score, "area": o.area, "box": list(o.box) if o.box is not None else None,
         "segmentation": rle_encode(f.labels == oid)} for oid, o in f.objects.items()]}


class RleJson(_PartialFile):
    """COCO RLE JSON of every frame: `{**header, "frames": [...]}` (header: e.g. the job id)."""

    def __init__(self, path: str | Path, header: dict[str, Any] | None = None) -> None:
        super().__init__(path)
        self.header = dict(header or {})
        self.frames: list[dict[str, Any]] = []

    def write(self, f: SegmentedFrame) -> None:
        self.frames.append(rle_frame(f))

    def commit(self) -> None:
        self.part.write_text(json.dumps({**self.header, "frames": self.frames}))
        super().commit()


class OverlayVideo(_PartialFile):
    """The frames with their masks drawn on (model.overlay), as an MP4 at the source's frame rate."""

    def __init__(self, path: str | Path, fps: float = 25.0) -> None:
        from model.overlay import OverlayWriter  # PyAV: only when an overlay is asked for

        super().__init__(path)
        try:
            self.writer: Any = OverlayWriter(self.part, fps=fps)
        except OSError as exc:
            raise InputError(f"cannot write the overlay {self.path}: {exc.strerror or exc}") from None

    def write(self, f: SegmentedFrame) -> None:
        self.writer.write(f.image, f.labels, {k: o.box for k, o in f.objects.items()})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass(frozen=True)
class ResultFormat:
    """A result of a video job: how the api names, serves and describes it, and how it is written."""

    name: str  # the `format` of GET /v1/jobs/{id}/result
    file: str  # file name in the job's directory
    media_type: str
    label: str  # a short name for a link or a menu
    description: str
    writer: Callable[[Path, dict[str, Any]], OutputWriter]  # (path, job info: job_id, fps) -> writer

    def public(self) -> dict[str, str]:
        """What clients are told (GET /v1/info): everything but the writer."""
        return {"name": self.name, "file": self.file, "media_type": self.media_type, "label": self.label,
                "description": self.description}


RESULT_FORMATS: dict[str, ResultFormat] = {f.name: f for f in (
    ResultFormat("png", "masks.zip", "application/zip", "PNG masks (zip)",
                 "zip of DAVIS-palette indexed PNGs, one per frame (00000.png, ...)",
                 lambda path, job: LabelZip(path)),
    ResultFormat("rle", "rle.json", "application/json", "COCO RLE (json)",
                 "JSON: per frame, each object's id, score, area, box and COCO RLE mask",
                 lambda path, job: RleJson(path, {"job_id": job.get("job_id", "")})),
    ResultFormat("mp4", "overlay.mp4", "video/mp4", "overlay video (mp4)",
                 "the video with the masks drawn on (outlines and object numbers)",
                 lambda path, job: OverlayVideo(path, fps=float(job.get("fps") or 25.0))),
)}


class Outputs:
    """Several writers fed together: every frame to each, then all committed, or all discarded."""

    def __init__(self, writers: Iterable[OutputWriter]) -> None:
        self.writers = list(writers)

    def write(self, f: SegmentedFrame) -> None:
        for w in self.writers:
            w.write(f)

    def commit(self) -> None:
        for w in self.writers:
            w.commit()

    def discard(self) -> None:
        """Remove whatever is half written; the first error of a writer is kept for the caller's own."""
        for w in self.writers:
            try:
                w.discard()
            except Exception:  # noqa: BLE001, S112 - the run's own error is the one to report
                continue

    def write_all(self, frames: Iterable[SegmentedFrame]) -> int:
        """Write every frame, commit (or discard on any error); returns how many frames were written."""
        n = 0
        try:
            for f in frames:
                self.write(f)
                n = f.index + 1
            self.commit()
        except BaseException:
            self.discard()
            raise
        return n


def job_outputs(directory: str | Path, job: dict[str, Any]) -> Outputs:
    """Every registered result format of a video job into its directory (`job`: job_id, fps)."""
    d = Path(directory)
    writers: list[OutputWriter] = []
    try:
        for fmt in RESULT_FORMATS.values():
            writers.append(fmt.writer(d / fmt.file, job))
    except BaseException:
        Outputs(writers).discard()
        raise
    return Outputs(writers)

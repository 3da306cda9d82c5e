"""One video pipeline: frames in (decoded one at a time), segmented frames out, in frame order.

`segment_video` is what `lwl segment`, the service's video jobs and `lwl eval` run. It tracks forward
from the first frame that gives objects, and backwards from there over the frames before it (as
the reference does for sequences whose first annotation is late). Objects that first appear on a
later frame start there; with `corrections=True` a later annotation of an object already tracked
becomes a user correction.

Memory does not grow with the video's length: the forward pass holds one frame at a time. Only the
frames before the first annotation must wait (they are segmented after it, backwards); they wait
on disk in a temporary folder, as raw arrays so their pixels stay exact, together with their masks
until they are handed out in order.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import InputError

Box = tuple[float, float, float, float]


@dataclass
class Annotation:
    """Objects given on one frame: a label map (0 = background, 255 = ignore) and/or boxes by id."""

    mask: np.ndarray | None = None
    boxes: dict[int, Box] | None = None

    def mask_ids(self) -> list[int]:
        """Object ids painted in the mask (not 0, not 255)."""
        return [int(v) for v in np.unique(self.mask) if v not in (0, 255)] if self.mask is not None else []

    def ids(self) -> list[int]:
        return sorted(set(self.mask_ids()) | set(self.boxes or {}))


@dataclass
class ObjectInfo:
    """One object on one frame: box (x, y, w, h) or None when not visible, score, area in pixels."""

    box: Box | None
    score: float
    area: int


@dataclass
class SegmentedFrame:
    """A frame of the video with its masks."""

    index: int
    name: str
    image: np.ndarray  # RGB uint8 (H, W, 3)
    labels: np.ndarray  # uint8 (H, W)
    objects: dict[int, ObjectInfo] = field(default_factory=dict)


def objects_to_json(objects: dict[int, ObjectInfo]) -> dict[str, Any]:
    """Per-object summaries as JSON (the spool keeps them next to the masks on disk)."""
    return {str(k): [list(o.box) if o.box is not None else None, o.score, o.area] for k, o in objects.items()}


def objects_from_json(d: dict[str, Any]) -> dict[int, ObjectInfo]:
    return {int(k): ObjectInfo(tuple(v[0]) if v[0] is not None else None, v[1], v[2]) for k, v in d.items()}


def _summary(res: Any) -> dict[int, ObjectInfo]:
    return {int(k): ObjectInfo(tuple(float(v) for v in o.box) if o.box is not None else None, float(o.score),
                               int(o.area)) for k, o in res.objects.items()}


class _Spool:
    """Frames (and later their masks) parked on disk while the pass that needs them catches up."""

    def __init__(self, root: str | Path | None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="lwl-spool-", dir=root)
        self.path = Path(self._dir.name)
        self.names: list[str] = []

    def put(self, name: str, image: np.ndarray) -> None:
        np.save(self.path / f"{len(self.names)}.npy", image, allow_pickle=False)
        self.names.append(name)

    def image(self, i: int) -> np.ndarray:
        return np.load(self.path / f"{i}.npy", allow_pickle=False)

    def put_result(self, i: int, labels: np.ndarray, objects: dict[int, ObjectInfo]) -> None:
        np.save(self.path / f"{i}.labels.npy", labels, allow_pickle=False)
        (self.path / f"{i}.json").write_text(json.dumps(objects_to_json(objects)))

    def result(self, i: int) -> SegmentedFrame:
        labels = np.load(self.path / f"{i}.labels.npy", allow_pickle=False)
        objects = objects_from_json(json.loads((self.path / f"{i}.json").read_text()))
        return SegmentedFrame(i, self.names[i], self.image(i), labels, objects)

    def close(self) -> None:
        self._dir.cleanup()


def _as_annotation(a: Annotation | np.ndarray | None) -> Annotation | None:
    if a is None or isinstance(a, Annotation):
        return a
    return Annotation(mask=np.asarray(a, dtype=np.uint8))


def _lookup(annotations: Mapping[int | str, Annotation | np.ndarray], i: int, name: str) -> Annotation | None:
    """The annotation of frame `i`, given by index or by frame name."""
    a = annotations.get(i)
    if a is None:
        a = annotations.get(name)
    a = _as_annotation(a)
    return a if a is not None and a.ids() else None


def _forward_step(tracker: Any, frame: np.ndarray, ann: Annotation | None, corrections: bool) -> Any:
    """One forward frame: new ids start on it; ids already tracked are corrections (or ignored)."""
    if ann is None:
        return tracker.step(frame)
    known = set(tracker.object_ids)
    if not known:  # the first objects: the annotation as given
        return tracker.step(frame, mask=ann.mask, boxes=ann.boxes)
    mask_ids = ann.mask_ids()
    new = [i for i in mask_ids if i not in known]
    new_mask = np.where(np.isin(ann.mask, new), ann.mask, 0).astype(np.uint8) if new else None
    new_boxes = {k: v for k, v in (ann.boxes or {}).items() if k not in known} or None
    res = tracker.step(frame, mask=new_mask, boxes=new_boxes)
    if corrections:
        fix = [i for i in mask_ids if i in known]
        if fix:
            res = tracker.correct(np.where(np.isin(ann.mask, fix), ann.mask, 0).astype(np.uint8))
    return res


def segment_video(model: Any, frames: Iterable[tuple[str, np.ndarray]],
                  annotations: Mapping[int | str, Annotation | np.ndarray], *,
                  crop_size: tuple[int, int] | None = None, corrections: bool = False,
                  on_progress: Callable[[int], None] | None = None,
                  spool_dir: str | Path | None = None) -> Iterator[SegmentedFrame]:
    """Segment a video; yields every frame in order with its masks.

    model: a `model.api.Model` (anything with `new_tracker(crop_size)`).
    frames: (name, RGB frame) pairs, e.g. a `model.media.FrameSource`; decoded as they are consumed.
    annotations: by frame index or name: an `Annotation` or a label map. The first annotated frame
        starts the tracking; frames before it are segmented backwards from it (with its objects only).
    on_progress: called with the number of frames segmented so far (both passes).
    """
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done)

    spool: _Spool | None = None
    forward = None
    try:
        for i, (name, frame) in enumerate(frames):
            ann = _lookup(annotations, i, name)
            if forward is None and ann is None:  # before the first annotation: park the frame
                spool = spool or _Spool(spool_dir)
                spool.put(name, frame)
                continue
            if forward is None:
                forward = model.new_tracker(crop_size)
                res = _forward_step(forward, frame, ann, False)
                tick()
                if spool is not None:
                    yield from _backward(model, crop_size, spool, frame, ann, tick)
                yield SegmentedFrame(i, name, frame, res.labels, _summary(res))
                continue
            res = _forward_step(forward, frame, ann, corrections)
            tick()
            yield SegmentedFrame(i, name, frame, res.labels, _summary(res))
        if forward is None:
            raise InputError("no frame has an annotation with objects (check the mask, boxes or annotation names)")
    finally:
        if spool is not None:
            spool.close()


def _backward(model: Any, crop_size: tuple[int, int] | None, spool: _Spool, first: np.ndarray,
              ann: Annotation, tick: Callable[[], None]) -> Iterator[SegmentedFrame]:
    """The frames before the first annotation, tracked from it backwards, handed out in frame order."""
    back = model.new_tracker(crop_size)
    back.step(first, mask=ann.mask, boxes=ann.boxes)
    for i in range(len(spool.names) - 1, -1, -1):
        res = back.step(spool.image(i))
        spool.put_result(i, res.labels, _summary(res))
        tick()
    for i in range(len(spool.names)):
        yield spool.result(i)

"""`lwl eval`: run the tracker over a DAVIS-layout set, write PNGs and print J, F and J&F.

Protocol (DAVIS semi-supervised): the tracker receives the first frame's label map and segments
every following frame; ids that first appear later (YouTube-VOS style annotations) are started on
the frame where their first annotation is given when `init='first-appearance'`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from model.boxes import mask_to_box
from model.eval.metrics import ObjectScore, Summary, evaluate_sequence, summarise
from model.media import read_image, read_label_png, write_label_png
from model.video import Annotation, segment_video


def write_png(path: Path, labels: np.ndarray) -> None:
    """The label map as `lwl segment` writes it (model.media), its folder created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_label_png(path, labels)


def list_sequences(root: Path, sequences: Sequence[str] | None = None) -> list[str]:
    img_root = _img_root(root)
    names = sorted(p.name for p in img_root.iterdir() if p.is_dir())
    if sequences:
        missing = set(sequences) - set(names)
        if missing:
            raise FileNotFoundError(f"sequences not found under {img_root}: {sorted(missing)}")
        return list(sequences)
    return names


def _img_root(root: Path) -> Path:
    r = root / "JPEGImages"
    return r / "480p" if (r / "480p").is_dir() else r


def _ann_root(root: Path) -> Path:
    r = root / "Annotations"
    return r / "480p" if (r / "480p").is_dir() else r


def read_sequence(root: Path, name: str, max_frames: int | None = None
                  ) -> tuple[list[str], list[np.ndarray], dict[int, np.ndarray]]:
    """Frame stems, RGB frames and the annotations that exist (frame index -> label map)."""
    paths = sorted(p for p in (_img_root(root) / name).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if max_frames:
        paths = paths[:max_frames]
    frames = [read_image(p) for p in paths]
    anns = {}
    for i, p in enumerate(paths):
        a = _ann_root(root) / name / (p.stem + ".png")
        if a.exists():
            anns[i] = read_label_png(a)
    return [p.stem for p in paths], frames, anns


def track_sequence(model: Any, frames: list[np.ndarray], anns: dict[int, np.ndarray], init: str = "first",
                   crop_size: tuple[int, int] | None = None, start: str = "mask") -> np.ndarray:
    """Label maps (T, H, W) from the video pipeline (model.video) on a fresh tracker of `model`.

    init='first': only the first frame's objects; 'first-appearance': an id whose first annotation
    comes later starts on that frame (YouTube-VOS); later annotations of known ids are ignored.
    start='mask': objects start from their annotated masks; 'box': from the tight box of each (what a
    user drags), as the paper's box-initialised evaluation does.
    """
    if 0 not in anns:
        raise ValueError("the first frame has no annotation")
    given = anns if init == "first-appearance" else {0: anns[0]}
    use = {t: start_annotation(a, start) for t, a in given.items()}
    if not use[0].ids():
        raise ValueError("the first annotation has no objects")
    out = np.zeros((len(frames), *frames[0].shape[:2]), np.uint8)
    for f in segment_video(model, ((f"{t:05d}", fr) for t, fr in enumerate(frames)), use, crop_size=crop_size):
        out[f.index] = f.labels
    return out


def start_annotation(ann: np.ndarray, start: str = "mask") -> Annotation:
    """An annotated label map as the objects a run starts from: the masks, or each object's tight box."""
    mask = np.where(ann == 255, 0, ann).astype(np.uint8)
    if start == "mask":
        return Annotation(mask=mask)
    return Annotation(boxes={i: tuple(float(v) for v in mask_to_box(mask == i)) for i in Annotation(mask).mask_ids()})


class CopyFirstModel:
    """Baseline 'model' that repeats the first annotation on every frame: the first mask (J&F 25.0 on the
    held-out videos), or with a box start each object's box filled (what a box alone gives)."""

    name = "copy-first"

    class _Tracker:
        def __init__(self) -> None:
            self.labels: np.ndarray | None = None
            self.object_ids: list[int] = []

        def step(self, frame: np.ndarray, mask: np.ndarray | None = None, boxes: Any = None) -> Any:
            if self.labels is None and (mask is not None or boxes):
                labels = np.zeros(frame.shape[:2], np.uint8)
                for oid, (x, y, w, h) in sorted((boxes or {}).items()):
                    labels[int(y) : int(y + h), int(x) : int(x + w)] = oid
                self.labels = np.where(mask > 0, mask, labels).astype(np.uint8) if mask is not None else labels
                self.object_ids = Annotation(self.labels).mask_ids()
            labels = self.labels if self.labels is not None else np.zeros(frame.shape[:2], np.uint8)
            return SimpleNamespace(labels=labels, objects={})

    def new_tracker(self, crop_size: tuple[int, int] | None = None) -> Any:
        return self._Tracker()


def evaluate_davis(model: Any, data: str | Path, out: str | Path | None = None,
                   sequences: Sequence[str] | None = None, max_frames: int | None = None,
                   init: str = "first", log: Callable[[str], None] | None = None,
                   crop_size: tuple[int, int] | None = None, start: str = "mask"
                   ) -> tuple[list[ObjectScore], Summary, dict[str, Any]]:
    """Track every sequence with `model` (model.api.Model or CopyFirstModel), optionally write PNGs under
    out/<seq>/, and score against the ground truth."""
    root = Path(data)
    scores: list[ObjectScore] = []
    n_frames, t0 = 0, time.time()
    for name in list_sequences(root, sequences):
        stems, frames, anns = read_sequence(root, name, max_frames)
        pred = track_sequence(model, frames, anns, init, crop_size, start)
        n_frames += len(frames)
        if out is not None:
            for stem, lab in zip(stems, pred, strict=True):
                write_png(Path(out) / name / f"{stem}.png", lab)
        if len(anns) != len(frames):
            raise ValueError(f"{name}: scoring needs every frame annotated ({len(anns)}/{len(frames)})")
        gt = np.stack([anns[i] for i in range(len(frames))])
        seq_scores = evaluate_sequence(name, gt, pred)
        scores += seq_scores
        if log:
            jm = np.mean([s.j_mean for s in seq_scores])
            fm = np.mean([s.f_mean for s in seq_scores])
            log(f"{name:24s} J {jm:.3f}  F {fm:.3f}  J&F {(jm + fm) / 2:.3f}  ({len(frames)} frames)")
    summary = summarise(scores)
    info = {"frames": n_frames, "seconds": time.time() - t0, "init": start}
    return scores, summary, info


def format_table(scores: list[ObjectScore], summary: Summary) -> str:
    """Per-sequence and global results in the toolkit's column order."""
    lines = [f"{'Sequence':28s} {'J&F':>6s} {'J-Mean':>7s} {'J-Rec':>6s} {'J-Dec':>6s} "
             f"{'F-Mean':>7s} {'F-Rec':>6s} {'F-Dec':>6s}"]
    for s in scores:
        name = f"{s.sequence}_{s.object_id}"
        lines.append(f"{name:28s} {s.jf:6.3f} {s.j_mean:7.3f} {s.j_recall:6.3f} {s.j_decay:6.3f} "
                     f"{s.f_mean:7.3f} {s.f_recall:6.3f} {s.f_decay:6.3f}")
    g = summary
    lines.append(f"{'GLOBAL':28s} {g.jf_mean:6.3f} {g.j_mean:7.3f} {g.j_recall:6.3f} {g.j_decay:6.3f} "
                 f"{g.f_mean:7.3f} {g.f_recall:6.3f} {g.f_decay:6.3f}")
    return "\n".join(lines)


def write_results(out: str | Path, scores: list[ObjectScore], summary: Summary, info: dict[str, Any]) -> None:
    """Toolkit-style CSVs plus a JSON with everything (per-frame values included)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "global_results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        d = summary.as_dict()
        w.writerow(list(d))
        w.writerow([f"{v:.6f}" for v in d.values()])
    with open(out / "per-sequence_results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Sequence", "J-Mean", "F-Mean"])
        for s in scores:
            w.writerow([f"{s.sequence}_{s.object_id}", f"{s.j_mean:.6f}", f"{s.f_mean:.6f}"])
    (out / "results.json").write_text(json.dumps(
        {"global": summary.as_dict(), "info": info, "objects": [asdict(s) for s in scores]}, indent=1))

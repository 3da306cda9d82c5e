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
from typing import Any

import numpy as np
from PIL import Image

from model.eval.metrics import ObjectScore, Summary, evaluate_sequence, summarise

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "default.safetensors"


def _palette() -> list[int]:
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


PALETTE = _palette()


def write_png(path: Path, labels: np.ndarray) -> None:
    """Indexed PNG with the DAVIS palette (what the toolkits and servers read)."""
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(PALETTE)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


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
    frames = [np.array(Image.open(p).convert("RGB")) for p in paths]
    anns = {}
    for i, p in enumerate(paths):
        a = _ann_root(root) / name / (p.stem + ".png")
        if a.exists():
            anns[i] = np.asarray(Image.open(a)).astype(np.uint8)
    return [p.stem for p in paths], frames, anns


TrackerFactory = Callable[[], Any]


def track_sequence(new_tracker: TrackerFactory, frames: list[np.ndarray], anns: dict[int, np.ndarray],
                   init: str = "first") -> np.ndarray:
    """Label maps (T, H, W) predicted by a fresh tracker."""
    if 0 not in anns:
        raise ValueError("the first frame has no annotation")
    tr = new_tracker()
    out = np.zeros((len(frames), *frames[0].shape[:2]), np.uint8)
    seen: set[int] = set()
    for t, frame in enumerate(frames):
        mask = None
        if t == 0 or (init == "first-appearance" and t in anns):
            lab = np.where(anns[t] == 255, 0, anns[t]).astype(np.uint8)
            new_ids = set(np.unique(lab).tolist()) - {0} - seen
            if new_ids:
                mask = np.where(np.isin(lab, list(new_ids)), lab, 0).astype(np.uint8)
                seen |= new_ids
        if t == 0 and mask is None:
            raise ValueError("the first annotation has no objects")
        out[t] = tr.step(frame, mask=mask).labels
    return out


def copy_first_tracker() -> Any:
    """Baseline 'tracker' that repeats the first mask on every frame (J&F 25.1 on the reference set)."""

    class _Res:
        def __init__(self, labels: np.ndarray) -> None:
            self.labels = labels

    class _Copy:
        first: np.ndarray | None = None

        def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> _Res:
            if self.first is None:
                self.first = mask
            return _Res(self.first if self.first is not None else np.zeros(frame.shape[:2], np.uint8))

    return _Copy()


def tracker_factory_for_net(net: Any, cfg: Any, preset: str = "lwl_ytvos", device: str = "cpu",
                            crop_size: tuple[int, int] | None = None) -> TrackerFactory:
    """Trackers on an in-memory network (the trainer validates without writing a file)."""
    from model.config import TrackerParams
    from model.tracker import Tracker

    params = TrackerParams.preset(preset)
    crop = tuple(crop_size or cfg.crop_size)
    return lambda: Tracker(net, params, crop, device)


def load_tracker_factory(weights: str | Path | None, device: str = "cpu",
                         crop_size: tuple[int, int] | None = None) -> tuple[TrackerFactory, str]:
    """Trackers for a weights file (project safetensors or official .pth); None = the bundled model."""
    from model.checkpoint import build_from_weights, read_weights
    from model.train.ablation import apply_ablation

    path = Path(weights) if weights else DEFAULT_WEIGHTS
    if weights is None and not path.exists():
        from model.api import load_model  # the model engineer's loader knows where the bundle lives

        m = load_model(weights=None, device=device)
        return (lambda: m.new_tracker(crop_size=crop_size)), m.name
    w = read_weights(path)
    net = build_from_weights(w).to(device)
    apply_ablation(net, w.meta.get("ablation"))
    net.eval()
    return tracker_factory_for_net(net, w.config, w.tracker_preset, device, crop_size), path.stem


def evaluate_davis(new_tracker: TrackerFactory, data: str | Path, out: str | Path | None = None,
                   sequences: Sequence[str] | None = None, max_frames: int | None = None,
                   init: str = "first", log: Callable[[str], None] | None = None
                   ) -> tuple[list[ObjectScore], Summary, dict[str, Any]]:
    """Track every sequence, optionally write PNGs under out/<seq>/, and score against the GT."""
    root = Path(data)
    scores: list[ObjectScore] = []
    n_frames, t0 = 0, time.time()
    for name in list_sequences(root, sequences):
        stems, frames, anns = read_sequence(root, name, max_frames)
        pred = track_sequence(new_tracker, frames, anns, init)
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
    info = {"frames": n_frames, "seconds": time.time() - t0}
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

"""`make demo`: segment a generated multi-object video with the bundled model, end to end.

Writes the input frames, the first-frame mask, the predicted masks (via the same code path as
`lwl segment`), an overlay strip to look at, and prints mean IoU against the generated ground
truth next to the copy-first-mask baseline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from model.api import BUNDLED_WEIGHTS
from model.media import DAVIS_PALETTE, read_label_png, write_label_png


def make_video(out: Path, frames: int, seed: int) -> np.ndarray:
    """Render a synthetic clip into out/JPEGImages and out/Annotations/00000.png; returns the true labels."""
    from model.train.synthetic import SyntheticVideo

    video = SyntheticVideo(np.random.default_rng(seed), (240, 432), max_objects=2, distractor_prob=0.0)
    imgs, labels = video.render(np.arange(frames))
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(out / "JPEGImages" / f"{i:05d}.jpg", quality=92)
    write_label_png(out / "Annotations" / "00000.png", labels[0])
    return labels


def mean_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean over objects and frames 1.. of the region IoU (the DAVIS J of model.eval.metrics)."""
    from model.eval.metrics import db_eval_iou

    objects = [int(v) for v in np.unique(gt[0]) if v]
    return float(np.mean([db_eval_iou(gt[1:] == oid, pred[1:] == oid) for oid in objects]))


def overlay_strip(frames_dir: Path, masks_dir: Path, dst: Path, count: int = 6) -> None:
    """A row of frames with their masks blended in: the quickest way to see whether it works."""
    names = sorted(masks_dir.glob("*.png"))
    pick = [names[int(i)] for i in np.linspace(0, len(names) - 1, count)]
    tiles = []
    for m in pick:
        img = np.asarray(Image.open(frames_dir / f"{m.stem}.jpg").convert("RGB")).astype(np.float32)
        lab = read_label_png(m)
        col = DAVIS_PALETTE[lab].astype(np.float32)
        blend = np.where(lab[..., None] > 0, 0.45 * img + 0.55 * col, img)
        tiles.append(blend.astype(np.uint8))
    Image.fromarray(np.concatenate(tiles, axis=1)).save(dst)


def run_lwl(argv: list[str]) -> int:
    """Run one of the model's `lwl` commands in this process (model/ does not import service/)."""
    from model.cli import register

    parser = argparse.ArgumentParser(prog="lwl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo-out")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--weights", default=None, help="default: the bundled model")
    args = ap.parse_args(argv)
    out = Path(args.out)
    weights = args.weights
    if weights is None and not BUNDLED_WEIGHTS.is_file():
        from model.testing import tiny_weights

        weights = str(tiny_weights(out / "seeded-random.safetensors"))
        print("NOTE: no bundled model in this checkout; using random weights from a fixed seed "
              "(masks will be meaningless)", file=sys.stderr)
    gt = make_video(out / "input", args.frames, args.seed)
    cmd = ["segment", str(out / "input" / "JPEGImages"), "--mask", str(out / "input" / "Annotations" / "00000.png"),
           "--out", str(out / "masks")]
    if weights:
        cmd += ["--weights", weights]
    print("lwl " + " ".join(cmd), file=sys.stderr)
    rc = run_lwl(cmd)
    if rc:
        return rc
    pred = np.stack([read_label_png(p) for p in sorted((out / "masks").glob("*.png"))])
    copy_first = np.repeat(gt[:1], len(gt), axis=0)
    overlay_strip(out / "input" / "JPEGImages", out / "masks", out / "overlay.png")
    print(f"mean IoU vs. generated ground truth: {mean_iou(pred, gt):.3f} "
          f"(copying the first mask: {mean_iou(copy_first, gt):.3f})")
    print(f"masks: {out / 'masks'}   overlay: {out / 'overlay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

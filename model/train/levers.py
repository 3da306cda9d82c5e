"""`make levers`: train each lever recipe (model/train/configs/levers/), score it on the held-out videos
from a first-frame mask and from its tight box, and write one table (runs/levers/levers.json and .md).

Why a runner: a lever is only worth shipping if it beats `control` (the same extra training without the
lever) on videos that were never trained on; this keeps the recipes, the scoring and the table in one
place so that every row is made the same way. Training resumes and finished scores are reused, so the
command can be stopped and rerun.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HELD_OUT = ("boat", "drift-turn", "rhino", "rollerblade", "swing")
RECIPES = Path(__file__).parent / "configs" / "levers"
FAST = "model/weights/fast.safetensors"  # the fast profile's weights, scored with its schedule (every 3rd frame)


@dataclass(frozen=True)
class Lever:
    """One row: weights made by a recipe (or shipped), scored at a crop size (None: the model's own)."""

    name: str
    recipe: str | None = None  # under configs/levers/; None: `weights` as they are
    weights: str = "model/weights/accurate.safetensors"
    crop: tuple[int, int] | None = None
    update_every: int | None = None  # the fast profile's schedule (3) for fast weights given by path
    note: str = ""


LEVERS = (
    Lever("shipped", note="model/weights/accurate.safetensors as shipped"),
    Lever("crop 288x512", crop=(288, 512), note="the shipped weights tracked with a larger crop"),
    Lever("crop 336x608", crop=(336, 608), note="the shipped weights tracked with a larger crop"),
    Lever("crop 336x608, box encoder refitted", "crop336.yaml",
          note="the shipped weights with 336x608 crops, the box encoder refitted at that size"),
    Lever("control", "control.yaml", note="200 more steps, same data and sampling"),
    Lever("multi-object", "multiobject.yaml", note="+ schoolgirls, + composites with distractors and occluders"),
    Lever("hard sampling", "hard_sampling.yaml", note="gaps 10-80 frames, colour and scale change"),
    Lever("Lite2 backbone", "lite2.yaml", note="the accurate recipe from the start on EfficientNet-Lite2 (about 2 h)"),
    Lever("fast: shipped", weights=FAST, update_every=3,
          note="model/weights/fast.safetensors as shipped (the fast profile)"),
    Lever("fast: refined every 4th frame", weights=FAST, update_every=4,
          note="the fast profile's target model refined less often (speed lever, no training)"),
    Lever("fast: refined every 6th frame", weights=FAST, update_every=6,
          note="the fast profile's target model refined less often (speed lever, no training)"),
    Lever("fast: crop 208x368", weights=FAST, crop=(208, 368), update_every=3,
          note="the fast profile tracked with a smaller crop (speed lever, no training)"),
    Lever("fast: crop 192x352", weights=FAST, crop=(192, 352), update_every=3,
          note="the fast profile tracked with a smaller crop (speed lever, no training)"),
    Lever("fast: control", "fast_control.yaml", update_every=3, note="the fast network, 200 more steps"),
    Lever("fast: multi-object", "fast_multiobject.yaml", update_every=3, note="multi-object on the fast network"),
    Lever("fast: hard sampling", "fast_hard_sampling.yaml", update_every=3, note="hard sampling on the fast network"),
)


def weights_of(lever: Lever) -> Path:
    if lever.recipe is None:
        return Path(lever.weights)
    from model.train.config import load_config

    return Path(load_config(RECIPES / lever.recipe).out_dir) / "model.safetensors"


def train(lever: Lever) -> None:
    """Run (or resume) the lever's recipe; a finished run returns at once."""
    if lever.recipe is not None:
        subprocess.run([sys.executable, "-m", "model.train.cli", "train", str(RECIPES / lever.recipe),
                        "--no-progress"], check=True)


def score(lever: Lever, data: str, out: Path) -> dict[str, dict[str, float]]:
    """Per-video J&F from a mask and from a box (lwl eval --init both), reused when already written."""
    folder = out / lever.name.replace(" ", "_")
    if not (folder / "box" / "results.json").exists():
        cmd = [sys.executable, "-m", "model.train.cli", "eval", "--data", data, "--out", str(folder), "--sequences",
               *HELD_OUT, "--weights", str(weights_of(lever)), "--init", "both"]
        if lever.crop:
            cmd += ["--crop", *map(str, lever.crop)]
        if lever.update_every:
            cmd += ["--update-every", str(lever.update_every)]
        subprocess.run(cmd, check=True)
    table = {}
    for init in ("mask", "box"):
        objs = json.loads((folder / init / "results.json").read_text())["objects"]
        per = {o["sequence"]: 100 * (o["j_mean"] + o["f_mean"]) / 2 for o in objs}
        table[init] = {**per, "mean": sum(per.values()) / len(per)}
    return table


def markdown(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Mean J&F from a mask and a box, then per video (mask / box)."""
    head = "| lever | J&F mask | J&F box | " + " | ".join(HELD_OUT) + " | what changes |"
    lines = [head, "|" + "---|" * (len(HELD_OUT) + 4)]
    notes = {lv.name: lv.note for lv in LEVERS}
    for name, t in rows.items():
        per = " | ".join(f"{t['mask'][s]:.1f} / {t['box'][s]:.1f}" for s in HELD_OUT)
        lines.append(f"| {name} | {t['mask']['mean']:.1f} | {t['box']['mean']:.1f} | {per} | {notes.get(name, '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.train.levers", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/davis2016-train", help="DAVIS-layout set with the held-out videos")
    p.add_argument("--out", default="runs/levers", help="where scores and the table go")
    p.add_argument("--only", nargs="*", default=None, help="only these levers (by name)")
    args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"error: {args.data} not found (the held-out videos are scored there)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "levers.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else {}
    for lever in LEVERS:
        if args.only and lever.name not in args.only:
            continue
        train(lever)
        rows[lever.name] = score(lever, args.data, out / "eval")
        results_path.write_text(json.dumps(rows, indent=1))
        (out / "levers.md").write_text(markdown(rows) + "\n")
        print(f"{lever.name}: J&F {rows[lever.name]['mask']['mean']:.1f} from a mask, "
              f"{rows[lever.name]['box']['mean']:.1f} from a box", flush=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

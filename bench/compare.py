"""Tracker speed of this checkout against another commit, side by side: `python -m bench.compare REV`.

On a shared machine the speed drifts 2-4x between runs, so a figure from an earlier `make bench` says
little about a change. This runs the same steady-state timing as `make bench` (bundled model, one
object, 854x480, the mean over the frames after the 32-sample memory is full: a profile that refines
every k-th frame pays for it on those frames) in a fresh process per round, alternating a git worktree
of REV and this checkout, and reports each round and the ratio of the medians over the rounds. Each
process uses `--threads` torch threads.

`--official` times the authors' ResNet-50 architecture instead (random weights, built by each tree's
own `bench.run.official_random`, so each side loads it as its `load_model` would) at `--crop`, and
`--whole` times the whole run from the first annotated frame to the last, as `lwl segment` spends it
on a short clip (the memory never fills), instead of the steady state.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.run import FULL_MEMORY, clip
from model.config import parse_size

ROOT = Path(__file__).resolve().parent.parent

# Runs inside either tree (cwd = that tree, so `model` is that tree's); uses only the public Model API,
# which both sides have. The clip is this checkout's `bench.run.clip`, so both time the same pixels.
CHILD = """
import json, sys, time
import numpy as np
import torch
from model.api import load_model
{clip_source}
{model_source}
torch.set_num_threads({threads})  # after loading: load_model sets the calling thread's count itself
frames, mask = clip({frames}, (480, 854))
tr = m.new_tracker({crop})
start = time.perf_counter()
tr.step(frames[0], mask=mask)
times = []
for f in frames[1:]:
    t = time.perf_counter()
    tr.step(f)
    times.append(time.perf_counter() - t)
whole = time.perf_counter() - start
print(json.dumps(whole if {whole} else float(np.mean(times[{full}:]))))
"""
BUNDLED = 'm = load_model(None, "cpu")'
OFFICIAL = 'from bench.run import official_random\nm = official_random(torch.device("cpu"))'


def child_code(frames: int, threads: int, official: bool = False, crop: tuple[int, int] | None = None,
               whole: bool = False) -> str:
    return CHILD.format(threads=threads, frames=frames, full=FULL_MEMORY, clip_source=inspect.getsource(clip),
                        model_source=OFFICIAL if official else BUNDLED,
                        crop=repr(crop) if crop else "m.default_crop_size", whole=whole)


def time_tree(tree: Path, code: str, threads: int) -> float:
    """Mean seconds per frame in the steady state, measured by a fresh process in `tree`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(tree)}
    p = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True,
                       timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"timing in {tree} failed:\n{p.stderr[-3000:]}")
    return float(json.loads(p.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="the commit to compare with (e.g. HEAD~3 or a hash)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (one process per tree each)")
    ap.add_argument("--frames", type=int, default=48, help=f"frames per run, more than {FULL_MEMORY + 1}")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads of each timing process")
    ap.add_argument("--official", action="store_true", help="the authors' ResNet-50 architecture, random weights")
    ap.add_argument("--crop", type=parse_size, help="crop HxW (default: the model's)")
    ap.add_argument("--whole", action="store_true", help="seconds of the whole run instead of the steady state")
    ap.add_argument("--out", help="write the rounds and ratios as JSON here")
    args = ap.parse_args(argv)
    least_frames = 2 if args.whole else FULL_MEMORY + 2
    if args.rounds < 1 or args.frames < least_frames or args.threads < 1:
        ap.error(f"--rounds and --threads must be at least 1 and --frames at least {least_frames}")
    code = child_code(args.frames, args.threads, args.official, args.crop, args.whole)
    unit = "s in all" if args.whole else "ms per frame"
    with tempfile.TemporaryDirectory(prefix="lwl-bench-compare-") as tmp:
        base = Path(tmp) / "base"
        add = subprocess.run(["git", "worktree", "add", "--detach", str(base), args.rev], cwd=ROOT,
                             capture_output=True, text=True)
        if add.returncode != 0:
            print(f"bench.compare: cannot check out {args.rev}: {add.stderr.strip()}", file=sys.stderr)
            return 2
        try:
            rounds = []
            for i in range(args.rounds):
                b, h = time_tree(base, code, args.threads), time_tree(ROOT, code, args.threads)
                rounds.append({"base_ms": round(1000 * b, 1), "this_ms": round(1000 * h, 1)})
                scale = 1 if args.whole else 1000
                print(f"round {i + 1}: {args.rev} {scale * b:.2f}, this checkout {scale * h:.2f} {unit}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    base_ms = [r["base_ms"] for r in rounds]
    this_ms = [r["this_ms"] for r in rounds]
    res = {"rev": args.rev, "threads": args.threads, "frames": args.frames, "rounds": rounds,
           "speedup_of_medians": round(float(np.median(base_ms) / np.median(this_ms)), 3),
           "speedup_of_minima": round(min(base_ms) / min(this_ms), 3)}
    print(f"this checkout is {res['speedup_of_medians']:.2f}x as fast as {args.rev} by the medians "
          f"({res['speedup_of_minima']:.2f}x by the minima)")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed levers of a bundled profile that need no training, side by side: `python -m bench.levers`.

Each configuration (how often the target model is refined, the crop size) is timed as `make bench`
times a profile: the mean steady-state frame on the generated 854x480 clip and that frame as a ratio to
MobileNetV3-Large's forward on the same frame. The configurations alternate in one process for
`--rounds` rounds, so the machine's drift falls on all of them alike; each one's held-out J&F is the
row of the same name in `make levers` (runs/levers/levers.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.run import clip, reference_net, time_tracker
from model.api import Model, load_model
from model.config import TrackerParams
from model.threads import set_cpu_threads

# name -> (crop, refine every k-th frame); None keeps the profile's own
LEVERS: dict[str, tuple[tuple[int, int] | None, int | None]] = {
    "as shipped": (None, None),
    "refined every 4th frame": (None, 4),
    "refined every 6th frame": (None, 6),
    "crop 208x368": ((208, 368), None),
    "crop 192x352": ((192, 352), None),
}


def lever_params(model: Model, every: int | None) -> TrackerParams | None:
    """The tracker parameters of a refinement schedule (None: the model's own), for `Model.new_tracker`."""
    return None if every is None else model.params.with_(train_skipping=every)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.levers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="fast", help="the bundled profile to vary")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds over all configurations")
    ap.add_argument("--frames", type=int, default=60, help="at least 34: the memory fills after 33 frames")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: as the library chooses)")
    ap.add_argument("--out", default="bench/levers.json")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.frames < 35:
        ap.error("--rounds must be at least 1 and --frames at least 35")
    set_cpu_threads(args.threads)
    model = load_model(None, "cpu", threads=None, profile=args.profile)
    frames, mask = clip(args.frames, (480, 854))
    ref = reference_net()
    runs: dict[str, list[dict]] = {name: [] for name in LEVERS}
    for r in range(args.rounds):
        for name, (crop, every) in LEVERS.items():
            res = time_tracker(model, crop or model.default_crop_size, frames, mask, ref, lever_params(model, every))
            runs[name].append(res)
            print(f"round {r + 1} {name:24s} {1000 * res['mean_frame_s']:6.1f} ms/frame  "
                  f"{res['frame_vs_reference']:.3f}x the reference", flush=True)
    base = float(np.median([x["frame_vs_reference"] for x in runs["as shipped"]]))
    rows = []
    for name, (crop, every) in LEVERS.items():
        ratio = float(np.median([x["frame_vs_reference"] for x in runs[name]]))
        rows.append({"lever": name, "crop": "x".join(map(str, crop or model.default_crop_size)),
                     "refine_every": every or model.params.train_skipping,
                     "mean_frame_ms": round(1000 * float(np.median([x["mean_frame_s"] for x in runs[name]])), 1),
                     "frame_vs_reference": round(ratio, 3), "speed_vs_shipped": round(base / ratio, 2)})
        print(f"{name:24s} {rows[-1]['mean_frame_ms']:6.1f} ms/frame  {ratio:.3f}x the reference  "
              f"{rows[-1]['speed_vs_shipped']:.2f}x as fast as shipped")
    Path(args.out).write_text(json.dumps({"profile": args.profile, "rounds": args.rounds, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

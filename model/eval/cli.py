"""`lwl eval`: J&F on a DAVIS-layout folder, or a YouTube-VOS submission zip (--youtubevos)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model.profiles import DEFAULT_PROFILE, PROFILES


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate a model: DAVIS J&F, or a YouTube-VOS export",
                              description="Run the tracker on a DAVIS-layout set and print per-sequence and "
                                          "mean J, F, J&F (DAVIS 2017 definitions).")
    p.add_argument("--data", required=True, help="DAVIS layout or YouTube-VOS valid folder")
    p.add_argument("--out", required=True, help="results folder (zip path with --youtubevos)")
    p.add_argument("--weights", default=None, help="weights file (default: the bundled model of --profile)")
    p.add_argument("--profile", choices=list(PROFILES), default=None,
                   help=f"bundled model (default: {DEFAULT_PROFILE}); not with --weights")
    p.add_argument("--exact", action="store_true", help="exact mode (the reference's operators in its order)")
    p.add_argument("--sequences", nargs="*", default=None, help="only these sequences")
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each sequence")
    p.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="tracker crop size")
    p.add_argument("--update-every", type=int, default=None, metavar="K",
                   help="refine the target model on every K-th frame (the fast profile's schedule is 3); "
                        "default: the model's own")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--init", choices=["mask", "box", "both"], default="mask",
                   help="start each object from its first annotated mask, or from that mask's tight box "
                        "(the box a user would drag); both: one run of each (results in OUT/mask and "
                        "OUT/box) and a per-sequence table of the two")
    p.add_argument("--baseline", choices=["copy-first"], default=None,
                   help="score a baseline instead of a model: the first annotation on every frame (the first "
                        "mask, or with --init box the filled boxes)")
    p.add_argument("--youtubevos", action="store_true", help="write a YouTube-VOS submission zip to --out")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from model.api import load_model
    from model.eval.runner import CopyFirstModel

    crop = tuple(args.crop) if args.crop else None
    model = CopyFirstModel() if args.baseline == "copy-first" else \
        load_model(args.weights, args.device, profile=args.profile, exact=args.exact or None)
    if args.update_every is not None:
        if args.update_every < 1 or args.baseline:
            print("lwl eval: --update-every takes a frame count >= 1, and a model (not --baseline)", file=sys.stderr)
            return 2
        model.params = model.params.with_(train_skipping=args.update_every)
    if args.youtubevos:
        from model.eval.ytvos import export_youtubevos

        if args.init == "both":
            print("lwl eval: --youtubevos writes one submission: --init mask or --init box", file=sys.stderr)
            return 2
        path = export_youtubevos(model, args.data, args.out, args.sequences, log=print, crop_size=crop,
                                 start=args.init)
        print(f"wrote {path}")
        return 0
    if args.init != "both":
        _score(model, args, args.init, Path(args.out), crop)
        return 0
    by_start = {start: _score(model, args, start, Path(args.out) / start, crop) for start in ("mask", "box")}
    print("\n" + side_by_side(by_start))
    return 0


def _score(model: Any, args: argparse.Namespace, start: str, out: Path, crop: tuple | None) -> tuple:
    """One evaluation: results files in `out`, the table and the summary line printed; (scores, summary)."""
    from model.eval.runner import evaluate_davis, format_table, write_results

    # the copy-first baseline from boxes is the box-rectangle baseline
    name = f"{model.name} (from {'masks' if start == 'mask' else 'boxes'})"
    scores, summary, info = evaluate_davis(model, args.data, out, args.sequences, args.max_frames,
                                           log=lambda s: print(s, flush=True), crop_size=crop, start=start)
    info.update({"model": name, "data": str(args.data)})
    write_results(out, scores, summary, info)
    print(format_table(scores, summary))
    fps = info["frames"] / max(info["seconds"], 1e-9)
    print(f"\n{name}: J&F {summary.jf_mean:.3f}  J {summary.j_mean:.3f}  F {summary.f_mean:.3f}  "
          f"({info['frames']} frames, {fps:.2f} fps)  results in {out / 'results.json'}")
    print(json.dumps({"start": start, "J&F": summary.jf_mean, "J": summary.j_mean, "F": summary.f_mean}),
          file=sys.stderr)
    return scores, summary


def side_by_side(by_start: dict[str, tuple]) -> str:
    """Per-sequence J&F (mean over its objects) of each start, and the global means, one column each."""
    starts = list(by_start)
    per_seq: dict[str, dict[str, list[float]]] = {}
    for start, (scores, _) in by_start.items():
        for s in scores:
            per_seq.setdefault(s.sequence, {}).setdefault(start, []).append(s.jf)
    lines = [f"{'J&F by start':28s} " + " ".join(f"{'from ' + s:>11s}" for s in starts)]
    for seq, vals in per_seq.items():
        cells = [f"{sum(vals[s]) / len(vals[s]):11.3f}" if vals.get(s) else f"{'-':>11s}" for s in starts]
        lines.append(f"{seq:28s} " + " ".join(cells))
    lines.append(f"{'GLOBAL':28s} " + " ".join(f"{by_start[s][1].jf_mean:11.3f}" for s in starts))
    return "\n".join(lines)

"""`lwl train CONFIG`: run (or resume) a training recipe."""

from __future__ import annotations

import argparse
import sys

import yaml


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a network from a recipe (model/train/configs/*.yaml)",
                              description="Train or resume: checkpoints, metrics.jsonl and training.png go "
                                          "to the recipe's out_dir; rerunning the command resumes.")
    p.add_argument("config", help="recipe YAML, e.g. model/train/configs/compact_lite0.yaml")
    p.add_argument("--out", default=None, help="override the recipe's out_dir")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    p.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the recipe's, auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--init-weights", default=None, help="override the recipe's init_weights")
    p.add_argument("--ablation", choices=["raw_labels"], default=None,
                   help="train the paper's ablation baseline (labels = raw mask, no weight predictor)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs only)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from model.train.config import load_config
    from model.train.trainer import Trainer

    try:
        cfg = load_config(args.config)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # a recipe the user wrote or named wrongly
        print(f"lwl train: {exc}", file=sys.stderr)
        return 2
    if args.out:
        cfg.out_dir = args.out
    if args.device:
        cfg.device = args.device
    if args.threads is not None:
        cfg.threads = args.threads
    if args.ablation:
        cfg.net = {**cfg.net, "ablation": args.ablation}
    if args.init_weights:
        cfg.init_weights = args.init_weights
    try:
        trainer = Trainer(cfg, fresh=args.fresh, max_minutes=args.max_minutes, max_steps=args.max_steps,
                          progress=not args.no_progress, log=lambda s: print(s, flush=True))
    except (OSError, ValueError) as exc:  # missing data, init weights or pretrained-backbone package
        print(f"lwl train: {exc}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    except KeyboardInterrupt:
        print(f"aborted by a second signal; resume from the last checkpoint in {cfg.out_dir}", flush=True)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m model.train.cli CONFIG` works before the `lwl` entry point is wired."""
    ap = argparse.ArgumentParser(prog="lwl")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    from model.eval.cli import add_parser as add_eval

    add_eval(sub)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

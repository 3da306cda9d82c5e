"""Model commands of the `lwl` console script: segment, convert (and train, eval from their packages)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from model.errors import InputError


def user_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A user's mistake becomes one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except InputError as exc:
            print(f"lwl {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"lwl {args.command}: interrupted", file=sys.stderr)
            return 130

    return wrapper


def parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--box {text!r} must be x,y,w,h (four numbers)") from None
    return x, y, w, h


class FrameSource:
    """Frames of a folder or a video file, with the names used for the output PNGs."""

    def __init__(self, source: str | Path) -> None:
        from model.media import list_frames

        self.path = Path(source)
        if not self.path.exists():
            raise InputError(f"source not found: {self.path}")
        self.files = list_frames(self.path) if self.path.is_dir() else None

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        from model.media import iter_video_frames, read_image

        if self.files is not None:
            for f in self.files:
                yield f.stem, read_image(f)
        else:
            for i, frame in enumerate(iter_video_frames(self.path)):
                yield f"{i:05d}", frame

    def __len__(self) -> int:
        if self.files is not None:
            return len(self.files)
        from model.media import video_info

        return video_info(self.path)[0]


def _annotations(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict[int, tuple]]:
    """Init masks keyed by frame name ('' = the first frame) and boxes for the first frame."""
    from model.media import read_label_png

    given = [bool(args.annotations), bool(args.mask), bool(args.box)]
    if sum(given) != 1:
        raise InputError("give exactly one of --annotations DIR, --mask PNG or --box x,y,w,h")
    if args.mask:
        return {"": read_label_png(args.mask)}, {}
    if args.box:
        return {}, {k + 1: parse_box(b) for k, b in enumerate(args.box)}
    folder = Path(args.annotations)
    if not folder.is_dir():
        raise InputError(f"annotation folder not found: {folder}")
    anns = {p.stem: read_label_png(p) for p in sorted(folder.glob("*.png"))}
    if not anns:
        raise InputError(f"no .png annotations in {folder}")
    return anns, {}


def _segment_frames(tracker, frames: list[np.ndarray], names: list[str], anns: dict[str, np.ndarray],
                    boxes: dict[int, tuple], corrections: bool, on_frame: Callable[[str, np.ndarray], None],
                    bar) -> None:
    """Forward pass: objects start where their id first appears; later known ids are corrections or ignored."""
    for i, (name, frame) in enumerate(zip(names, frames, strict=True)):
        ann = anns.get(name)
        if i == 0 and "" in anns:
            ann = anns[""]
        mask, b = None, (boxes if i == 0 else None)
        if ann is not None:
            new_ids = [int(v) for v in np.unique(ann) if v not in (0, 255) and int(v) not in tracker.object_ids]
            if new_ids or not tracker.object_ids:
                mask = ann if not tracker.object_ids else np.where(np.isin(ann, new_ids), ann, 0).astype(np.uint8)
        if not tracker.object_ids and mask is None and not b:
            on_frame(name, np.zeros(frame.shape[:2], np.uint8))
            bar.update(1)
            continue
        res = tracker.step(frame, mask=mask, boxes=b)
        if ann is not None and corrections and i > 0:
            known = [v for v in np.unique(ann) if v not in (0, 255) and v in tracker.object_ids and (mask is None or
                                                                                               v not in mask)]
            if known:
                res = tracker.correct(np.where(np.isin(ann, known), ann, 0).astype(np.uint8))
        on_frame(name, res.labels)
        bar.update(1)


@user_errors
def cmd_segment(args: argparse.Namespace) -> int:
    """`lwl segment SOURCE --out DIR`: offline segmentation of a folder of frames or a video."""
    from tqdm import tqdm

    from model.api import load_model, parse_size
    from model.media import write_label_png

    anns, boxes = _annotations(args)
    src = FrameSource(args.source)
    model = load_model(args.weights, args.device, args.params)
    crop = parse_size(args.size) if args.size else None
    out = Path(args.out)
    frames, names = [], []
    for name, frame in src:
        frames.append(frame)
        names.append(name)
    if not frames:
        raise InputError(f"no frames in {args.source}")
    first = 0
    if "" not in anns and not boxes:
        hits = [i for i, n in enumerate(names) if n in anns and (anns[n][(anns[n] != 0) & (anns[n] != 255)]).any()]
        if not hits:
            raise InputError("no annotation file matches a frame name (or all annotations are empty)")
        first = hits[0]
    out.mkdir(parents=True, exist_ok=True)

    def save(name: str, labels: np.ndarray) -> None:
        write_label_png(out / f"{name}.png", labels)

    with tqdm(total=len(frames) + first, desc="segment", unit="frame", disable=args.quiet) as bar:
        tr = model.new_tracker(crop)
        _segment_frames(tr, frames[first:], names[first:], anns, boxes, args.corrections, save, bar)
        if first > 0:
            back = model.new_tracker(crop)
            rev = list(range(first, -1, -1))
            start = {names[first]: anns[names[first]]}
            results: dict[str, np.ndarray] = {}
            _segment_frames(back, [frames[i] for i in rev], [names[i] for i in rev], start, {}, False,
                            results.__setitem__, bar)
            for i in range(first):
                save(names[i], results[names[i]])
    if not args.quiet:
        print(f"wrote {len(frames)} masks to {out}", file=sys.stderr)
    return 0


@user_errors
def cmd_convert(args: argparse.Namespace) -> int:
    """`lwl convert IN.pth OUT`: official checkpoint -> safetensors with its JSON config."""
    from model.checkpoint import convert, read_safetensors

    dst = convert(args.src, args.dst)
    w = read_safetensors(dst)
    print(f"wrote {dst} ({w.config.backbone}, box encoder: {w.config.has_box_encoder}, "
          f"tracker preset: {w.tracker_preset})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model's commands to the `lwl` parser."""
    p = sub.add_parser("segment", help="segment a video or frame folder offline",
                       description="Segment the objects given on the first frame(s) in every frame; writes one "
                                   "DAVIS-palette indexed PNG per frame.")
    p.add_argument("source", help="folder of frames (.jpg/.png) or a video file")
    p.add_argument("--out", required=True, help="output folder for the PNG masks")
    p.add_argument("--annotations", help="folder of DAVIS-style indexed PNGs named like the frames")
    p.add_argument("--mask", help="indexed PNG for the first frame")
    p.add_argument("--box", action="append", help="x,y,w,h on the first frame; repeat for objects 1, 2, ...")
    p.add_argument("--corrections", action="store_true",
                   help="annotations of already-tracked ids on later frames are used as user corrections")
    p.add_argument("--weights", help="official .pth or lwl-vos .safetensors (default: the bundled model)")
    p.add_argument("--size", help="crop HxW fed to the network (default: the model's, 480x832 for official weights)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--params", choices=["lwl_ytvos", "lwl_boxinit"],
                   help="tracker parameter set (default: lwl_boxinit for box-init checkpoints, else lwl_ytvos)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("convert", help="convert an official pytracking .pth to lwl-vos safetensors")
    p.add_argument("src", help="lwl_stage2.pth, lwl_boxinit.pth or an lwl-vos file")
    p.add_argument("dst", help="output path (.safetensors is appended when missing)")
    p.set_defaults(func=cmd_convert)

    from model.eval.cli import add_parser as add_eval
    from model.train.cli import add_parser as add_train

    add_train(sub)
    add_eval(sub)

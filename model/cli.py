"""Model commands of the `lwl` console script: segment, convert (and train, eval from their packages)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from model.errors import InputError
from model.profiles import DEFAULT_PROFILE, PROFILES
from model.video import Annotation


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


def _annotations(args: argparse.Namespace) -> dict[int | str, Annotation]:
    """Objects to start from: --mask/--box on the first frame, or --annotations keyed by frame name."""
    from model.media import read_label_png

    given = [bool(args.annotations), bool(args.mask), bool(args.box)]
    if sum(given) != 1:
        raise InputError("give exactly one of --annotations DIR, --mask PNG or --box x,y,w,h")
    if args.mask:
        return {0: Annotation(mask=read_label_png(args.mask))}
    if args.box:
        return {0: Annotation(boxes={k + 1: parse_box(b) for k, b in enumerate(args.box)})}
    folder = Path(args.annotations)
    if not folder.is_dir():
        raise InputError(f"annotation folder not found: {folder}")
    anns: dict[int | str, Annotation] = {p.stem: Annotation(mask=read_label_png(p))
                                         for p in sorted(folder.glob("*.png"))}
    if not anns:
        raise InputError(f"no .png annotations in {folder}")
    return anns


def _check_names(anns: dict[int | str, Annotation], names: list[str] | None) -> None:
    """Fail before decoding anything when no annotation can match a frame."""
    keys = {k for k, a in anns.items() if a.ids()}
    if not keys:
        raise InputError("the annotations have no objects (every mask is empty)")
    if names is not None:
        ok = keys & (set(names) | set(range(len(names))))
    else:  # a video's frames are named 00000, 00001, ...
        ok = {k for k in keys if isinstance(k, int) or k.isdigit()}
    if not ok:
        raise InputError("no annotation file matches a frame name (frames: "
                         f"{', '.join((names or ['00000', '00001'])[:2])}, ...)")


@user_errors
def cmd_segment(args: argparse.Namespace) -> int:
    """`lwl segment SOURCE --out DIR`: offline segmentation of a folder of frames or a video."""
    from tqdm import tqdm

    from model.api import load_model
    from model.config import parse_size
    from model.media import FrameSource
    from model.outputs import LabelFolder, Outputs, OutputWriter, OverlayVideo
    from model.video import segment_video

    anns = _annotations(args)
    src = FrameSource(args.source)
    _check_names(anns, src.names)
    crop = parse_size(args.size) if args.size else None
    model = load_model(args.weights, args.device, args.params, exact=args.exact or None, threads=args.threads,
                       profile=args.profile)
    folder = LabelFolder(args.out)
    writers: list[OutputWriter] = [folder]
    if args.overlay:
        try:
            writers.append(OverlayVideo(args.overlay, fps=src.fps))
        except BaseException:
            folder.discard()
            raise
    with tqdm(total=len(src) or None, desc="segment", unit="frame", disable=args.quiet) as bar:
        Outputs(writers).write_all(segment_video(model, src, anns, crop_size=crop, corrections=args.corrections,
                                                 on_progress=lambda n: bar.update(n - bar.n)))
    if not args.quiet:
        extra = f" and the overlay {args.overlay}" if args.overlay else ""
        print(f"wrote {folder.count} masks to {folder.out}{extra}", file=sys.stderr)
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
    p.add_argument("--weights", help="official .pth or lwl-vos .safetensors (default: the bundled model of "
                                     "--profile)")
    p.add_argument("--profile", choices=list(PROFILES),
                   help=f"bundled model: {'; '.join(f'{k}: {v.summary}' for k, v in PROFILES.items())} "
                        f"(default: {DEFAULT_PROFILE}; not with --weights)")
    p.add_argument("--size", help="crop HxW fed to the network (default: the model's, 480x832 for official weights)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--params", choices=["lwl_ytvos", "lwl_boxinit"],
                   help="tracker parameter set (default: lwl_boxinit for box-init checkpoints, else lwl_ytvos)")
    p.add_argument("--overlay", metavar="OUT.mp4",
                   help="also write a video of the frames with the masks drawn on (outlines, object numbers; "
                        "the source's frame rate, 25 fps for a folder)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: the cores this process may use)")
    p.add_argument("--exact", action="store_true",
                   help="exact mode: the reference's operators in its order, masks equal to the authors' tracker "
                        "bit for bit on the same machine (slower; also LWL_EXACT=1)")
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

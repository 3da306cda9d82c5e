"""lwl-vos as a Python library: a whole video, then frame by frame with a correction and a saved state.

Run: .venv/bin/python docs/examples/library.py VIDEO_OR_FRAME_FOLDER FIRST_MASK.png [OUT_DIR]
(tests/model/test_examples.py runs it on a generated clip.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from model.api import load_model
from model.media import FrameSource, read_label_png, write_label_png
from model.threads import set_cpu_threads


def main(source: str, mask_path: str, out: str = "library-out") -> None:
    set_cpu_threads(0)  # the cores this process may use
    model = load_model()  # the bundled model; load_model("lwl_stage2.pth") for the authors' weights
    first = read_label_png(mask_path)  # indexed PNG: pixel value = object id

    # 1. A whole video: frames are decoded as they are needed, masks come out in frame order.
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in model.segment_video(source, mask=first):
        write_label_png(out_dir / f"{f.name}.png", f.labels)
        print(f.index, {oid: round(o.score, 2) for oid, o in f.objects.items()})

    # 2. Frame by frame, as a live application would.
    frames = iter(FrameSource(source))
    tracker = model.new_tracker()
    _, frame = next(frames)
    res = tracker.step(frame, mask=first)  # objects start on this frame
    _, frame = next(frames)
    res = tracker.step(frame)
    fixed = np.where(res.labels == 1, 1, 0).astype(np.uint8)  # say object 1's mask was corrected by hand
    res = tracker.correct(fixed)  # it becomes a permanent sample of object 1
    blob = tracker.export_state()  # bytes: continue later, elsewhere
    again = model.restore_tracker(blob)
    _, frame = next(frames)
    a, b = tracker.step(frame), again.step(frame)
    print("restored tracker gives the same masks:", bool(np.array_equal(a.labels, b.labels)))


if __name__ == "__main__":
    main(*sys.argv[1:])

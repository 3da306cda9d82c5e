"""Evaluation and wire-format speed: boundary F (J&F's F) and COCO RLE, new code against a plain version.

The plain versions are written here the obvious way: the boundary map from shifted copies and
skimage's binary_dilation with disk(radius) (the DAVIS 2017 toolkit's definition, without OpenCV),
and RLE decoding one run at a time. Both sides run on the same masks in one process; the numbers
are checked equal before any time is printed. When OpenCV is importable, the toolkit's own
cv2.dilate variant is timed too. Run: `OMP_NUM_THREADS=1 python -m bench.metrics`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench.reference import ref_decode, ref_f_measure, ref_string_to_counts
from model.eval.metrics import f_measure
from model.rle import _string_to_counts, rle_decode, rle_encode

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train" / "Annotations"


def cv2_dilate(b: np.ndarray, radius: int) -> np.ndarray:
    """The toolkit's own call: cv2.dilate with the uint8 disk (the default border adds nothing)."""
    import cv2
    from skimage.morphology import disk

    return cv2.dilate(b.astype(np.uint8), disk(radius).astype(np.uint8)) > 0


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of `repeat` calls in seconds (the least disturbed by the other process on the cores)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def blob_pair(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth object and a prediction of it shifted by about the tolerance, with a ragged edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    r = 0.25 * min(h, w) * (1 + 0.15 * np.sin(5 * np.arctan2(yy - h / 2, xx - w / 2)))
    gt = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r**2
    shift = math.ceil(0.008 * math.hypot(h, w))
    wobble = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6) > 0.02
    ragged = wobble & ndimage.binary_dilation(gt, iterations=2 * shift) & ~gt
    pred = np.roll(gt, (shift, -shift), axis=(0, 1)) | ragged
    return pred, gt


def davis_pair() -> tuple[np.ndarray, np.ndarray] | None:
    """A real DAVIS 2016 train mask (427x240) and the mask five frames later, when the data is here."""
    if not DAVIS.is_dir():
        return None
    from PIL import Image

    pngs = sorted((DAVIS / "bear").glob("*.png"))
    return np.asarray(Image.open(pngs[15])) > 0, np.asarray(Image.open(pngs[10])) > 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    try:
        import cv2

        cv2.setNumThreads(1)  # one thread, like every other column
        has_cv2 = True
    except ImportError:
        has_cv2 = False
    cases: list[tuple[str, np.ndarray, np.ndarray]] = []
    pair = davis_pair()
    if pair is not None:
        cases.append(("DAVIS bear 427x240", *pair))
    cases += [("blob 480x854", *blob_pair(480, 854, 0)), ("blob 1080x1920", *blob_pair(1080, 1920, 1))]
    noise = np.random.default_rng(2).random((480, 854))
    cases.append(("noisy 480x854", noise < 0.5, noise < 0.45))

    head = f"{'boundary F, one frame':24s} {'skimage':>10s} " + (f"{'cv2':>10s} " if has_cv2 else "")
    print(head + f"{'new':>10s} {'vs skimage':>11s}" + (f" {'vs cv2':>8s}" if has_cv2 else ""))
    for name, pred, gt in cases:
        new_f = f_measure(pred, gt)
        assert new_f == ref_f_measure(pred, gt), name
        t_sk = best_of(lambda p=pred, g=gt: ref_f_measure(p, g), args.repeat)
        t_new = best_of(lambda p=pred, g=gt: f_measure(p, g), args.repeat)
        row = f"{name:24s} {t_sk * 1e3:8.2f}ms "
        if has_cv2:
            assert new_f == ref_f_measure(pred, gt, dilate=cv2_dilate), name
            t_cv = best_of(lambda p=pred, g=gt: ref_f_measure(p, g, dilate=cv2_dilate), args.repeat)
            row += f"{t_cv * 1e3:8.2f}ms "
        row += f"{t_new * 1e3:8.2f}ms {t_sk / t_new:10.1f}x"
        if has_cv2:
            row += f" {t_cv / t_new:7.1f}x"
        print(row + f"   F = {new_f:.6f}")

    print()
    print(f"{'RLE, noisy 480x854':24s} {'loops':>10s} {'new':>10s} {'speed-up':>11s}")
    mask = (np.random.default_rng(3).random((480, 854)) < 0.5).astype(np.uint8)
    rle = rle_encode(mask)
    h, w = rle["size"]
    assert np.array_equal(rle_decode(rle), mask)
    assert np.array_equal(ref_decode(h, w, ref_string_to_counts(rle["counts"])), mask)
    t_old = best_of(lambda: ref_decode(h, w, ref_string_to_counts(rle["counts"])), max(1, args.repeat // 2))
    t_new = best_of(lambda: rle_decode(rle), args.repeat)
    print(f"{'decode (text + paint)':24s} {t_old * 1e3:8.1f}ms {t_new * 1e3:8.2f}ms {t_old / t_new:10.0f}x")
    t_old = best_of(lambda: ref_decode(h, w, _string_to_counts(rle["counts"]).tolist()), max(1, args.repeat // 2))
    print(f"{'  paint runs only':24s} {t_old * 1e3:8.1f}ms {'':>10s} {'':>11s}")
    print(f"   ({len(rle['counts'])} characters, {int(mask.size)} pixels)")


if __name__ == "__main__":
    main()

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

from model.eval.metrics import f_measure
from model.rle import rle_decode, rle_encode

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train" / "Annotations"


def plain_bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map: differs from the east, south or south-east neighbour; last row/column patched."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def plain_f(seg: np.ndarray, gt: np.ndarray, dilate: Callable[[np.ndarray, int], np.ndarray]) -> float:
    """Boundary F at the default 0.008 * diagonal tolerance with a given disk dilation."""
    radius = math.ceil(0.008 * float(np.linalg.norm(seg.shape)))
    fg_b, gt_b = plain_bmap(seg), plain_bmap(gt)
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 or n_gt == 0:
        return 1.0 if n_fg == n_gt else 0.0
    precision = float((fg_b & dilate(gt_b, radius)).sum()) / n_fg
    recall = float((gt_b & dilate(fg_b, radius)).sum()) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def skimage_dilate(b: np.ndarray, radius: int) -> np.ndarray:
    """skimage's disk as the footprint of a binary dilation (scipy's, which skimage's wraps)."""
    from skimage.morphology import disk

    return ndimage.binary_dilation(b, structure=disk(radius).astype(bool))


def cv2_dilate(b: np.ndarray, radius: int) -> np.ndarray:
    """The toolkit's own call: cv2.dilate with the uint8 disk (the default border adds nothing)."""
    import cv2
    from skimage.morphology import disk

    return cv2.dilate(b.astype(np.uint8), disk(radius).astype(np.uint8)) > 0


def plain_rle_decode(rle: dict) -> np.ndarray:
    """Runs painted one slice at a time (counts parsed with the same vectorised parser)."""
    from model.rle import _string_to_counts

    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=np.uint8)
    pos, val = 0, 0
    for r in _string_to_counts(rle["counts"]).tolist():
        flat[pos : pos + r] = val
        pos += r
        val ^= 1
    return flat.reshape((h, w), order="F")


def plain_string_to_counts(s: str) -> list[int]:
    """COCO counts text parsed one character at a time."""
    runs: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def plain_rle_decode_full(rle: dict) -> np.ndarray:
    """The whole decode as per-character and per-run Python loops."""
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=np.uint8)
    pos, val = 0, 0
    for r in plain_string_to_counts(rle["counts"]):
        flat[pos : pos + r] = val
        pos += r
        val ^= 1
    return flat.reshape((h, w), order="F")


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
        assert new_f == plain_f(pred, gt, skimage_dilate), name
        t_sk = best_of(lambda p=pred, g=gt: plain_f(p, g, skimage_dilate), args.repeat)
        t_new = best_of(lambda p=pred, g=gt: f_measure(p, g), args.repeat)
        row = f"{name:24s} {t_sk * 1e3:8.2f}ms "
        if has_cv2:
            assert new_f == plain_f(pred, gt, cv2_dilate), name
            t_cv = best_of(lambda p=pred, g=gt: plain_f(p, g, cv2_dilate), args.repeat)
            row += f"{t_cv * 1e3:8.2f}ms "
        row += f"{t_new * 1e3:8.2f}ms {t_sk / t_new:10.1f}x"
        if has_cv2:
            row += f" {t_cv / t_new:7.1f}x"
        print(row + f"   F = {new_f:.6f}")

    print()
    print(f"{'RLE, noisy 480x854':24s} {'loops':>10s} {'new':>10s} {'speed-up':>11s}")
    mask = (np.random.default_rng(3).random((480, 854)) < 0.5).astype(np.uint8)
    rle = rle_encode(mask)
    assert np.array_equal(rle_decode(rle), mask) and np.array_equal(plain_rle_decode_full(rle), mask)
    t_old = best_of(lambda: plain_rle_decode_full(rle), max(1, args.repeat // 2))
    t_new = best_of(lambda: rle_decode(rle), args.repeat)
    print(f"{'decode (text + paint)':24s} {t_old * 1e3:8.1f}ms {t_new * 1e3:8.2f}ms {t_old / t_new:10.0f}x")
    t_old = best_of(lambda: plain_rle_decode(rle), max(1, args.repeat // 2))
    print(f"{'  paint runs only':24s} {t_old * 1e3:8.1f}ms {'':>10s} {'':>11s}")
    print(f"   ({len(rle['counts'])} characters, {int(mask.size)} pixels)")


if __name__ == "__main__":
    main()

"""Boundary F: the fast f_measure gives exactly the numbers of the plain toolkit-style computation.

The reference below is the straightforward definition (shifted-copy boundary map, scipy binary
dilation with skimage's disk), kept here only to check the fast code against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bench.reference import ref_dilate, ref_f_measure, ref_seg2bmap
from model.eval.metrics import db_eval_boundary, dilate_disk, disk_half_widths, f_measure, seg2bmap

skimage_morphology = pytest.importorskip("skimage.morphology")

DAVIS = Path(__file__).resolve().parents[3] / "shared" / "data" / "davis2016-train"


def blobs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random shapes: thresholded blurred noise, a few objects with curved outlines."""
    noise = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma=max(1.0, min(h, w) / 12))
    return noise > rng.uniform(-0.5, 1.0) * noise.std()


def thin_lines(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1-px lines in random directions: boundaries on both sides and many diagonal steps."""
    m = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 6))):
        y0, y1 = rng.integers(0, h, 2)
        x0, x1 = rng.integers(0, w, 2)
        n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
        m[np.linspace(y0, y1, n).round().astype(int), np.linspace(x0, x1, n).round().astype(int)] = True
    return m


def speckle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sparse or dense salt noise: many tiny components, boundaries everywhere."""
    return rng.random((h, w)) < rng.choice([0.002, 0.05, 0.5])


def rectangle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An axis-aligned box, sometimes touching the frame edge."""
    m = np.zeros((h, w), bool)
    y0, y1 = sorted(rng.integers(0, h + 1, 2))
    x0, x1 = sorted(rng.integers(0, w + 1, 2))
    m[y0:y1, x0:x1] = True
    return m


MAKERS = [blobs, thin_lines, speckle, rectangle]
SIZES = [(1, 1), (1, 17), (23, 1), (2, 2), (3, 40), (40, 3), (17, 31), (64, 64), (120, 213), (240, 427)]


def assert_same(seg: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008) -> None:
    new = f_measure(seg, gt, void, bound_th)
    old = ref_f_measure(seg, gt, void, bound_th)
    assert new == old, (seg.shape, bound_th, new, old)  # exact: same counts, same arithmetic


def test_disk_is_rows_of_half_widths() -> None:
    # every radius from a 1x1 frame up to 8K (ceil(0.008 * 8811) = 71), integer and float (the toolkit
    # passes np.ceil's float); the fast dilation relies on this exact shape
    for r in range(0, 80):
        widths = disk_half_widths(r)
        mine = np.zeros((2 * r + 1, 2 * r + 1), bool)
        for dy in range(-r, r + 1):
            k = widths[abs(dy)]
            mine[r + dy, r - k : r + k + 1] = True
        assert np.array_equal(skimage_morphology.disk(r).astype(bool), mine), r
        assert np.array_equal(skimage_morphology.disk(float(r)).astype(bool), mine), r


def test_dilation_matches_scipy_with_disk() -> None:
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (1, 9), (9, 1), (5, 7), (30, 50), (61, 47)]:
        for r in [0, 1, 2, 3, 4, 8, 15, 40]:
            b = rng.random((h, w)) < rng.choice([0.01, 0.1, 0.6])
            assert np.array_equal(dilate_disk(b, r), ref_dilate(b, r)), (h, w, r)


def test_seg2bmap_matches_reference() -> None:
    rng = np.random.default_rng(2)
    for h, w in SIZES:
        for make in MAKERS:
            m = make(rng, h, w)
            assert np.array_equal(seg2bmap(m), ref_seg2bmap(m)), (h, w, make.__name__)
        for m in (np.zeros((h, w), bool), np.ones((h, w), bool)):
            assert np.array_equal(seg2bmap(m), ref_seg2bmap(m))


def test_f_identical_on_random_masks() -> None:
    rng = np.random.default_rng(3)
    n = 0
    for h, w in SIZES:
        for make_a in MAKERS:
            for make_b in MAKERS:
                a = make_a(rng, h, w)
                b = make_b(rng, h, w)
                assert_same(a, b)
                # a prediction close to the truth: the counts near the tolerance radius matter most
                near = np.roll(a, tuple(rng.integers(-6, 7, 2)), axis=(0, 1))
                if rng.random() < 0.3:
                    near ^= speckle(rng, h, w)
                assert_same(near, a)
                n += 2
    assert n == len(SIZES) * len(MAKERS) ** 2 * 2


def test_f_identical_empty_full_and_void() -> None:
    rng = np.random.default_rng(4)
    for h, w in SIZES:
        z, o = np.zeros((h, w), bool), np.ones((h, w), bool)
        m = blobs(rng, h, w)
        for a, b in [(z, z), (o, o), (z, o), (o, z), (z, m), (m, z), (o, m), (m, o), (m, m)]:
            assert_same(a, b)
        void = rectangle(rng, h, w)
        assert_same(m, blobs(rng, h, w), void)
        assert_same(m, thin_lines(rng, h, w), ~void)


def test_f_identical_for_other_thresholds() -> None:
    # bound_th >= 1 is a radius in pixels; tiny fractions give radius 1; radii larger than the frame
    # only on small frames (the reference's scipy dilation costs one pass per disk element)
    rng = np.random.default_rng(5)
    for h, w in [(1, 30), (20, 1), (40, 60), (120, 213)]:
        for th in [0.001, 0.008, 0.05, 1, 2, 5] + ([0.3, 100] if h * w < 5000 else []):
            assert_same(blobs(rng, h, w), speckle(rng, h, w), bound_th=th)
            assert_same(thin_lines(rng, h, w), rectangle(rng, h, w), bound_th=th)


def test_f_identical_on_stacks_and_480p() -> None:
    rng = np.random.default_rng(6)
    gt = np.stack([blobs(rng, 480, 854) for _ in range(2)])
    pr = np.stack([np.roll(gt[0], 5, axis=1), thin_lines(rng, 480, 854)])
    void = np.zeros_like(gt)
    void[:, :40] = True
    new = db_eval_boundary(gt, pr, void)
    old = np.array([ref_f_measure(pr[t], gt[t], void[t]) for t in range(2)])
    assert np.array_equal(new, old)


@pytest.mark.skipif(not (DAVIS / "index.json").is_file(), reason=f"DAVIS 2016 train masks not found at {DAVIS}")
def test_f_identical_on_davis_masks() -> None:
    from PIL import Image

    rng = np.random.default_rng(7)
    seqs = sorted(p.name for p in (DAVIS / "Annotations").iterdir() if p.is_dir())
    assert json.loads((DAVIS / "index.json").read_text())  # the folder is the documented one
    picked = [seqs[i] for i in rng.choice(len(seqs), size=min(6, len(seqs)), replace=False)]
    for seq in picked:
        pngs = sorted((DAVIS / "Annotations" / seq).glob("*.png"))
        for i in rng.choice(len(pngs) - 5, size=3, replace=False):
            gt = np.asarray(Image.open(pngs[i])) > 0
            later = np.asarray(Image.open(pngs[i + 5])) > 0  # a real mask a few frames off: real errors
            assert_same(later, gt)
            assert_same(ndimage.binary_erosion(gt, iterations=3), gt)
            assert_same(gt, gt)
            void = np.zeros_like(gt)
            void[:, : gt.shape[1] // 3] = True
            assert_same(later, gt, void)

"""Region (J) and boundary (F) measures defined exactly as in the DAVIS 2017 evaluation toolkit.

Re-implemented from the published definitions (Perazzi et al. 2016, Pont-Tuset et al. 2017) so that
numbers printed by `lwl eval` are comparable with the official toolkit: region IoU with void pixels
removed, 1-px boundary maps, disk dilation with radius ceil(0.008 * image diagonal), first and last
frames excluded, statistics (mean, recall, decay) per object and then averaged over all objects.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

BOUND_TH = 0.008


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray,
                void: np.ndarray | None = None) -> np.ndarray:
    """Jaccard index per frame; frames where both masks are empty (outside void) score 1."""
    anno = annotation.astype(bool)
    seg = segmentation.astype(bool)
    keep = np.ones_like(anno) if void is None else ~void.astype(bool)
    inters = np.sum(seg & anno & keep, axis=(-2, -1))
    union = np.sum((seg | anno) & keep, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inters / union.astype(np.float64)
    j = np.asarray(j, dtype=np.float64)
    if j.ndim == 0:
        return np.asarray(1.0 if np.isclose(union, 0) else float(j))
    j[np.isclose(union, 0)] = 1.0
    return j


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-px boundary map: a pixel is boundary if it differs from its right, lower or lower-right pixel.

    Pixels outside the image count as equal to their neighbour, so the frame edge is never a boundary
    (the last row compares only to the right, the last column only downwards, the corner to nothing).
    Written with in-place ORs on views to avoid the three shifted copies of the mask.
    """
    seg = np.asarray(seg, dtype=bool)
    b = np.zeros(seg.shape, dtype=bool)
    if seg.ndim != 2 or seg.size == 0:
        return b
    np.not_equal(seg[:, :-1], seg[:, 1:], out=b[:, :-1])
    b[:-1, :] |= seg[:-1, :] != seg[1:, :]
    b[:-1, :-1] |= seg[:-1, :-1] != seg[1:, 1:]
    return b


def disk_half_widths(radius: int) -> list[int]:
    """Half-width of each row dy = 0..radius of skimage's disk(radius): the largest dx with dx^2 + dy^2 <= r^2.

    skimage.morphology.disk (strict_radius=True, the default and the toolkit's) is exactly this set of
    offsets; tests check it for every radius that a frame up to 8K can produce.
    """
    return [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]


def dilate_disk(b: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of b by skimage's disk(radius), pixels outside the array contributing nothing.

    The disk is split into its rows: row dy is a horizontal segment of half-width k(dy). Horizontal
    dilations by growing k are built one OR at a time and each is ORed into the output at +-dy, about
    4 * radius whole-array ORs instead of one pass per disk element (scipy's binary_dilation).
    """
    b = np.asarray(b, dtype=bool)
    h, w = b.shape
    out = np.zeros_like(b)
    if radius < 0 or not b.any():
        return out
    horiz = b.copy()
    k = 0
    widths = disk_half_widths(radius)
    for dy in range(radius, -1, -1):  # half-widths only grow as dy goes down to 0
        while k < widths[dy]:
            k += 1
            if k >= w:
                break
            horiz[:, k:] |= b[:, :-k]
            horiz[:, :-k] |= b[:, k:]
        if dy >= h:
            continue
        out[dy:] |= horiz[: h - dy]
        if dy:
            out[: h - dy] |= horiz[dy:]
    return out


def _boundary_box(*maps: np.ndarray) -> tuple[slice, slice] | None:
    """Smallest window holding every boundary pixel of the maps (None when there is none).

    Dilation is only read at boundary pixels and only grows from them, so cropping to this window
    changes no count and saves the work over empty background.
    """
    union = maps[0].copy()
    for m in maps[1:]:
        union |= m
    rows = np.flatnonzero(union.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(union[rows[0] : rows[-1] + 1].any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def f_measure(segmentation: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
              bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of one frame (toolkit conventions for empty boundaries).

    Same numbers as dilating both full boundary maps with disk(bound_pix) and counting matches:
    only the matched counts are needed, so both maps are cropped to their common boundary window
    and dilated there (see dilate_disk).
    """
    seg = np.asarray(segmentation, dtype=bool)
    gtm = np.asarray(gt, dtype=bool)
    if void is not None:
        keep = ~np.asarray(void, dtype=bool)
        seg = seg & keep
        gtm = gtm & keep
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * float(np.linalg.norm(seg.shape)))
    radius = int(bound_pix)
    fg_b = seg2bmap(seg)
    gt_b = seg2bmap(gtm)
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        box = _boundary_box(fg_b, gt_b)
        assert box is not None
        fg_c, gt_c = fg_b[box], gt_b[box]
        fg_match = int(np.count_nonzero(dilate_disk(gt_c, radius) & fg_c))
        gt_match = int(np.count_nonzero(dilate_disk(fg_c, radius) & gt_c))
        precision = float(fg_match) / n_fg
        recall = float(gt_match) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def db_eval_boundary(annotation: np.ndarray, segmentation: np.ndarray, void: np.ndarray | None = None,
                     bound_th: float = BOUND_TH) -> np.ndarray:
    """Boundary F per frame for stacks (T, H, W) or a single (H, W) frame."""
    if annotation.ndim == 2:
        return np.asarray(f_measure(segmentation, annotation, void, bound_th))
    out = np.zeros(annotation.shape[0])
    for t in range(annotation.shape[0]):
        out[t] = f_measure(segmentation[t], annotation[t], None if void is None else void[t], bound_th)
    return out


def db_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall (fraction > 0.5) and decay (first quarter minus last quarter), as in the toolkit."""
    per_frame = np.asarray(per_frame, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        m = float(np.nanmean(per_frame))
        o = float(np.nanmean(per_frame > 0.5))
    n_bins = 4
    ids = np.round(np.linspace(1, len(per_frame), n_bins + 1) + 1e-10) - 1
    ids = ids.astype(np.uint8)  # the toolkit's dtype (wraps above 256 frames); kept for parity
    bins = [per_frame[ids[i]:ids[i + 1] + 1] for i in range(n_bins)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        d = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return m, o, d


@dataclass
class ObjectScore:
    """Statistics of one object of one sequence (the toolkit's unit of averaging)."""

    sequence: str
    object_id: int
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float
    j_per_frame: list[float] = field(default_factory=list)
    f_per_frame: list[float] = field(default_factory=list)

    @property
    def jf(self) -> float:
        return (self.j_mean + self.f_mean) / 2


def split_objects(labels: np.ndarray, num_objects: int) -> np.ndarray:
    """(T, H, W) label maps -> (K, T, H, W) boolean masks for ids 1..K."""
    ids = np.arange(1, num_objects + 1)[:, None, None, None]
    return labels[None] == ids


def evaluate_sequence(name: str, gt: np.ndarray, pred: np.ndarray) -> list[ObjectScore]:
    """Score one sequence. gt, pred: (T, H, W) uint8 label maps; 255 in gt is void.

    Objects are the ids 1..max(first gt frame), as the toolkit's semi-supervised mode reads them.
    Predicted ids above that raise; missing predicted objects count as empty masks.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"{name}: prediction shape {pred.shape} != ground truth {gt.shape}")
    void = gt == 255
    gt = np.where(void, 0, gt)
    num_objects = int(gt[0].max())
    if int(pred.max(initial=0)) > num_objects:
        raise ValueError(f"{name}: prediction has an object id above the sequence's {num_objects} objects")
    gt_o = split_objects(gt, num_objects)[:, 1:-1]
    pr_o = split_objects(pred, num_objects)[:, 1:-1]
    void = void[1:-1]
    out = []
    for k in range(num_objects):
        j = db_eval_iou(gt_o[k], pr_o[k], void)
        f = db_eval_boundary(gt_o[k], pr_o[k], void)
        jm, jo, jd = db_statistics(j)
        fm, fo, fd = db_statistics(f)
        out.append(ObjectScore(name, k + 1, jm, jo, jd, fm, fo, fd, j.tolist(), f.tolist()))
    return out


@dataclass
class Summary:
    """Global numbers: means over all objects of all sequences (the toolkit's 'Global results')."""

    jf_mean: float
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    def as_dict(self) -> dict[str, float]:
        return {"J&F-Mean": self.jf_mean, "J-Mean": self.j_mean, "J-Recall": self.j_recall,
                "J-Decay": self.j_decay, "F-Mean": self.f_mean, "F-Recall": self.f_recall,
                "F-Decay": self.f_decay}


def summarise(scores: list[ObjectScore]) -> Summary:
    """Average object statistics like the toolkit: J&F-Mean = (mean J + mean F) / 2."""
    if not scores:
        raise ValueError("no objects to summarise")

    def avg(attr: str) -> float:
        return float(np.mean([getattr(s, attr) for s in scores]))

    jm, fm = avg("j_mean"), avg("f_mean")
    return Summary((jm + fm) / 2, jm, avg("j_recall"), avg("j_decay"), fm, avg("f_recall"), avg("f_decay"))

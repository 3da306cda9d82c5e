"""Video and image datasets in the layouts the VOS community ships (DAVIS, YouTube-VOS, COCO).

Every dataset exposes the same small interface (`VideoSource`) so the sampler does not care where a
frame comes from: a list of sequences, each with frame loading, label-map loading and, per object,
the pixel count in every annotated frame (the sampler needs it to pick visible frames).
Frames are decoded on demand (RGB uint8); only per-frame object areas are cached.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.rle import rle_decode


def read_rgb(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_labels(path: str | Path) -> np.ndarray:
    """Label map uint8 (H, W); palette PNGs give ids directly, RGB/L PNGs are reduced to ids."""
    with Image.open(path) as im:
        if im.mode == "P" or im.mode == "L":
            return np.asarray(im).astype(np.uint8)
        arr = np.asarray(im.convert("RGB")).astype(np.int64)
    key = arr[..., 0] * 65536 + arr[..., 1] * 256 + arr[..., 2]
    colours, inv = np.unique(key, return_inverse=True)
    ids = np.zeros(len(colours), np.uint8)
    nxt = 1
    for i, c in enumerate(colours):
        if c != 0:
            ids[i] = nxt
            nxt += 1
    return ids[inv.reshape(key.shape)]


@dataclass
class SequenceInfo:
    """One video: frame files, annotation files (None where a frame has no annotation), object ids."""

    name: str
    frames: list[Path]
    annotations: list[Path | None]
    object_ids: list[int] = field(default_factory=list)
    # object id -> pixel count per annotated frame (aligned with `annotated`)
    areas: dict[int, np.ndarray] = field(default_factory=dict)
    annotated: list[int] = field(default_factory=list)  # frame indices that have annotations


class VideoSource:
    """Interface of every dataset the sampler reads."""

    name: str = "video"
    is_image_dataset: bool = False
    sequences: list[SequenceInfo]

    def __len__(self) -> int:
        return len(self.sequences)

    def load_frame(self, seq: int, frame: int) -> np.ndarray:
        return read_rgb(self.sequences[seq].frames[frame])

    def load_labels(self, seq: int, frame: int) -> np.ndarray:
        ann = self.sequences[seq].annotations[frame]
        if ann is None:
            raise ValueError(f"{self.sequences[seq].name} frame {frame} has no annotation")
        return read_labels(ann)

    def object_areas(self, seq: int) -> dict[int, np.ndarray]:
        """Pixel counts per object over the annotated frames (computed once, then cached)."""
        info = self.sequences[seq]
        if not info.areas:
            hists = [np.bincount(self.load_labels(seq, fi).ravel(), minlength=256) for fi in info.annotated]
            if not info.object_ids:
                present = np.sum(hists, axis=0) if hists else np.zeros(256)
                info.object_ids = [i for i in range(1, 255) if present[i] > 0]
            info.areas = {int(o): np.asarray([int(h[o]) for h in hists]) for o in info.object_ids}
        return info.areas


class DavisDataset(VideoSource):
    """DAVIS 2016/2017 layout: JPEGImages/[480p/]<seq>/*.jpg, Annotations/[480p/]<seq>/*.png.

    `sequences` restricts to given names; `exclude` removes names (held-out validation videos);
    `split` reads ImageSets/<year>/<split>.txt or ImageSets/480p/<split>.txt when present.
    """

    name = "davis"

    def __init__(self, root: str | Path, sequences: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), split: str | None = None, resolution: str = "480p") -> None:
        self.root = Path(root)
        img_root = self.root / "JPEGImages"
        ann_root = self.root / "Annotations"
        if (img_root / resolution).is_dir():
            img_root, ann_root = img_root / resolution, ann_root / resolution
        if not img_root.is_dir():
            raise FileNotFoundError(f"no JPEGImages folder under {self.root}")
        names = sorted(p.name for p in img_root.iterdir() if p.is_dir())
        if split is not None:
            names = self._split_names(split) or names
        if sequences is not None:
            missing = set(sequences) - set(names)
            if missing:
                raise FileNotFoundError(f"sequences not in {self.root}: {sorted(missing)}")
            names = list(sequences)
        names = [n for n in names if n not in set(exclude)]
        self.sequences = []
        for n in names:
            frames = sorted((img_root / n).glob("*.jpg")) + sorted((img_root / n).glob("*.png"))
            anns: list[Path | None] = []
            annotated = []
            for i, f in enumerate(frames):
                a = ann_root / n / (f.stem + ".png")
                anns.append(a if a.exists() else None)
                if a.exists():
                    annotated.append(i)
            self.sequences.append(SequenceInfo(n, frames, anns, annotated=annotated))

    def _split_names(self, split: str) -> list[str]:
        for cand in sorted((self.root / "ImageSets").glob(f"**/{split}.txt")):
            return [ln.strip() for ln in cand.read_text().splitlines() if ln.strip()]
        return []


class YouTubeVOSDataset(VideoSource):
    """YouTube-VOS train layout: JPEGImages/<vid>/*.jpg, Annotations/<vid>/*.png, meta.json.

    Only annotated frames are used (every 5th raw frame), in the order of meta.json.
    """

    name = "youtubevos"

    def __init__(self, root: str | Path, videos: Sequence[str] | None = None,
                 exclude: Sequence[str] = ()) -> None:
        self.root = Path(root)
        meta = json.loads((self.root / "meta.json").read_text())["videos"]
        names = sorted(meta) if videos is None else list(videos)
        names = [n for n in names if n not in set(exclude)]
        self.sequences = []
        for n in names:
            objs = meta[n]["objects"]
            stems = sorted({s for o in objs.values() for s in o["frames"]})
            frames = [self.root / "JPEGImages" / n / f"{s}.jpg" for s in stems]
            anns: list[Path | None] = [self.root / "Annotations" / n / f"{s}.png" for s in stems]
            info = SequenceInfo(n, frames, anns, object_ids=sorted(int(k) for k in objs),
                                annotated=list(range(len(stems))))
            self.sequences.append(info)


def _rle_decode(counts: list[int] | str, h: int, w: int) -> np.ndarray:
    """COCO RLE (uncompressed list or compressed string) -> bool (h, w)."""
    return rle_decode({"size": [h, w], "counts": counts}).astype(bool)


def coco_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """Instance mask (bool h x w) from a COCO annotation's polygons or RLE."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        im = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(im)
        for poly in seg:
            if len(poly) >= 6:
                draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=1)
        return np.asarray(im).astype(bool)
    return _rle_decode(seg["counts"], *seg["size"])


class CocoDataset(VideoSource):
    """COCO instances JSON (image folder + annotations file) as one-frame 'videos' for box training.

    Each image is a sequence of length 1; non-crowd instances are its objects.
    """

    name = "coco"
    is_image_dataset = True

    def __init__(self, images: str | Path, annotations: str | Path, min_area: float = 10.0) -> None:
        self.images = Path(images)
        data = json.loads(Path(annotations).read_text())
        self._anns: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            if not a.get("iscrowd", 0) and a.get("area", 1e9) >= min_area:
                self._anns.setdefault(a["image_id"], []).append(a)
        self._imgs = {im["id"]: im for im in data["images"] if im["id"] in self._anns}
        self.sequences = []
        self._ids = sorted(self._imgs)
        for iid in self._ids:
            im = self._imgs[iid]
            anns = self._anns[iid]
            info = SequenceInfo(str(iid), [self.images / im["file_name"]], [None],
                                object_ids=list(range(1, len(anns) + 1)), annotated=[0])
            info.areas = {k + 1: np.asarray([int(a.get("area", 100))]) for k, a in enumerate(anns)}
            self.sequences.append(info)

    def load_labels(self, seq: int, frame: int) -> np.ndarray:
        """Instances painted in annotation order (later ones on top), ids 1..K."""
        im = self._imgs[self._ids[seq]]
        h, w = im["height"], im["width"]
        out = np.zeros((h, w), np.uint8)
        for k, a in enumerate(self._anns[self._ids[seq]][:254]):
            out[coco_mask(a, h, w)] = k + 1
        return out

    def box(self, seq: int, obj: int) -> tuple[float, float, float, float]:
        """The annotation box [x, y, w, h] (COCO boxes are used as-is for box training)."""
        b = self._anns[self._ids[seq]][obj - 1]["bbox"]
        return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def stable_hash(text: str) -> int:
    """Deterministic across processes (Python's hash() is salted)."""
    return zlib.crc32(text.encode())


def pick_validation(names: Sequence[str], count: int, seed: str = "lwl-val") -> list[str]:
    """Choose `count` held-out sequences deterministically (by a keyed hash of the name)."""
    return sorted(sorted(names, key=lambda n: stable_hash(seed + n))[:count])

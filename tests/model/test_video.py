"""The video pipeline (model.video.segment_video): the same masks as tracking the frames by hand with the
tracker's own calls, in frame order, with the frames before the first annotation parked on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.api import load_model
from model.video import Annotation, segment_video

H, W, N = 96, 128, 12


def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    bg = (rng.random((H, W, 3)) * 80 + 40).astype(np.uint8)
    out = []
    for i in range(N):
        img = bg.copy()
        img[20 + i : 50 + i, 10 + 3 * i : 40 + 3 * i] = (220, 40, 40)
        img[60:85, 100 - 2 * i : 125 - 2 * i] = (40, 200, 60)
        out.append(img)
    return out


def annotations() -> dict[int, np.ndarray]:
    """Object 1 from frame 3, object 2 first given on frame 6, a correction of object 1 on frame 9."""
    a3 = np.zeros((H, W), np.uint8)
    a3[23:53, 19:49] = 1
    a6 = np.zeros((H, W), np.uint8)
    a6[26:56, 28:58] = 1
    a6[60:85, 88:113] = 2
    a9 = np.zeros((H, W), np.uint8)
    a9[29:59, 37:67] = 1
    return {3: a3, 6: a6, 9: a9}


def by_hand(model, imgs: list[np.ndarray], anns: dict[int, np.ndarray], corrections: bool) -> list[np.ndarray]:  # noqa: ANN001
    """The rules written out with the tracker's calls, everything in memory (the oracle)."""
    first = min(anns)
    out: dict[int, np.ndarray] = {}
    tr = model.new_tracker((64, 112))
    for i in range(first, len(imgs)):
        a = anns.get(i)
        if i == first:
            out[i] = tr.step(imgs[i], mask=a).labels
            continue
        known = set(tr.object_ids)
        ids = [int(v) for v in np.unique(a) if v] if a is not None else []
        new = [v for v in ids if v not in known]
        res = tr.step(imgs[i], mask=np.where(np.isin(a, new), a, 0).astype(np.uint8) if new else None)
        fix = [v for v in ids if v in known]
        if corrections and fix:
            res = tr.correct(np.where(np.isin(a, fix), a, 0).astype(np.uint8))
        out[i] = res.labels
    back = model.new_tracker((64, 112))
    back.step(imgs[first], mask=anns[first])
    for i in range(first - 1, -1, -1):
        out[i] = back.step(imgs[i]).labels
    return [out[i] for i in range(len(imgs))]


@pytest.fixture(scope="module")
def model(tiny_weights_path: Path):  # noqa: ANN201
    return load_model(tiny_weights_path, "cpu")


@pytest.mark.parametrize("corrections", [False, True])
def test_pipeline_equals_the_tracker_by_hand(model, corrections: bool, tmp_path: Path) -> None:  # noqa: ANN001
    imgs, anns = frames(), annotations()
    want = by_hand(model, imgs, anns, corrections)
    spooled: list[int] = []

    def source():  # noqa: ANN202 - a generator: frames are consumed one at a time
        for i, f in enumerate(imgs):
            spooled.append(len([p for p in tmp_path.glob("lwl-spool-*/*.npy") if ".labels" not in p.name]))
            yield f"{i:05d}", f

    got = list(segment_video(model, source(), {k: Annotation(v) for k, v in anns.items()}, crop_size=(64, 112),
                             corrections=corrections, spool_dir=tmp_path))
    assert [f.index for f in got] == list(range(N))
    for f, w in zip(got, want, strict=True):
        assert np.array_equal(f.labels, w), f.index
        assert f.image.shape == (H, W, 3)
    assert set(got[6].objects) == {1, 2} and set(got[2].objects) == {1}
    assert max(spooled) == 3  # frames 0-2 waited on disk for the annotation on frame 3
    assert not list(tmp_path.iterdir())  # and the spool is gone


def test_progress_counts_both_passes_and_names_work_as_keys(model) -> None:  # noqa: ANN001
    imgs, anns = frames(), annotations()
    seen: list[int] = []
    got = list(segment_video(model, ((f"f{i}", f) for i, f in enumerate(imgs)), {"f3": anns[3]}, crop_size=(64, 112),
                             on_progress=seen.append))
    assert seen == list(range(1, N + 1)) and len(got) == N


def test_boxes_and_errors(model) -> None:  # noqa: ANN001
    imgs = frames()
    got = list(segment_video(model, ((str(i), f) for i, f in enumerate(imgs[:3])),
                             {0: Annotation(boxes={1: (10.0, 20.0, 30.0, 30.0)})}, crop_size=(64, 112)))
    assert len(got) == 3 and set(got[0].objects) == {1}
    with pytest.raises(ValueError, match="no frame has an annotation"):
        list(segment_video(model, ((str(i), f) for i, f in enumerate(imgs[:3])), {5: annotations()[3]}))


def test_model_segment_video_from_a_folder(model, tmp_path: Path) -> None:  # noqa: ANN001
    from PIL import Image

    for i, f in enumerate(frames()[:4]):
        Image.fromarray(f).save(tmp_path / f"{i:03d}.jpg")
    got = list(model.segment_video(tmp_path, mask=annotations()[3], crop_size=(64, 112)))
    assert [f.name for f in got] == ["000", "001", "002", "003"]

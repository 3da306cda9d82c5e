"""clip_box: boxes that overlap the frame are clipped to it, the others are refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.boxes import clip_box
from model.errors import InputError

HW = (96, 128)  # frame height, width


@pytest.mark.parametrize("box,want", [
    ((10, 20, 30, 40), (10, 20, 30, 40)),  # inside: unchanged
    ((0, 0, 128, 96), (0, 0, 128, 96)),  # the whole frame
    ((100, 20, 29, 40), (100, 20, 28, 40)),  # 1 px past the right edge
    ((10, 60, 30, 37), (10, 60, 30, 36)),  # 1 px past the bottom edge
    ((-5, -2, 20, 10), (0, 0, 15, 8)),  # past the top-left corner
    ((-10, -10, 200, 200), (0, 0, 128, 96)),  # larger than the frame
    ((10.5, 20.25, 5.5, 4), (10.5, 20.25, 5.5, 4)),  # fractional coordinates stay
])
def test_overlapping_boxes_are_clipped(box: tuple, want: tuple) -> None:
    got = clip_box(box, HW)
    assert got == pytest.approx(want) and all(isinstance(v, float) for v in got)


@pytest.mark.parametrize("box", [(128, 10, 5, 5), (200, 10, 5, 5), (10, 96, 5, 5), (-20, 10, 20, 5), (10, -9, 5, 9)])
def test_boxes_outside_the_frame_are_refused(box: tuple) -> None:
    with pytest.raises(InputError, match="lies outside the 128x96 frame"):
        clip_box(box, HW)


@pytest.mark.parametrize("box", [(10, 10, 0, 5), (10, 10, 5, -1), (200, 10, 0, 5)])
def test_boxes_without_area_are_refused(box: tuple) -> None:
    with pytest.raises(InputError, match="positive width and height"):
        clip_box(box, HW)


@pytest.mark.parametrize("box,match", [
    ((1, 2, 3), "four numbers"), ("1,2,3,4", "four numbers"), ((1, 2, "a", 4), "four numbers"),
    (None, "four numbers"), ((1, float("nan"), 3, 4), "finite"), ((1, 2, float("inf"), 4), "finite"),
])
def test_malformed_boxes_are_refused(box: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        clip_box(box, HW)  # type: ignore[arg-type]


def test_boxes_module_does_not_need_torch() -> None:
    import subprocess
    import sys

    code = "import sys, model.boxes; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])

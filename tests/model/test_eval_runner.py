"""`lwl eval` runner: DAVIS layout in, PNGs and toolkit-style numbers out; YouTube-VOS zip export;
the bundled weights segment a generated sequence better than copying the first mask."""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.api import PROFILES, load_model
from model.eval.runner import (
    CopyFirstModel,
    evaluate_davis,
    format_table,
    track_sequence,
    write_results,
)


def _make_davis(root: Path, name: str = "sq", n: int = 6, h: int = 40, w: int = 64) -> np.ndarray:
    (root / "JPEGImages" / name).mkdir(parents=True)
    (root / "Annotations" / name).mkdir(parents=True)
    labs = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        labs[i, 10:20, 5 + 4 * i:15 + 4 * i] = 1
        img = np.full((h, w, 3), 40, np.uint8)
        img[labs[i] == 1] = 220
        Image.fromarray(img).save(root / "JPEGImages" / name / f"{i:05d}.jpg")
        im = Image.fromarray(labs[i], mode="P")
        im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
        im.save(root / "Annotations" / name / f"{i:05d}.png")
    return labs


def test_copy_first_baseline_scores_and_files(tmp_path: Path) -> None:
    labs = _make_davis(tmp_path / "data")
    scores, summ, info = evaluate_davis(CopyFirstModel(), tmp_path / "data", tmp_path / "out")
    # square of 10x10 moving 4 px per frame: frames 1..4 overlap 6,2,0,0 columns of 10
    expected = np.mean([60 / 140, 20 / 180, 0.0, 0.0])
    assert summ.j_mean == pytest.approx(expected)
    assert info["frames"] == 6
    png = np.asarray(Image.open(tmp_path / "out" / "sq" / "00003.png"))
    assert np.array_equal(png, labs[0])
    write_results(tmp_path / "out", scores, summ, info)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["global"]["J-Mean"] == pytest.approx(expected)
    assert "GLOBAL" in format_table(scores, summ)


def test_first_appearance_starts_late_objects() -> None:
    frames = [np.zeros((8, 8, 3), np.uint8) for _ in range(3)]
    a0 = np.zeros((8, 8), np.uint8)
    a0[:2, :2] = 1
    a2 = a0.copy()
    a2[5:, 5:] = 2
    calls = []

    class Rec:
        object_ids: list[int] = []

        def step(self, frame: np.ndarray, mask: np.ndarray | None = None, boxes: object = None):  # noqa: ANN201
            ids = None if mask is None else sorted(set(np.unique(mask).tolist()) - {0})
            calls.append(ids)
            self.object_ids = self.object_ids + (ids or [])
            return type("R", (), {"labels": np.zeros((8, 8), np.uint8), "objects": {}})()

    class RecModel:
        def new_tracker(self, crop_size: object = None) -> Rec:
            return Rec()

    track_sequence(RecModel(), frames, {0: a0, 2: a2}, init="first-appearance")
    assert calls == [[1], None, [2]]


def test_youtubevos_export_zip(tmp_path: Path) -> None:
    from model.eval.ytvos import export_youtubevos

    data = tmp_path / "yt"
    _make_davis(data, "vid", n=4)
    for p in list((data / "Annotations" / "vid").glob("*.png"))[1:]:
        if p.name != "00000.png":
            p.unlink()
    (data / "meta.json").write_text(json.dumps(
        {"videos": {"vid": {"objects": {"1": {"category": "x", "frames": ["00000", "00002"]}}}}}))
    z = export_youtubevos(CopyFirstModel(), data, tmp_path / "sub.zip")
    names = sorted(zipfile.ZipFile(z).namelist())
    assert names == ["Annotations/vid/00000.png", "Annotations/vid/00002.png"]


def test_cli_parser_registers_eval() -> None:
    from model.eval.cli import add_parser

    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers())
    args = ap.parse_args(["eval", "--data", "d", "--out", "o", "--baseline", "copy-first"])
    assert args.baseline == "copy-first" and callable(args.func)


def _bundled(profile: str):  # noqa: ANN202 - a model.api.Model
    if not PROFILES[profile].weights.is_file():
        pytest.skip(f"the bundled {profile} model is not in this checkout (make train-default)")
    return load_model(profile=profile, device="cpu", threads=None)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_bundled_weights_beat_copy_first_on_generated_video(profile: str) -> None:
    from model.eval.metrics import db_eval_iou
    from model.train.synthetic import SyntheticVideo

    model = _bundled(profile)
    wins = 0
    for seed in range(2):
        rng = np.random.default_rng(100 + seed)
        vid = SyntheticVideo(rng, (240, 427), max_objects=1, distractor_prob=0.0, speed=2.0)
        frames, labels = vid.render(list(range(0, 24, 3)))
        pred = track_sequence(model, list(frames), {0: labels[0]})
        j_model = float(np.mean(db_eval_iou(labels[1:] > 0, pred[1:] > 0)))
        j_copy = float(np.mean(db_eval_iou(labels[1:] > 0, np.repeat(labels[:1] > 0, len(labels) - 1, 0))))
        wins += j_model > j_copy + 0.1
    assert wins >= 1


def test_box_start_gives_tight_boxes_and_the_box_rectangle_baseline() -> None:
    from model.eval.runner import start_annotation

    lab = np.zeros((20, 30), np.uint8)
    lab[2:6, 3:10] = 1
    lab[10:18, 20:29] = 2
    lab[0, 0] = 255  # ignored
    ann = start_annotation(lab, "box")
    assert ann.mask is None and ann.boxes == {1: (3.0, 2.0, 7.0, 4.0), 2: (20.0, 10.0, 9.0, 8.0)}
    rect = track_sequence(CopyFirstModel(), [np.zeros((20, 30, 3), np.uint8)] * 2, {0: lab}, start="box")
    assert np.array_equal(rect[1], np.where(lab == 255, 0, lab))  # rectangles: here the objects themselves
    ap = argparse.ArgumentParser()
    from model.eval.cli import add_parser

    add_parser(ap.add_subparsers())
    assert ap.parse_args(["eval", "--data", "d", "--out", "o", "--init", "box"]).init == "box"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_bundled_weights_from_a_box_beat_the_box_rectangle(profile: str) -> None:
    """`lwl eval --init box`: the bundled model started from each object's tight box tracks it better than
    repeating the filled box on every frame (the objects are not rectangles and they move)."""
    from model.eval.metrics import db_eval_iou
    from model.train.synthetic import SyntheticVideo

    model = _bundled(profile)
    gains = []
    for seed in range(2):
        rng = np.random.default_rng(100 + seed)
        vid = SyntheticVideo(rng, (240, 427), max_objects=1, distractor_prob=0.0, speed=2.0)
        frames, labels = vid.render(list(range(0, 24, 3)))
        j = {}
        for name, m in (("model", model), ("rect", CopyFirstModel())):
            pred = track_sequence(m, list(frames), {0: labels[0]}, start="box")
            j[name] = float(np.mean(db_eval_iou(labels[1:] > 0, pred[1:] > 0)))
        gains.append(j["model"] - j["rect"])
    assert max(gains) > 0.1 and min(gains) > 0, gains


def test_eval_both_starts_in_one_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lwl eval --init both`: a mask run and a box run, each with its own results, and one table of both."""
    from model.eval.cli import add_parser

    labs = _make_davis(tmp_path / "data", n=4)
    labs[0, 10:14, 5:9] = 0  # an L, not a rectangle: its box start differs from its mask start
    for i, lab in enumerate(labs):
        im = Image.fromarray(lab, mode="P")
        im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
        im.save(tmp_path / "data" / "Annotations" / "sq" / f"{i:05d}.png")
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers())
    args = ap.parse_args(["eval", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                          "--baseline", "copy-first", "--init", "both"])
    assert args.func(args) == 0
    res = {s: json.loads((tmp_path / "out" / s / "results.json").read_text()) for s in ("mask", "box")}
    table = capsys.readouterr().out.split("J&F by start")[1].splitlines()
    glob = next(line for line in table if line.startswith("GLOBAL")).split()
    assert [float(x) for x in glob[1:]] == pytest.approx([res["mask"]["global"]["J&F-Mean"],
                                                          res["box"]["global"]["J&F-Mean"]], abs=1e-3)
    assert res["mask"]["global"]["J&F-Mean"] != res["box"]["global"]["J&F-Mean"]
    assert any(line.startswith("sq ") for line in table)


def test_update_every_sets_the_schedule_of_weights_given_by_path(tmp_path: Path, tiny_weights_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`lwl eval --weights W --update-every 3` scores W with the fast profile's schedule; 0 is one line, exit 2."""
    from model.eval import runner
    from model.eval.cli import add_parser

    _make_davis(tmp_path / "data", n=4)
    seen = []
    real = runner.evaluate_davis

    def spy(model, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(model.params.train_skipping)
        return real(model, *a, **k)

    monkeypatch.setattr(runner, "evaluate_davis", spy)
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers())
    base = ["eval", "--data", str(tmp_path / "data"), "--weights", str(tiny_weights_path), "--device", "cpu"]
    args = ap.parse_args([*base, "--out", str(tmp_path / "o3"), "--update-every", "3"])
    assert args.func(args) == 0 and seen == [3]
    args = ap.parse_args([*base, "--out", str(tmp_path / "o0"), "--update-every", "0"])
    assert args.func(args) == 2 and seen == [3]

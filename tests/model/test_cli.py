"""`lwl segment` and `lwl convert` as a user runs them: real files, real processes, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from model.media import read_label_png, write_label_png

H, W = 96, 128


def lwl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.random((H, W, 3)) * 80 + 40).astype(np.uint8)
    img[20 + i:50 + i, 20 + 2 * i:60 + 2 * i] = (220, 40, 40)
    return img


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip")
    (root / "frames").mkdir()
    (root / "ann").mkdir()
    for i in range(5):
        Image.fromarray(frame(i)).save(root / "frames" / f"f{i:03d}.png")
    m = np.zeros((H, W), np.uint8)
    m[22:52, 24:64] = 1
    write_label_png(root / "ann" / "f002.png", m)  # first annotation on frame 2: frames 0-1 go backwards
    write_label_png(root / "first.png", m)
    with av.open(str(root / "clip.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    return root


def test_segment_folder_with_late_annotation(clip: Path, tiny_weights_path: Path, tmp_path: Path) -> None:
    r = lwl("segment", str(clip / "frames"), "--annotations", str(clip / "ann"), "--weights", str(tiny_weights_path),
            "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [f"f{i:03d}.png" for i in range(5)]
    im = Image.open(tmp_path / "f002.png")
    assert im.mode == "P" and im.size == (W, H)
    assert np.array_equal(read_label_png(tmp_path / "f002.png"), read_label_png(clip / "ann" / "f002.png"))


def test_segment_video_with_box(clip: Path, tiny_weights_path: Path, tmp_path: Path) -> None:
    r = lwl("segment", str(clip / "clip.mp4"), "--box", "20,20,40,30", "--weights", str(tiny_weights_path),
            "--size", "64x96", "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{i:05d}.png" for i in range(5)]


@pytest.mark.parametrize("extra,message", [
    (["--mask", "MISSING.png"], "not found"),
    (["--box", "200,100,50,50"], "outside"),
    (["--box", "1,2,3"], "x,y,w,h"),
    ([], "exactly one of"),
    (["--mask", "EMPTY"], "empty"),
    (["--mask", "SMALL"], "differs from the frame size"),
    (["--mask", "FIRST", "--size", "50x50"], "multiples of 16"),
])
def test_segment_errors_are_one_line(clip: Path, tiny_weights_path: Path, tmp_path: Path, extra: list[str],
                                     message: str) -> None:
    empty, small = tmp_path / "empty.png", tmp_path / "small.png"
    write_label_png(empty, np.zeros((H, W), np.uint8))
    write_label_png(small, np.ones((10, 10), np.uint8))
    sub = {"EMPTY": str(empty), "SMALL": str(small), "FIRST": str(clip / "first.png"),
           "MISSING.png": str(tmp_path / "missing.png")}
    extra = [sub.get(a, a) for a in extra]
    r = lwl("segment", str(clip / "frames"), *extra, "--weights", str(tiny_weights_path), "--out", str(tmp_path / "o"),
            "--quiet")
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("source,message", [("broken.mp4", "cannot be decoded"), ("nothing.mp4", "not found")])
def test_unreadable_sources(clip: Path, tiny_weights_path: Path, tmp_path: Path, source: str, message: str) -> None:
    r = lwl("segment", str(clip / source), "--mask", str(clip / "first.png"), "--weights", str(tiny_weights_path),
            "--out", str(tmp_path), "--quiet")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_bad_weights_file(clip: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint" * 10)
    r = lwl("segment", str(clip / "frames"), "--mask", str(clip / "first.png"), "--weights", str(bad),
            "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 2 and "bad.pth" in r.stderr and "Traceback" not in r.stderr
    r = lwl("convert", str(bad), str(tmp_path / "x"))
    assert r.returncode == 2 and "bad.pth" in r.stderr


@pytest.mark.parametrize("recipe,message", [
    ("name: x\nout_dir: OUT\nbogus: 1\nphases: []\n", "unknown keys ['bogus']"),
    (None, "No such file"),
    ("name: x\nout_dir: OUT\ninit_backbone: pypi:nope\nnet: {preset: compact}\n"
     "phases: [{name: s, mode: single, steps: 1, lr: {decoder: 1.0e-3}}]\n", "unknown pretrained backbone"),
    ("name: x\nout_dir: OUT\nnet: {preset: compact}\ndata: [{type: davis, root: /nonexistent/davis}]\n"
     "phases: [{name: s, mode: single, steps: 1, lr: {'': 1.0e-3}}]\n", "data folder /nonexistent/davis"),
    ("name: x\nout_dir: OUT\nnet: {preset: compact}\n"
     "phases: [{name: s, mode: single, steps: 1, lr: {decoder: 1.0e-3}}]\n", "no phase trains the backbone"),
])
def test_train_recipe_errors_are_one_line(tmp_path: Path, recipe: str | None, message: str) -> None:
    path = tmp_path / "recipe.yaml"
    if recipe is not None:
        path.write_text(recipe.replace("OUT", str(tmp_path / "run")))
    r = lwl("train", str(path), "--no-progress")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _video(path: Path, n: int, h: int = 360, w: int = 640) -> Path:
    """An H.264 clip of a moving square, written frame by frame (nothing held in memory)."""
    rng = np.random.default_rng(1)
    bg = (rng.random((h // 8, w // 8, 3)) * 80 + 40).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = bg.copy()
            x = 40 + (3 * i) % (w - 140)
            img[100:180, x : x + 80] = (220, 40, 40)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _peak_rss_mb(*args: str) -> float:
    """Peak resident memory of one `lwl` run, read in a parent process of its own."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.exit(r.stderr) if r.returncode else print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "service.cli", *args], capture_output=True,
                       text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return int(r.stdout) / 1024


@pytest.mark.slow
def test_segment_memory_does_not_grow_with_video_length(tiny_weights_path: Path, tmp_path: Path) -> None:
    """360x640 frames are 0.7 MB each: holding 240 more of them would add 166 MB; the pipeline holds one (the
    frames before a late first annotation wait on disk). Peak memory varies by some 40 MB between runs (allocator
    arenas, decoder threads), so the margin is half of what holding the frames would cost."""
    ann = tmp_path / "ann"
    ann.mkdir()
    m = np.zeros((360, 640), np.uint8)
    m[100:180, 70:150] = 1
    write_label_png(ann / "00010.png", m)  # frames 0-9 are tracked backwards from frame 10
    peaks = {}
    for n in (30, 270):
        video = _video(tmp_path / f"v{n}.mp4", n)
        peaks[n] = _peak_rss_mb("segment", str(video), "--annotations", str(ann), "--weights", str(tiny_weights_path),
                                "--size", "64x112", "--threads", "1", "--quiet", "--out", str(tmp_path / f"o{n}"))
        assert len(list((tmp_path / f"o{n}").glob("*.png"))) == n
    held_mb = (270 - 30) * 360 * 640 * 3 / 2**20
    assert peaks[270] - peaks[30] < held_mb / 2, peaks


def test_segment_overlay_video(clip: Path, tiny_weights_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "over.mp4"
    r = lwl("segment", str(clip / "clip.mp4"), "--mask", str(clip / "first.png"), "--weights", str(tiny_weights_path),
            "--size", "64x96", "--out", str(tmp_path / "m"), "--overlay", str(out), "--threads", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        st = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(st)]
        assert float(st.average_rate) == 10
    assert len(frames) == 5 and frames[0].shape == (H, W, 3)
    assert not list(tmp_path.glob("*.partial*"))


def test_failed_runs_leave_nothing_behind(clip: Path, tiny_weights_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "frames"
    src.mkdir()
    for p in sorted((clip / "frames").iterdir()):
        (src / p.name).write_bytes(p.read_bytes())
    (src / "f003.png").write_bytes(b"not a png")  # decoding fails on the fourth frame
    out = tmp_path / "out"
    r = lwl("segment", str(src), "--mask", str(clip / "first.png"), "--weights", str(tiny_weights_path),
            "--out", str(out), "--overlay", str(tmp_path / "o.mp4"), "--quiet")
    assert r.returncode == 2 and "f003.png" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # no masks, no overlay, no partial folder


@pytest.mark.parametrize("out,message", [("/proc/lwl-test/out", "cannot write"), ("FILE", "not a folder")])
def test_unwritable_out_is_one_line(clip: Path, tiny_weights_path: Path, tmp_path: Path, out: str,
                                    message: str) -> None:
    if out == "FILE":
        out = str(tmp_path / "afile")
        Path(out).write_text("x")
    r = lwl("segment", str(clip / "frames"), "--mask", str(clip / "first.png"), "--weights", str(tiny_weights_path),
            "--out", out, "--quiet")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def profile_masks(clip: Path) -> dict[str, dict[str, np.ndarray]]:
    """Each bundled profile's masks of the clip, made with the library (the reference for the CLI's)."""
    from model.api import load_model
    from model.media import FrameSource
    from model.profiles import PROFILES
    from model.video import segment_video

    if not all(p.weights.is_file() for p in PROFILES.values()):
        pytest.skip("the bundled models are not in this checkout (make train-default)")
    first = {2: read_label_png(clip / "ann" / "f002.png")}
    return {name: {f.name: f.labels for f in segment_video(load_model(None, "cpu", threads=1, profile=name),
                                                             FrameSource(clip / "frames"), first)}
            for name in PROFILES}


@pytest.mark.parametrize("profile", [None, "fast", "accurate"])
def test_segment_profile_reaches_the_tracker(clip: Path, tmp_path: Path, profile_masks: dict,
                                             profile: str | None) -> None:
    """`lwl segment --profile P` gives the masks of the library's profile P (no option: the default, fast);
    the two profiles' masks differ on this clip, so the check tells them apart."""
    fast, accurate = profile_masks["fast"], profile_masks["accurate"]
    assert any(not np.array_equal(fast[n], accurate[n]) for n in fast)
    r = lwl("segment", str(clip / "frames"), "--annotations", str(clip / "ann"), "--out", str(tmp_path), "--quiet",
            *(["--profile", profile] if profile else []))
    assert r.returncode == 0, r.stderr
    want = profile_masks[profile or "fast"]
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(want)
    for name, labels in want.items():
        assert np.array_equal(read_label_png(tmp_path / f"{name}.png"), labels), name

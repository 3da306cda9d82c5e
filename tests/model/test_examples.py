"""The documented library example runs as it is, on a generated clip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from model.media import write_label_png

ROOT = Path(__file__).resolve().parents[2]


def test_library_example_runs(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    bg = (rng.random((120, 160, 3)) * 80 + 40).astype(np.uint8)
    for i in range(4):
        img = bg.copy()
        img[30 + i : 70 + i, 40 + 3 * i : 90 + 3 * i] = (220, 40, 40)
        Image.fromarray(img).save(frames / f"{i:05d}.png")
    m = np.zeros((120, 160), np.uint8)
    m[30:70, 40:90] = 1
    write_label_png(tmp_path / "first.png", m)
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "library.py"), str(frames),
                        str(tmp_path / "first.png"), str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                   "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*.png"))) == 4
    assert "restored tracker gives the same masks: True" in r.stdout

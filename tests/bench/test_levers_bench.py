"""bench/levers.py keeps working: one short round of every configuration, and a schedule lever that
leaves the loaded model alone. The real figures come from `python -m bench.levers` with its default rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.levers import LEVERS, lever_params
from model.api import load_model

ROOT = Path(__file__).resolve().parents[2]


def test_a_schedule_lever_changes_only_its_tracker() -> None:
    m = load_model(None, "cpu", threads=1, profile="fast")
    every = m.params.train_skipping
    p = lever_params(m, 6)
    assert p.train_skipping == 6 and m.params.train_skipping == every
    assert lever_params(m, None) is None
    assert m.new_tracker(None, p).targets == {}  # a tracker with the lever's schedule starts like any other


def test_one_round_of_every_lever(tmp_path: Path) -> None:
    out = tmp_path / "levers.json"
    p = subprocess.run([sys.executable, "-m", "bench.levers", "--rounds", "1", "--frames", "35", "--threads", "1",
                        "--out", str(out)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["lever"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(LEVERS)
    assert rows["as shipped"]["speed_vs_shipped"] == 1.0
    assert rows["refined every 6th frame"]["refine_every"] == 6 and rows["crop 192x352"]["crop"] == "192x352"
    assert all(r["mean_frame_ms"] > 0 and r["frame_vs_reference"] > 0 for r in rows.values())

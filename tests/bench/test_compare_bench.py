"""bench/compare.py keeps working: one short round of this checkout against HEAD, and a bad revision.

The real measurement is `python -m bench.compare REV` with its default rounds; this only checks that
both trees are timed, the figures and the JSON are produced, and the worktree is removed again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _worktrees() -> list[str]:
    out = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("worktree ")]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout: nothing to compare with")
def test_one_round_against_head(tmp_path: Path) -> None:
    before = _worktrees()
    out = tmp_path / "compare.json"
    p = subprocess.run([sys.executable, "-m", "bench.compare", "HEAD", "--rounds", "1", "--frames", "35",
                        "--threads", "1", "--out", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["rev"] == "HEAD" and len(res["rounds"]) == 1
    r = res["rounds"][0]
    assert r["base_ms"] > 0 and r["this_ms"] > 0
    assert res["speedup_of_medians"] == pytest.approx(r["base_ms"] / r["this_ms"], rel=0.01)
    assert "as fast as HEAD" in p.stdout
    assert _worktrees() == before  # the temporary worktree is gone


def test_an_unknown_revision_is_one_line_and_exit_2() -> None:
    p = subprocess.run([sys.executable, "-m", "bench.compare", "no-such-rev-xyz", "--rounds", "1"], cwd=ROOT,
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("bench.compare: cannot check out no-such-rev-xyz")
    assert len(p.stderr.strip().splitlines()) == 1

"""bench/service.py keeps working: its helpers, and one short run against real `lwl` processes.

The real measurement is `make bench-service`; this only checks that every figure is still produced
(a tiny random model, 1 and 2 sessions, 6 frames, one thread, the ratio for 2 sessions) and that the
run leaves no keys in Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not an installed package: importable from the checkout only
    sys.path.insert(0, str(ROOT))

from bench.service import command_calls, commands_diff, make_clip, parse_sessions, summarise  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"


def test_clip_has_two_objects_that_move() -> None:
    frames, mask = make_clip(5)
    assert len(frames) == 5 and frames[0].shape == (240, 427, 3) and frames[0].dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1, 2}
    assert not np.array_equal(frames[0], frames[4])


def test_summarise_gives_rate_and_percentiles() -> None:
    r = summarise([0.01 * i for i in range(1, 101)], frames=100, wall_s=4.0)
    assert r["fps"] == 25.0 and r["frames"] == 100
    assert r["p50_ms"] == pytest.approx(505.0) and r["p95_ms"] == pytest.approx(950.5)


def test_command_counts_leave_out_info_and_unchanged_commands() -> None:
    before = command_calls({"cmdstat_get": {"calls": 3, "usec": 9}, "cmdstat_info": {"calls": 5},
                            "cmdstat_xadd": {"calls": 1}})
    after = command_calls({"cmdstat_get": {"calls": 3}, "cmdstat_info": {"calls": 9}, "cmdstat_xadd": {"calls": 7},
                           "cmdstat_exec": {"calls": 2}})
    assert before == {"get": 3, "xadd": 1}
    assert commands_diff(before, after) == {"xadd": 6, "exec": 2}


def test_sessions_option() -> None:
    assert parse_sessions("4,1, 4,16") == [1, 4, 16]
    for bad in ("", "0,2", "a"):
        with pytest.raises(Exception, match="--sessions"):
            parse_sessions(bad)


def _redis():  # noqa: ANN202 - redis.Redis or None
    try:
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        r.ping()
        return r
    except Exception:  # noqa: BLE001
        return None


@pytest.mark.timeout(180)
def test_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    r = _redis()
    if r is None:
        pytest.skip("no Redis on 127.0.0.1:6379 (run bash .ci/ensure-redis.sh)")
    out = tmp_path / "service.json"
    cmd = [sys.executable, "-m", "bench.service", "--tiny", "--sessions", "1,2", "--frames", "6", "--threads", "1",
           "--paired-frames", "8", "--ratio-sessions", "2", "--ratio-repeats", "2",
           "--redis-url", REDIS_URL, "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000

    meta = res["meta"]
    for k in ("command", "model", "weights", "crop", "device", "threads", "cores", "torch", "frame", "objects",
              "frames_per_session", "paired_frames", "sessions", "ratio_sessions", "load_average_before", "redis_note"):
        assert k in meta, k
    assert meta["sessions"] == [1, 2] and meta["threads"] == 1 and meta["device"] == "cpu"

    ip = res["in_process"]
    assert ip["median_step_ms"] > 0 and [x["sessions"] for x in ip["runs"]] == [1, 2]
    assert ip["lanes_vs_sequential"] is None  # one thread: the worker has no lanes, nothing to compare
    for name in ("serve", "api_worker"):
        c = res[name]
        one = c["inflight1"]
        assert one["frames"] == 8 and one["step_p50_ms"] > 0, name
        # the overhead is paired frame by frame with the in-process step of the same frame
        assert c["overhead_ms"] == one["p50_over_step_ms"] and one["p50_over_step_ms"] <= one["p95_over_step_ms"]
        beyond = c["overhead_vs_worker_compute_ms"]  # latency minus the worker's compute_ms: positive
        assert 0 < beyond["p50"] <= beyond["p95"] < c["inflight1"]["p95_ms"], name
        assert [x["sessions"] for x in c["runs"]] == [1, 2]
        for run in c["runs"]:
            assert run["frames"] == 6 * run["sessions"]
            assert run["fps"] > 0 and 0 < run["p50_ms"] <= run["p95_ms"], (name, run)
            assert run["lanes"] == 1 and 0 < run["lanes_busy"] <= 1.05, (name, run)  # one thread: one lane
        ratio = c["concurrent_vs_sequential"]
        assert ratio["sessions"] == 2 and ratio["ratio"] == pytest.approx(
            ratio["concurrent_fps"] / ratio["sequential_fps"], rel=0.01)
        assert len(ratio["pairs"]) == 2 and ratio["ratio"] in [p["ratio"] for p in ratio["pairs"]]
        assert c["model"] == "tiny" and c["crop"] == "64x112" and c["threads"] == 1, name
        # the worker's model time against the same frame stepped in the bench's process, frame by frame
        assert one["compute_p50_ms"] > 0 and c["compute_vs_in_process"] == one["compute_vs_step"] > 0, name
    aw = res["api_worker"]
    assert aw["redis_commands_per_frame"] > 0 and all(x["redis_commands_per_frame"] > 0 for x in aw["runs"])
    assert "redis_commands_per_frame" not in res["serve"]["runs"][0]
    assert not list(r.scan_iter(match=f"{aw['key_prefix']}:*")), "the run left keys in Redis"


def test_lanes_vs_sequential_pairs_lanes_with_one_after_another(tmp_path: Path) -> None:
    """The in-process reference of the service's ratio: 2 trackers on 2 one-thread lanes against the same
    trackers one after another on 2 threads, in pairs; every tracker steps every frame."""
    import torch

    from bench.service import lanes_vs_sequential, load_in_process
    from model.testing import tiny_weights

    frames, mask = make_clip(4, (64, 112))
    threads = torch.get_num_threads()
    try:
        local = load_in_process(str(tiny_weights(tmp_path / "t.safetensors")), "cpu", 2, frames[0], mask, frames[1:])
        steps = []
        real_step = local.step
        local.step = lambda tr, k: steps.append(k) or real_step(tr, k)  # type: ignore[method-assign]
        res = lanes_vs_sequential(local, k=2, repeats=2)
        assert res is not None and res["lanes"] == 2 and res["sessions"] == 2 and len(res["pairs"]) == 2
        assert sorted(steps) == sorted(list(range(3)) * 2 * 2 * 2)  # 2 trackers x 2 halves x 2 pairs
        for p in res["pairs"]:
            assert p["lanes_fps"] > 0 and p["sequential_fps"] > 0
            assert p["ratio"] == pytest.approx(p["lanes_fps"] / p["sequential_fps"], rel=0.01)
        assert res["ratio"] in [p["ratio"] for p in res["pairs"]]
        local.threads = 1
        assert lanes_vs_sequential(local, k=2, repeats=1) is None  # one thread: no lanes
    finally:
        torch.set_num_threads(threads)

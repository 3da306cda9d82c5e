"""`lwl api` + two `lwl worker` processes on a real Redis: concurrent WebSocket sessions through the SDK.

Checks bit-identity with `lwl segment`, placement over both workers, the Redis metadata, 503 when
full, failover of a session when its worker is killed, delete and TTL expiry freeing the workers.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import Cluster, free_port, offline_pngs

from service.client import Client, LWLError, Session


def _labels_png(result: dict) -> bytes:
    return base64.b64decode(result["labels"])


def _workers(c: Cluster) -> dict[str, dict]:
    return {w["id"]: w for w in httpx.get(f"{c.url}/v1/workers").json()}


def _wait(pred, timeout: float, what: str) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_api_two_workers_redis(cluster_factory, clip, weights, tmp_path) -> None:  # noqa: ANN001
    frames, mask = clip["frames"], clip["mask"]
    ref = offline_pngs(weights, frames, mask, tmp_path / "offline")

    c = cluster_factory(True, LWL_MAX_SESSIONS_PER_WORKER="2", LWL_SESSION_TTL_S="12")
    c.start("api")
    mport = free_port()
    wa = c.start("worker", LWL_WORKER_ID="worker-a", LWL_WORKER_METRICS_PORT=str(mport))
    wb = c.start("worker", LWL_WORKER_ID="worker-b")
    c.wait_ready(workers=2)
    client = Client(c.url)

    sessions: list[Session] = [client.create_session(frames[0], mask=mask) for _ in range(4)]
    assert sorted(s.worker_id for s in sessions) == ["worker-a", "worker-a", "worker-b", "worker-b"]
    for s in sessions:
        assert _labels_png(s.result) == ref[0]
        assert [o["id"] for o in s.objects] == [1, 2]

    # both workers full: 503 with Retry-After
    r = httpx.post(f"{c.url}/v1/sessions", files={"image": frames[0].read_bytes(), "mask": mask.read_bytes()})
    assert r.status_code == 503 and r.headers.get("retry-after") and r.json()["code"] == "no_capacity"

    # several sessions at once over WebSocket; every mask bit-identical to `lwl segment`
    def run(s: Session) -> list[dict]:
        return list(s.stream(frames[1:3]))

    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(run, sessions))
    for out in outs:
        assert [m["type"] for m in out] == ["result", "result"]
        assert [m["frame_index"] for m in out] == [1, 2]
        assert [_labels_png(m) for m in out] == ref[1:3]

    # Redis holds the documented metadata
    rc = c.redis_client()
    for s in sessions:
        meta = rc.hgetall(f"{c.prefix}:session:{s.id}")
        assert meta["worker"] == s.worker_id and meta["state"] == "active"
        assert json.loads(meta["objects"]) == [1, 2] and meta["frames"] == "3"
        assert {"created", "last_active", "token_sha256", "crop_size", "model"} <= set(meta)
        assert s.token not in meta.values()
        assert 0 < rc.ttl(f"{c.prefix}:session:{s.id}") <= 13
        assert rc.exists(f"{c.prefix}:snapshot:{s.id}")
    assert rc.sismember(f"{c.prefix}:workers", "worker-a") and rc.exists(f"{c.prefix}:worker:worker-b")
    info = json.loads(rc.get(f"{c.prefix}:worker:worker-a"))
    assert info["sessions"] == 2 and info["free"] == 0 and info["memory_bytes"] > 0

    # the worker's own /metrics and /healthz
    text = httpx.get(f"http://127.0.0.1:{mport}/metrics").text
    assert "lwl_frames_segmented_total 6.0" in text  # 2 creates + 2 x 2 streamed frames
    assert httpx.get(f"http://127.0.0.1:{mport}/healthz").json()["id"] == "worker-a"

    # failover: kill worker-b; its sessions continue on worker-a with identical masks
    moved = [s for s in sessions if s.worker_id == "worker-b"][0]
    wb.stop(signal.SIGKILL)
    _wait(lambda: "worker-b" not in _workers(c), 10, "worker-b to leave the registry")
    out = list(moved.stream(frames[3:4]))
    assert out[0]["type"] == "result" and out[0]["worker_id"] == "worker-a"
    assert _labels_png(out[0]) == ref[3]
    assert moved.info()["worker_id"] == "worker-a"

    # delete frees the worker's tracker
    _wait(lambda: _workers(c)["worker-a"]["sessions"] == 3, 10, "worker-a to hold the moved session")
    moved.delete()
    _wait(lambda: _workers(c)["worker-a"]["sessions"] == 2, 10, "delete to free the tracker")
    with pytest.raises(LWLError) as e:
        moved.info()
    assert e.value.status == 404
    assert not rc.exists(f"{c.prefix}:session:{moved.id}")

    # TTL expiry: idle sessions are evicted and forgotten
    _wait(lambda: _workers(c)["worker-a"]["sessions"] == 0, 30, "idle sessions to expire")
    # the orphan of the killed worker expires through the Redis key TTL
    _wait(lambda: not any(rc.exists(f"{c.prefix}:session:{s.id}") for s in sessions), 30,
          "session keys to expire")
    # SIGTERM drains the idle worker: clean exit, gone from the registry
    assert wa.stop() == 0
    assert not rc.exists(f"{c.prefix}:worker:worker-a")


@pytest.mark.slow
def test_sigterm_drains_worker_and_session_moves(cluster_factory, clip, weights, tmp_path) -> None:  # noqa: ANN001
    frames, mask = clip["frames"], clip["mask"]
    ref = offline_pngs(weights, frames, mask, tmp_path / "offline")
    c = cluster_factory(True, LWL_DRAIN_TIMEOUT_S="1")
    c.start("api")
    procs = {"w1": c.start("worker", LWL_WORKER_ID="w1"), "w2": c.start("worker", LWL_WORKER_ID="w2")}
    c.wait_ready(workers=2)
    client = Client(c.url)
    s = client.create_session(frames[0], mask=mask)
    assert [_labels_png(m) for m in s.stream(frames[1:2])] == ref[1:2]
    owner = s.worker_id
    other = "w2" if owner == "w1" else "w1"
    rc = procs[owner].stop(signal.SIGTERM)  # drains (1 s), snapshots the session, leaves the registry
    assert rc == 0, f"worker exit status {rc} (-9: still running 20 s after SIGTERM):\n{procs[owner].logs()[-3000:]}"
    assert owner not in _workers(c)
    out = list(s.stream(frames[2:4]))
    assert [m["worker_id"] for m in out] == [other, other]
    assert [_labels_png(m) for m in out] == ref[2:4]

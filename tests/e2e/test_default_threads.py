"""With default settings (no LWL_TORCH_THREADS, no OMP_NUM_THREADS) the service steps its model with as
many torch threads as the cores the process may use: `lwl serve`, `lwl api` + `lwl worker`, and a video
job. torch keeps its thread count per calling thread, so a count set anywhere else (the loading thread
uses one) never reaches the compute thread by itself; each result and job says what stepped it."""

from __future__ import annotations

import pytest
from conftest import first_mask, make_frame
from test_jobs import _write_video

from model.threads import available_cpus
from service.client import Client


def _defaults(c) -> None:  # noqa: ANN001 - a conftest Cluster
    """What a user starting the service gets: no thread setting anywhere in the environment."""
    for name in ("OMP_NUM_THREADS", "LWL_TORCH_THREADS", "MKL_NUM_THREADS"):
        c.env.pop(name, None)


def _check_threads(c, tmp_path, want: int) -> None:  # noqa: ANN001
    client = Client(c.url)
    info = client.request("GET", "/v1/info").json()
    assert [m["threads"] for m in info["models"]] == [want]
    s = client.create_session(make_frame(0), mask=first_mask())
    out = list(s.stream([make_frame(1), make_frame(2)]))
    assert [m["threads"] for m in out] == [want, want]  # one session: the compute thread, every thread
    video = tmp_path / "clip.mp4"
    _write_video(video, 3)
    jid = client.submit_video(video, mask=first_mask())
    st = client.wait_job(jid, progress=False, timeout=300)
    assert st["state"] == "done" and st["threads"] == want


@pytest.mark.slow
def test_serve_steps_with_every_core_by_default(cluster_factory, tmp_path) -> None:  # noqa: ANN001
    c = cluster_factory(False)
    _defaults(c)
    c.start("serve")
    c.wait_ready(workers=1)
    _check_threads(c, tmp_path, available_cpus())


@pytest.mark.slow
def test_api_and_worker_step_with_every_core_by_default(cluster_factory, tmp_path) -> None:  # noqa: ANN001
    c = cluster_factory(True)
    _defaults(c)
    c.start("api")
    c.start("worker")
    c.wait_ready(workers=1)
    _check_threads(c, tmp_path, available_cpus())

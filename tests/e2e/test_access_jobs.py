"""API keys, per-key limits, job tokens, DELETE of a running job, retention and crash leftovers, on real
processes (api + worker) and real Redis.

One cluster serves the whole story so the test starts torch twice, not once per check.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import av
import httpx
import pytest
from conftest import first_mask, jpeg_bytes, make_frame

from service.access import key_digest
from service.client import Client, LWLError

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"


def _video(path: Path, n: int) -> Path:
    with av.open(str(path), "w") as c:
        st = c.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = 160, 120, "yuv420p"
        for i in range(n):
            for p in st.encode(av.VideoFrame.from_ndarray(make_frame(i % 20), format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


def _until(what: str, check, timeout: float = 60, every: float = 0.1):  # noqa: ANN001, ANN202
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_keys_limits_job_tokens_delete_and_retention(cluster_factory, tmp_path) -> None:  # noqa: ANN001
    jobs_dir = tmp_path / "results" / "jobs"
    stale, fresh = jobs_dir / uuid.uuid4().hex, jobs_dir / uuid.uuid4().hex
    for d in (stale, fresh):  # half-written uploads of a crashed api: no record, a .part file
        d.mkdir(parents=True)
        (d / "input.video.part").write_bytes(b"half a video")
    old = time.time() - 3600
    os.utime(stale / "input.video.part", (old, old))
    os.utime(stale, (old, old))

    c = cluster_factory(True, LWL_API_KEYS=f"alice:sha256:{key_digest(ALICE)},bob:{BOB}",
                        LWL_MAX_SESSIONS_PER_KEY="1", LWL_MAX_JOBS_PER_KEY="1",
                        LWL_SESSION_TTL_S="4", LWL_JOB_RETENTION_H=str(12 / 3600))
    c.start("api")
    worker = c.start("worker", LWL_WORKER_ID="w-access")
    c.wait_ready(workers=1)

    # start-up sweep: the stale leftover went, the fresh one (an upload maybe still running) stayed
    _until("the stale upload leftover to go", lambda: not stale.exists(), 10)
    assert fresh.exists()

    raw = httpx.Client(base_url=c.url, timeout=60)
    info = raw.get("/v1/info").json()  # open: the page asks it whether to show the key field
    assert info["api_key_required"] is True
    assert raw.get("/healthz").status_code == 200 and raw.get("/metrics").status_code == 200
    assert raw.get("/").status_code == 200 and raw.get("/openapi.json").status_code == 200
    r = raw.get("/v1/workers")
    assert (r.status_code, r.json()["code"]) == (401, "missing_api_key")
    r = raw.get("/v1/workers", headers={"X-API-Key": ALICE + "x"})
    assert (r.status_code, r.json()["code"]) == (403, "wrong_api_key")

    # ---- sessions: one live session per key; deleting or expiring one frees the slot
    frame, mask = jpeg_bytes(make_frame(0)), first_mask()
    alice, bob = Client(c.url, api_key=ALICE, retries=0), Client(c.url, api_key=BOB, retries=0)
    s1 = alice.create_session(frame, mask=mask)
    with pytest.raises(LWLError) as e:
        alice.create_session(frame, mask=mask)
    assert (e.value.status, e.value.code) == (429, "too_many_sessions")
    r = raw.post("/v1/sessions", headers={"X-API-Key": ALICE}, files={"image": ("f.jpg", frame)},
                 data={"boxes": '{"1": [20, 20, 50, 40]}'})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    bob.create_session(frame, mask=mask)  # another key has its own limit
    s1.delete()
    s2 = alice.create_session(frame, mask=mask)
    assert s2.segment(jpeg_bytes(make_frame(1)))["type"] == "result"
    time.sleep(5.5)  # LWL_SESSION_TTL_S=4: s2 expires, and with it alice's count
    alice.create_session(frame, mask=mask).delete()

    # ---- jobs: a token per job; one queued/running job per key; DELETE cancels a running job
    long_video = _video(tmp_path / "long.mp4", 400)
    assert raw.post("/v1/jobs", files={"video": ("v.mp4", long_video.read_bytes())}).status_code == 401
    j1 = alice.submit_video(long_video, mask=mask)
    assert j1.token and len(j1.token) >= 24
    assert raw.get(f"/v1/jobs/{j1}", headers={"X-API-Key": ALICE}).json()["code"] == "missing_token"
    r = raw.get(f"/v1/jobs/{j1}", headers={"X-API-Key": ALICE, "Authorization": "Bearer nope"})
    assert (r.status_code, r.json()["code"]) == (403, "wrong_token")
    assert Client(c.url, api_key=BOB).job(j1, token=j1.token)["job_id"] == j1  # the token, not the key
    short_video = _video(tmp_path / "short.mp4", 4)
    r = raw.post("/v1/jobs", headers={"X-API-Key": ALICE},
                 files={"video": ("v.mp4", short_video.read_bytes()), "mask": ("m.png", _png(mask))})
    assert (r.status_code, r.json()["code"]) == (429, "too_many_jobs") and "Retry-After" in r.headers

    st = _until("job 1 running", lambda: (s := alice.job(j1))["state"] == "running" and s["frames_done"] >= 5
                and s)
    assert st["frames_done"] < st["frames_total"], "the job finished before it could be cancelled"
    alice.delete_job(j1)
    with pytest.raises(LWLError) as e:
        alice.job(j1)
    assert (e.value.status, e.value.code) == (404, "unknown_job")
    _until("the worker to stop the job", lambda: "job cancelled" in worker.logs(), 30)
    time.sleep(0.5)
    assert not (jobs_dir / j1).exists()  # nothing written after the cancel
    assert "job done" not in worker.logs()

    # the slot is free again; the worker takes the next job at once
    j2 = alice.submit_video(short_video, mask=mask)
    st = alice.wait_job(j2, progress=False, timeout=120)
    assert st["state"] == "done" and st["frames_done"] == 4
    assert not (jobs_dir / j2 / "input.video").exists()  # the input goes when the job is done
    # a browser download link: the job token in the URL, no API key header
    r = raw.get(f"/v1/jobs/{j2}/result", params={"format": "rle", "token": j2.token})
    assert r.status_code == 200 and r.json()["job_id"] == j2

    # bad input never shows a server path
    r = raw.post("/v1/jobs", headers={"X-API-Key": ALICE}, files={"video": ("v.mp4", b"not a video at all")})
    assert (r.status_code, r.json()["code"]) == (400, "bad_video")
    assert str(tmp_path) not in r.text and "/jobs/" not in r.text

    # retention (12 s here): the finished job's record and files go; GET then says 404
    _until("job 2 to expire", lambda: raw.get(f"/v1/jobs/{j2}", params={"token": j2.token},
                                              headers={"X-API-Key": ALICE}).status_code == 404, 40, 0.5)
    assert not (jobs_dir / j2).exists()
    assert fresh.exists()  # untouched for less than the leftover age


def _png(mask) -> bytes:  # noqa: ANN001
    from model.media import encode_label_png

    return encode_label_png(mask)

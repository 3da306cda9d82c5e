"""Video jobs end to end on Redis: submit, restart the api, wait, download PNG zip / RLE / MP4.

The PNGs must equal the offline segmentation of the same decoded video frames.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import av
import pytest
from conftest import first_mask, lwl_segment, make_frame

from model.media import encode_label_png, iter_video_frames
from service.client import Client, JobRef
from service.codec import rle_decode


def _write_video(path: Path, n: int) -> None:
    with av.open(str(path), "w") as c:
        st = c.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = 160, 120, "yuv420p"
        for i in range(n):
            for p in st.encode(av.VideoFrame.from_ndarray(make_frame(i), format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)


def _offline(weights: Path, video: Path, init: int, tmp: Path) -> list[bytes]:
    """`lwl segment` on the same video with the mask on frame `init` (earlier frames: backwards)."""
    ann = tmp / "ann"
    ann.mkdir()
    (ann / f"{init:05d}.png").write_bytes(encode_label_png(first_mask()))
    return lwl_segment(weights, video, tmp / "offline", "--annotations", str(ann))


@pytest.mark.slow
def test_video_job_survives_api_restart(cluster_factory, weights, tmp_path) -> None:  # noqa: ANN001
    video = tmp_path / "clip.mp4"
    _write_video(video, 4)
    c = cluster_factory(True)
    api = c.start("api")
    c.start("worker", LWL_WORKER_ID="job-worker")
    c.wait_ready(workers=1)
    client = Client(c.url)
    jid = client.submit_video(video, mask=first_mask(), init_frame=1)
    assert client.job(jid)["frames_total"] == 4

    api.stop()  # restart the api between submit and download
    c.start("api")
    c.wait_ready(workers=1)
    client = Client(c.url)
    st = client.wait_job(jid, progress=False, timeout=300)
    assert st["state"] == "done" and st["frames_done"] == 4 and st["progress"] == 1.0

    ref = _offline(weights, video, 1, tmp_path)
    z = client.download(jid, tmp_path / "masks.zip", format="png")
    with zipfile.ZipFile(z) as zf:
        names = sorted(zf.namelist())
        assert names == [f"{i:05d}.png" for i in range(4)]
        assert [zf.read(n) for n in names] == ref
    rle = json.loads(client.download(jid, tmp_path / "rle.json", format="rle").read_text())
    assert [f["frame_index"] for f in rle["frames"]] == [0, 1, 2, 3]
    seg = rle["frames"][1]["objects"][0]["segmentation"]
    assert rle_decode(seg).shape == (120, 160)
    mp4 = client.download(jid, tmp_path / "overlay.mp4", format="mp4")
    assert sum(1 for _ in iter_video_frames(mp4)) == 4

    # results come from the volume and Redis, not from the api's memory
    rc = c.redis_client()
    assert rc.hget(f"{c.prefix}:job:{jid}", "state") == "done"
    # a plain download link: the job token in the query, no header (the new client never saw the token)
    assert client.http.get(f"/v1/jobs/{jid}/result", params={"format": "png"}).status_code == 401
    r = client.http.get(f"/v1/jobs/{jid}/result", params={"format": "png", "token": jid.token})
    assert zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    # the input video went when the job was done; the results stay (until LWL_JOB_RETENTION_H)
    assert sorted(p.name for p in (tmp_path / "results" / "jobs" / jid).iterdir()) == [
        "masks.zip", "overlay.mp4", "rle.json"]
    assert client.http.get("/v1/jobs/nope").status_code == 404


def test_the_job_queue_has_a_limit(cluster_factory, tmp_path) -> None:  # noqa: ANN001
    """LWL_MAX_QUEUED_JOBS: with that many jobs queued or running, the next upload is refused with 503
    queue_full and Retry-After (nothing stored); once they end, jobs are taken again."""
    import httpx

    video = tmp_path / "clip.mp4"
    _write_video(video, 40)
    c = cluster_factory(False, LWL_MAX_QUEUED_JOBS="1")
    c.start("serve")
    c.wait_ready(workers=1)
    files = {"video": video.read_bytes(), "mask": encode_label_png(first_mask())}
    first = httpx.post(f"{c.url}/v1/jobs", files=files, timeout=60)
    assert first.status_code == 202, first.text
    full = httpx.post(f"{c.url}/v1/jobs", files=files, timeout=60)
    assert full.status_code == 503 and full.json()["code"] == "queue_full", full.text
    assert int(full.headers["Retry-After"]) >= 1
    jobs = c.tmp / "results" / "jobs"
    assert [p.name for p in jobs.iterdir()] == [first.json()["job_id"]]  # the refused upload left nothing
    client = Client(c.url)
    client.wait_job(JobRef(first.json()["job_id"], first.json()["token"]), progress=False, timeout=300)
    again = httpx.post(f"{c.url}/v1/jobs", files=files, timeout=60)
    assert again.status_code == 202, again.text

"""The SDK's streams resume a dropped connection (docs/API.md, "Resume"): the api is killed mid-stream and
started again; the stream goes on by itself and every frame is answered exactly once, in order."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import httpx
import pytest
from conftest import Cluster, first_mask, jpeg_bytes, make_frame

from model.media import encode_label_png
from service.client import AsyncClient, Client, LWLError

N = 16


def restart_api_at(c: Cluster, api: list, at: int) -> Iterator[bytes]:
    """The frames; when frame `at` is due, the api is killed (SIGKILL: a crash) and a new one started."""
    for i in range(1, N + 1):
        if i == at:
            api[0].stop(signal.SIGKILL)
            api[0] = c.start("api")
        yield jpeg_bytes(make_frame(i % 20))


def frames_applied(c: Cluster, sid: str) -> int:
    return int(c.redis_client().hget(f"{c.prefix}:session:{sid}", "frames"))


def check(results: list[dict]) -> None:
    assert [r["type"] for r in results] == ["result"] * N, results
    assert [r["frame_index"] for r in results] == list(range(1, N + 1))
    seqs = [r["seq"] for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + N)), seqs


def test_sync_stream_resumes_after_an_api_crash(cluster_factory) -> None:  # noqa: ANN001
    c = cluster_factory(True)
    api = [c.start("api")]
    c.start("worker")
    c.wait_ready(workers=1)
    with Client(c.url) as client:
        s = client.create_session(jpeg_bytes(make_frame(0)), mask=encode_label_png(first_mask()))
        results = list(s.stream(restart_api_at(c, api, at=6), max_inflight=4))
    check(results)
    assert frames_applied(c, s.id) == N + 1  # the first frame and each streamed one, once


def test_async_stream_resumes_after_an_api_crash(cluster_factory) -> None:  # noqa: ANN001
    c = cluster_factory(True)
    api = [c.start("api")]
    c.start("worker")
    c.wait_ready(workers=1)

    async def run() -> tuple[str, list[dict]]:
        async with AsyncClient(c.url) as client:
            s = await client.create_session(jpeg_bytes(make_frame(0)), mask=encode_label_png(first_mask()))
            return s.id, [r async for r in s.stream(restart_api_at(c, api, at=9), max_inflight=3)]

    sid, results = asyncio.run(run())
    check(results)
    assert frames_applied(c, sid) == N + 1


def test_a_stream_that_may_not_resume_says_why(cluster_factory) -> None:  # noqa: ANN001
    """A deleted session is not resumed: the stream ends with an LWLError naming the close code."""
    c = cluster_factory(False)
    c.start("serve")
    c.wait_ready(workers=1)
    with Client(c.url) as client:
        s = client.create_session(jpeg_bytes(make_frame(0)), mask=encode_label_png(first_mask()))

        def frames() -> Iterator[bytes]:
            yield jpeg_bytes(make_frame(1))
            httpx.delete(f"{c.url}/v1/sessions/{s.id}", headers={"X-Session-Token": s.token})
            for i in range(2, 6):
                yield jpeg_bytes(make_frame(i))

        with pytest.raises(LWLError) as info:
            list(s.stream(frames(), max_inflight=1))
    assert info.value.code in ("stream_closed_4410", "stream_closed_4404"), info.value

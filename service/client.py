"""Python SDK for lwl-vos: sync (`Client`) and asyncio (`AsyncClient`) over REST and WebSocket.

    from service.client import Client
    c = Client("http://localhost:8000")
    s = c.create_session("00000.jpg", mask="00000.png")
    stream = s.stream(["00001.jpg", "00002.jpg"])
    for r in stream:
        labels = s.labels(r)           # np.uint8 (H, W) label map
        stream.correct(fixed_labels)   # an edit in the stream: after the frames sent so far
    s.save("s.lwlstate")               # the tracker state; c.restore("s.lwlstate") continues it
    job = c.submit_video("clip.mp4", mask="00000.png")   # a JobRef: the job id (a str) with .token
    c.wait_job(job)                    # progress bar
    c.download(job, "masks.zip")

With `api_key=` every call sends `X-API-Key` (needed when the service sets LWL_API_KEYS). Calls that are
safe to repeat (reads, deletes, session and job creation: a 503 or 429 means nothing was created) are
retried when the answer is 503 or 429 with a Retry-After header, a few times and for a bounded total wait.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.client_stream import (  # noqa: F401 - re-exported: the SDK's public names live in service.client
    AsyncStream,
    ImageLike,
    LWLError,
    Outbox,
    Stream,
    image_bytes,
    ready_message,
    stream_query,
    window_size,
)
from service.codec import labels_from_result


class JobRef(str):
    """A job id (a plain str, as before) that also carries the job's token from POST /v1/jobs."""

    token: str | None

    def __new__(cls, job_id: str, token: str | None = None) -> JobRef:
        ref = super().__new__(cls, job_id)
        ref.token = token
        return ref


RETRY_STATUS = (429, 503)


def retry_after_s(r: httpx.Response) -> float | None:
    """The Retry-After of a 429/503 answer in seconds (delta-seconds or an HTTP date), else None."""
    if r.status_code not in RETRY_STATUS:
        return None
    value = r.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


class _Retry:
    """Bounded retries of one call: at most `retries` more attempts and `max_wait_s` of waiting in all; a
    Retry-After that would pass the total is not waited for (the answer goes back to the caller)."""

    def __init__(self, retries: int, max_wait_s: float) -> None:
        self.left, self.budget = retries, max_wait_s

    def delay(self, r: httpx.Response) -> float | None:
        wait = retry_after_s(r)
        if wait is None or self.left <= 0 or wait > self.budget:
            return None
        self.left -= 1
        self.budget -= wait
        return wait


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            body = r.json()
            raise LWLError(r.status_code, body.get("code", "error"), str(body.get("detail")))
        except ValueError:
            raise LWLError(r.status_code, "error", r.text) from None
    if r.status_code == 204 or not r.content:
        return None
    return r.json()


def _session_form(image: ImageLike, mask: ImageLike | None, boxes: dict | None, **opts: Any) -> tuple:
    files: dict[str, Any] = {"image": ("frame", image_bytes(image))}
    if mask is not None:
        files["mask"] = ("mask.png", image_bytes(mask, label=True), "image/png")
    data = {k: str(v) for k, v in opts.items() if v is not None}
    if boxes:
        data["boxes"] = json.dumps({str(k): list(v) for k, v in boxes.items()})
    return files, data


def _write_state(r: httpx.Response, path: str | Path) -> Path:
    """A GET .../state answer into `path` (an error answer raises LWLError and writes nothing)."""
    if r.status_code >= 400:
        _check(r)
    Path(path).write_bytes(r.content)
    return Path(path)


class _SessionInfo:
    """What the api answered when the session was created (shared by the sync and asyncio sessions)."""

    def __init__(self, created: dict[str, Any]) -> None:
        self.id: str = created["session_id"]
        self.token: str = created["token"]
        self.ws_url: str = created["ws_url"]
        self.worker_id: str = created.get("worker_id", "")
        self.objects: list[dict[str, Any]] = created["objects"]
        self.result: dict[str, Any] = created["result"]

    @property
    def _h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Session(_SessionInfo):
    """A live session (sync). `stream()` yields one result per frame, in order."""

    def __init__(self, client: Client, created: dict[str, Any]) -> None:
        super().__init__(created)
        self.client = client

    @staticmethod
    def labels(result: dict[str, Any]) -> np.ndarray:
        """The merged uint8 label map of a result (png or rle format)."""
        return labels_from_result(result)

    def info(self) -> dict[str, Any]:
        return _check(self.client.request("GET", f"/v1/sessions/{self.id}", headers=self._h))

    def delete(self) -> None:
        _check(self.client.request("DELETE", f"/v1/sessions/{self.id}", headers=self._h))

    def segment(self, frame: ImageLike) -> dict[str, Any]:
        """One frame over plain HTTP."""
        return _check(self.client.http.post(f"/v1/sessions/{self.id}/frames", headers=self._h,
                                            files={"image": ("frame", image_bytes(frame))}))

    def add_objects(self, mask: ImageLike | None = None, boxes: dict | None = None) -> dict[str, Any]:
        files, data = _session_form(b"", mask, boxes)
        files.pop("image")
        return _check(self.client.http.post(f"/v1/sessions/{self.id}/objects", headers=self._h,
                                            files=files or None, data=data))

    def correct(self, mask: ImageLike) -> dict[str, Any]:
        files = {"mask": ("mask.png", image_bytes(mask, label=True), "image/png")}
        return _check(self.client.http.post(f"/v1/sessions/{self.id}/corrections",
                                            headers=self._h, files=files))

    def remove_object(self, object_id: int) -> dict[str, Any]:
        return _check(self.client.http.delete(f"/v1/sessions/{self.id}/objects/{object_id}", headers=self._h))

    def save(self, path: str | Path) -> Path:
        """Save the session (GET .../state): the tracker state, for Client.restore or the library's
        model.restore_tracker."""
        return _write_state(self.client.request("GET", f"/v1/sessions/{self.id}/state", headers=self._h), path)

    def stream(self, frames: Iterable[ImageLike], mode: str = "all", format: str | None = None,  # noqa: A002
               max_inflight: int | None = None, reconnects: int = 5) -> Stream:
        """Send frames over the WebSocket; iterate the returned Stream for result (or error/skipped, and
        edit answers) messages in order; `correct`, `add`, `remove` on it send edits in the stream. With
        mode="all", a dropped connection (api restart, Redis outage, ...) is resumed up to `reconnects`
        times: the frames the session accepted are answered, the others sent again, none applied twice."""
        box = Outbox(mode, reconnects)
        return Stream(box, self._messages(box, iter(frames), mode, format, max_inflight))

    def _messages(self, box: Outbox, source: Iterator[ImageLike], mode: str, format: str | None,  # noqa: A002
                  max_inflight: int | None) -> Iterator[dict[str, Any]]:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake
        from websockets.sync.client import connect

        while True:
            try:
                with connect(self.ws_url + stream_query(mode, format, max_inflight) + box.resume_query(), max_size=None,
                             open_timeout=30) as ws:
                    ready = ready_message(json.loads(ws.recv()))
                    window = window_size(ready, mode)
                    for text in box.on_ready(ready):
                        ws.send(text)
                    while box.pending or not box.done:
                        if not box.done and box.pending < window:
                            ws.send(box.next_message(source))
                            continue
                        msg = json.loads(ws.recv())
                        box.answered(msg)
                        yield msg
                    return
            except (ConnectionClosed, InvalidHandshake, OSError) as exc:
                time.sleep(box.retry_after(exc))


def _formats(info: dict[str, Any]) -> dict[str, dict[str, str]]:
    """GET /v1/info's result formats by name, in the order it lists them."""
    return {f["name"]: f for f in info.get("result_formats", [])}


def _job_finished(st: dict[str, Any], job_id: str, end: float, timeout: float) -> bool:
    """One poll of a job, shared by the sync and async clients: True when done, raises when the job
    failed (LWLError) or the deadline `end` (time.monotonic) has passed (TimeoutError)."""
    if st["state"] == "done":
        return True
    if st["state"] == "failed":
        raise LWLError(422, "job_failed", st.get("error") or "job failed")
    if time.monotonic() > end:
        raise TimeoutError(f"job {job_id} not done after {timeout} s")
    return False


def _job_ref(tokens: dict[str, str], created: dict[str, Any]) -> JobRef:
    """POST /v1/jobs's answer as a JobRef; the client also remembers the token by job id."""
    ref = JobRef(created["job_id"], created.get("token"))
    if ref.token:
        tokens[str(ref)] = ref.token
    return ref


def _job_h(tokens: dict[str, str], job_id: str, token: str | None) -> dict[str, str]:
    """The job's token header: the one given, the JobRef's, or the one remembered (else none: 401)."""
    tok = token or getattr(job_id, "token", None) or tokens.get(str(job_id))
    return {"Authorization": f"Bearer {tok}"} if tok else {}


class Client:
    """Sync SDK over one HTTP connection pool."""

    def __init__(self, base_url: str = "http://localhost:8000", timeout: float = 300.0,
                 api_key: str | None = None, retries: int = 3, max_retry_wait_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries, self.max_retry_wait_s = retries, max_retry_wait_s
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                 headers={"X-API-Key": api_key} if api_key else None)
        self.job_tokens: dict[str, str] = {}  # job id -> token, for jobs this client created

    def request(self, method: str, url: str, retry: bool = True, **kw: Any) -> httpx.Response:
        """One HTTP call; with `retry`, answers 503/429 with Retry-After are retried (bounded: _Retry).
        Only for calls that are safe to repeat."""
        policy = _Retry(self.retries if retry else 0, self.max_retry_wait_s)
        while True:
            r = self.http.request(method, url, **kw)
            wait = policy.delay(r)
            if wait is None:
                return r
            time.sleep(wait)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self) -> bool:
        return self.http.get("/readyz").status_code == 200

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /readyz (api up, store and a worker reachable)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.base_url} not ready after {timeout} s")

    def info(self) -> dict[str, Any]:
        """GET /v1/info: the models live workers serve, the limits, the palette and the result formats."""
        return _check(self.request("GET", "/v1/info"))

    def result_formats(self) -> dict[str, dict[str, str]]:
        """What a done job offers for `download`: format name -> file, media type, label, description."""
        return _formats(self.info())

    def create_session(self, image: ImageLike, mask: ImageLike | None = None, boxes: dict | None = None,
                       crop_size: str | None = None, model: str | None = None,
                       format: str = "png", profile: str | None = None) -> Session:  # noqa: A002
        """New session from the first frame and a mask (label map) or boxes {id: (x, y, w, h)}; `profile`:
        the bundled model, "fast" (the service's default) or "accurate"."""
        files, data = _session_form(image, mask, boxes, crop_size=crop_size, model=model, format=format,
                                    profile=profile)
        return Session(self, _check(self.request("POST", "/v1/sessions", files=files, data=data)))

    def restore(self, state: str | Path | bytes, format: str = "png") -> Session:  # noqa: A002
        """A new session from a saved one (Session.save, or tracker.export_state() in the library)."""
        files = {"state": ("s", state if isinstance(state, bytes) else Path(state).read_bytes())}
        return Session(self, _check(self.request("POST", "/v1/sessions", files=files, data={"format": format})))

    def submit_video(self, video: str | Path | bytes, mask: ImageLike | None = None,
                     boxes: dict | None = None, init_frame: int = 0, crop_size: str | None = None,
                     profile: str | None = None) -> JobRef:
        """Post a video job; returns the job id as a JobRef (a str with the job's `.token`)."""
        files, data = _session_form(b"", mask, boxes, init_frame=init_frame, crop_size=crop_size, profile=profile)
        files.pop("image")
        files["video"] = ("video", image_bytes(video) if not isinstance(video, bytes) else video)
        return _job_ref(self.job_tokens, _check(self.request("POST", "/v1/jobs", files=files, data=data)))

    def job(self, job_id: str, token: str | None = None) -> dict[str, Any]:
        """A job's status. The token: `token`, else the JobRef's, else the one this client was given."""
        return _check(self.request("GET", f"/v1/jobs/{job_id}", headers=_job_h(self.job_tokens, job_id, token)))

    def delete_job(self, job_id: str, token: str | None = None) -> None:
        """Delete a job (record, input, results); a running job is cancelled."""
        _check(self.request("DELETE", f"/v1/jobs/{job_id}", headers=_job_h(self.job_tokens, job_id, token)))

    def wait_job(self, job_id: str, progress: bool = True, poll_s: float = 0.5,
                 timeout: float = 3600.0) -> dict[str, Any]:
        """Poll until done/failed, with a tqdm progress bar; raises LWLError if the job failed."""
        from tqdm import tqdm

        end = time.monotonic() + timeout
        with tqdm(total=None, unit="frame", disable=not progress, desc=f"job {job_id[:8]}") as bar:
            while True:
                st = self.job(job_id)
                bar.total = st["frames_total"] or None
                bar.n = st["frames_done"]
                bar.refresh()
                if _job_finished(st, job_id, end, timeout):
                    return st
                time.sleep(poll_s)

    def download(self, job_id: str, dest: str | Path, format: str | None = None) -> Path:  # noqa: A002
        """Save a job result in one of `result_formats()` (None: the first, the zip of PNGs)."""
        dest = Path(dest)
        format = format or next(iter(self.result_formats()))  # noqa: A001
        policy = _Retry(self.retries, self.max_retry_wait_s)
        while True:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/result", params={"format": format},
                                  headers=_job_h(self.job_tokens, job_id, None)) as r:
                if r.status_code < 400:
                    with open(dest, "wb") as f:
                        for chunk in r.iter_bytes():
                            f.write(chunk)
                    return dest
                r.read()
                wait = policy.delay(r)
                if wait is None:
                    _check(r)
            time.sleep(wait or 0)


# ============================================================================ asyncio


class AsyncSession(_SessionInfo):
    """A live session (asyncio)."""

    def __init__(self, client: AsyncClient, created: dict[str, Any]) -> None:
        super().__init__(created)
        self.client = client

    labels = staticmethod(Session.labels)

    async def info(self) -> dict[str, Any]:
        return _check(await self.client.request("GET", f"/v1/sessions/{self.id}", headers=self._h))

    async def delete(self) -> None:
        _check(await self.client.request("DELETE", f"/v1/sessions/{self.id}", headers=self._h))

    async def segment(self, frame: ImageLike) -> dict[str, Any]:
        return _check(await self.client.http.post(f"/v1/sessions/{self.id}/frames", headers=self._h,
                                                  files={"image": ("frame", image_bytes(frame))}))

    async def add_objects(self, mask: ImageLike | None = None, boxes: dict | None = None) -> dict[str, Any]:
        files, data = _session_form(b"", mask, boxes)
        files.pop("image")
        return _check(await self.client.http.post(f"/v1/sessions/{self.id}/objects", headers=self._h,
                                                  files=files or None, data=data))

    async def correct(self, mask: ImageLike) -> dict[str, Any]:
        files = {"mask": ("mask.png", image_bytes(mask, label=True), "image/png")}
        return _check(await self.client.http.post(f"/v1/sessions/{self.id}/corrections", headers=self._h,
                                                  files=files))

    async def remove_object(self, object_id: int) -> dict[str, Any]:
        return _check(await self.client.http.delete(f"/v1/sessions/{self.id}/objects/{object_id}",
                                                    headers=self._h))

    async def save(self, path: str | Path) -> Path:
        """As Session.save, asyncio."""
        return _write_state(await self.client.request("GET", f"/v1/sessions/{self.id}/state", headers=self._h), path)

    def stream(self, frames: Iterable[ImageLike], mode: str = "all", format: str | None = None,  # noqa: A002
               max_inflight: int | None = None, reconnects: int = 5) -> AsyncStream:
        """`async for` the answers in order, edits with correct/add/remove; resumes as Session.stream."""
        box = Outbox(mode, reconnects)
        return AsyncStream(box, self._messages(box, iter(frames), mode, format, max_inflight))

    async def _messages(self, box: Outbox, source: Iterator[ImageLike], mode: str, format: str | None,  # noqa: A002
                        max_inflight: int | None) -> AsyncIterator[dict[str, Any]]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        while True:
            try:
                async with connect(self.ws_url + stream_query(mode, format, max_inflight) + box.resume_query(),
                                   max_size=None) as ws:
                    ready = ready_message(json.loads(await ws.recv()))
                    window = window_size(ready, mode)
                    for text in box.on_ready(ready):
                        await ws.send(text)
                    while box.pending or not box.done:
                        if not box.done and box.pending < window:
                            await ws.send(box.next_message(source))
                            continue
                        msg = json.loads(await ws.recv())
                        box.answered(msg)
                        yield msg
                    return
            except (ConnectionClosed, InvalidHandshake, OSError) as exc:
                await asyncio.sleep(box.retry_after(exc))


class AsyncClient:
    """asyncio SDK."""

    def __init__(self, base_url: str = "http://localhost:8000", timeout: float = 300.0,
                 api_key: str | None = None, retries: int = 3, max_retry_wait_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries, self.max_retry_wait_s = retries, max_retry_wait_s
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                      headers={"X-API-Key": api_key} if api_key else None)
        self.job_tokens: dict[str, str] = {}

    async def request(self, method: str, url: str, retry: bool = True, **kw: Any) -> httpx.Response:
        """As Client.request (bounded retries of 503/429 with Retry-After), asyncio."""
        policy = _Retry(self.retries if retry else 0, self.max_retry_wait_s)
        while True:
            r = await self.http.request(method, url, **kw)
            wait = policy.delay(r)
            if wait is None:
                return r
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def info(self) -> dict[str, Any]:
        """GET /v1/info: the models live workers serve, the limits, the palette and the result formats."""
        return _check(await self.request("GET", "/v1/info"))

    async def result_formats(self) -> dict[str, dict[str, str]]:
        """What a done job offers for `download`: format name -> file, media type, label, description."""
        return _formats(await self.info())

    async def create_session(self, image: ImageLike, mask: ImageLike | None = None, boxes: dict | None = None,
                             crop_size: str | None = None, model: str | None = None,
                             format: str = "png", profile: str | None = None) -> AsyncSession:  # noqa: A002
        files, data = _session_form(image, mask, boxes, crop_size=crop_size, model=model, format=format,
                                    profile=profile)
        return AsyncSession(self, _check(await self.request("POST", "/v1/sessions", files=files, data=data)))

    async def restore(self, state: str | Path | bytes, format: str = "png") -> AsyncSession:  # noqa: A002
        """As Client.restore, asyncio."""
        blob = state if isinstance(state, bytes) else Path(state).read_bytes()
        return AsyncSession(self, _check(await self.request("POST", "/v1/sessions", files={"state": ("state", blob)},
                                                            data={"format": format})))

    async def submit_video(self, video: str | Path | bytes, mask: ImageLike | None = None,
                           boxes: dict | None = None, init_frame: int = 0,
                           crop_size: str | None = None, profile: str | None = None) -> JobRef:
        files, data = _session_form(b"", mask, boxes, init_frame=init_frame, crop_size=crop_size, profile=profile)
        files.pop("image")
        files["video"] = ("video", image_bytes(video) if not isinstance(video, bytes) else video)
        return _job_ref(self.job_tokens, _check(await self.request("POST", "/v1/jobs", files=files, data=data)))

    async def job(self, job_id: str, token: str | None = None) -> dict[str, Any]:
        return _check(await self.request("GET", f"/v1/jobs/{job_id}",
                                         headers=_job_h(self.job_tokens, job_id, token)))

    async def delete_job(self, job_id: str, token: str | None = None) -> None:
        _check(await self.request("DELETE", f"/v1/jobs/{job_id}", headers=_job_h(self.job_tokens, job_id, token)))

    async def wait_job(self, job_id: str, poll_s: float = 0.5, timeout: float = 3600.0) -> dict[str, Any]:
        import asyncio

        end = time.monotonic() + timeout
        while True:
            st = await self.job(job_id)
            if _job_finished(st, job_id, end, timeout):
                return st
            await asyncio.sleep(poll_s)

    async def download(self, job_id: str, dest: str | Path, format: str | None = None) -> Path:  # noqa: A002
        """Save a job result in one of `result_formats()` (None: the first, the zip of PNGs)."""
        dest = Path(dest)
        format = format or next(iter(await self.result_formats()))  # noqa: A001
        policy = _Retry(self.retries, self.max_retry_wait_s)
        while True:
            async with self.http.stream("GET", f"/v1/jobs/{job_id}/result", params={"format": format},
                                        headers=_job_h(self.job_tokens, job_id, None)) as r:
                if r.status_code < 400:
                    with open(dest, "wb") as f:
                        async for chunk in r.aiter_bytes():
                            f.write(chunk)
                    return dest
                await r.aread()
                wait = policy.delay(r)
                if wait is None:
                    _check(r)
            await asyncio.sleep(wait or 0)

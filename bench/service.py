"""Service throughput: N concurrent WebSocket sessions through `lwl serve` and through `lwl api` + one
`lwl worker` + Redis, next to the same frames stepped in one process with no service (issue 13, item 3).

Why: the service exists to put many live sessions on few workers, so what matters is what it adds per
frame on top of the model (latency, Redis round trips) and whether sessions streaming at once finish
sooner than the same sessions one after another (batching). The bench is an outside client: it starts
the `lwl` processes itself, speaks only the protocol of docs/API.md (httpx for REST, the `websockets`
package for the stream) and writes bench/service-results.json and bench/service-results.png.

    python -m bench.service                       # the full run (make bench-service)
    python -m bench.service --tiny --sessions 1,2 --frames 6   # a smoke run with a tiny random model
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FRAME_HW = (240, 427)
CONFIGS = ("in_process", "serve", "api_worker")
LABELS = {"in_process": "in-process (no service)", "serve": "lwl serve", "api_worker": "lwl api + worker + Redis"}


def say(msg: str) -> None:
    """Progress line (flushed: `make` and pipes would otherwise hold it back)."""
    print(f"[bench.service {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------- the clip
def make_clip(n: int, hw: tuple[int, int] = FRAME_HW) -> tuple[list[np.ndarray], np.ndarray]:
    """`n` frames (the first one included) with two objects moving over a fixed texture, and the first
    frame's label map (ids 1 and 2). Generated, so the bench needs no data set."""
    h, w = hw
    rng = np.random.default_rng(0)
    base = (rng.random((h, w, 3)) * 60 + 40).astype(np.uint8)
    oh, ow = h // 4, w // 5  # object size
    frames = []
    for i in range(n):
        f = base.copy()
        y1, x1 = h // 8 + (i % (h // 2)), w // 8 + (2 * i) % (w // 2)
        f[y1: y1 + oh, x1: x1 + ow] = (220, 60, 60)
        y2, x2 = h // 2, max(0, w - w // 8 - ow - (2 * i) % (w // 2))
        f[y2: y2 + oh, x2: x2 + ow] = (60, 200, 90)
        frames.append(f)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 8: h // 8 + oh, w // 8: w // 8 + ow] = 1
    mask[h // 2: h // 2 + oh, w - w // 8 - ow: w - w // 8] = 2
    return frames, mask


def jpeg_bytes(arr: np.ndarray) -> bytes:
    """A frame as the JPEG file a camera client would send."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """A greyscale PNG label map (grey level = object id, as docs/API.md allows)."""
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- figures
def summarise(latencies_s: list[float], frames: int, wall_s: float) -> dict[str, float]:
    """frames/s over the wall time plus p50/p95 latency in ms (one number per frame in `latencies_s`)."""
    lat = np.asarray(latencies_s, dtype=float) * 1000
    return {"frames": frames, "wall_s": round(wall_s, 3), "fps": round(frames / wall_s, 3) if wall_s > 0 else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else 0.0,
            "p95_ms": round(float(np.percentile(lat, 95)), 2) if lat.size else 0.0}


def command_calls(commandstats: dict[str, Any]) -> dict[str, int]:
    """Calls per command from redis-py's parsed `INFO commandstats`; INFO itself is left out because the
    bench sends it (once before and once after a run)."""
    out = {}
    for key, stat in commandstats.items():
        name = key.removeprefix("cmdstat_")
        if name != "info" and isinstance(stat, dict):
            out[name] = int(stat.get("calls", 0))
    return out


def commands_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two snapshots, largest first, zeros dropped."""
    diff = {k: v - before.get(k, 0) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in diff.items() if v > 0), key=lambda kv: -kv[1]))


def p50_p95(name: str, values: Any) -> dict[str, float]:
    """{"p50_<name>": ..., "p95_<name>": ...} of `values` (ms), rounded."""
    return {f"p{q}_{name}": round(float(np.percentile(values, q)), 2) for q in (50, 95)}


def median_pair(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pair with the median ratio (the upper one of an even count): a real pair, not an average."""
    return sorted(pairs, key=lambda p: p["ratio"])[len(pairs) // 2]


def redis_per_frame(before: dict[str, int], after: dict[str, int], frames: int) -> dict[str, Any]:
    """Redis commands between two snapshots: per frame, and by command."""
    cmds = commands_diff(before, after)
    return {"redis_commands_per_frame": round(sum(cmds.values()) / frames, 2), "redis_commands": cmds}


# ------------------------------------------------------------------------------------ the processes
def free_port() -> int:
    """A free TCP port on loopback (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """The `lwl` processes of one configuration: started, waited for, always stopped (see `stop`)."""

    kind: str  # "serve" or "api_worker"
    env: dict[str, str]
    logdir: Path
    threads: int
    redis_url: str = ""
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)  # the worker's /metrics (api + worker)
    procs: list[tuple[str, subprocess.Popen, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where the worker's metrics are: the serve process's own, or the worker's metrics port."""
        return f"{self.url}/metrics" if self.kind == "serve" else f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _start(self, role: str, extra: dict[str, str]) -> None:
        log = open(self.logdir / f"{self.kind}-{role}.log", "ab")  # noqa: SIM115 - closed in stop()
        p = subprocess.Popen([sys.executable, "-m", "service.cli", role], cwd=ROOT, env={**self.env, **extra},
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((role, p, log))

    def start(self) -> None:
        """Model processes run with the service's default thread count, as a user who sets nothing gets it,
        unless the bench was given --threads; the api gets one thread (it runs no model)."""
        model_env = {"LWL_TORCH_THREADS": str(self.threads), "OMP_NUM_THREADS": str(self.threads)} if self.threads \
            else {}
        base = {"LWL_HOST": "127.0.0.1", "LWL_PORT": str(self.port)}
        if self.kind == "serve":
            self._start("serve", {**base, **model_env, "LWL_REDIS_URL": ""})
        else:
            redis = {"LWL_REDIS_URL": self.redis_url}
            self._start("worker", {**redis, **model_env, "LWL_WORKER_METRICS_PORT": str(self.metrics_port)})
            self._start("api", {**base, **redis, "OMP_NUM_THREADS": "1", "LWL_TORCH_THREADS": "1"})

    def wait_ready(self, timeout: float = 300) -> dict[str, Any]:
        """Poll /readyz until a worker is live; the answer of /v1/info (model name, crop) once ready."""
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for role, p, _ in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"lwl {role} exited with {p.returncode}:\n{self.log_tail(role)}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200 and r.json().get("workers", 0) >= 1:
                    return httpx.get(f"{self.url}/v1/info", timeout=5).json()
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.kind} not ready after {timeout:.0f} s:\n"
                           + "\n".join(self.log_tail(r) for r, _, _ in self.procs))

    def log_tail(self, role: str, chars: int = 3000) -> str:
        path = self.logdir / f"{self.kind}-{role}.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def stop(self) -> None:
        """SIGTERM (a worker drains, here with no session left), then SIGKILL after 30 s."""
        for _, p, _ in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p, log in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            log.close()
        self.procs.clear()


# ------------------------------------------------------------------------------------------ a client
@dataclass
class Stream:
    """One session's stream: per-frame send/receive clock times."""

    sid: str
    token: str
    sent: list[float] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    compute_ms: list[float] = field(default_factory=list)  # the worker's model time of each answer

    @property
    def latencies(self) -> list[float]:
        return [r - s for s, r in zip(self.sent, self.received, strict=True)]


async def create_session(http: Any, first: bytes, mask: bytes) -> Stream:
    """POST /v1/sessions with the first frame and its label map (the worker steps the first frame here)."""
    r = await http.post("/v1/sessions", files={"image": ("00000.jpg", first, "image/jpeg"),
                                               "mask": ("00000.png", mask, "image/png")})
    if r.status_code != 201:
        raise RuntimeError(f"POST /v1/sessions: {r.status_code} {r.text[:300]}")
    body = r.json()
    return Stream(body["session_id"], body["token"])


async def delete_session(http: Any, s: Stream) -> None:
    r = await http.delete(f"/v1/sessions/{s.sid}", headers={"Authorization": f"Bearer {s.token}"})
    if r.status_code not in (204, 404):
        raise RuntimeError(f"DELETE /v1/sessions/{s.sid}: {r.status_code} {r.text[:300]}")


@contextlib.asynccontextmanager
async def open_stream(ws_base: str, s: Stream, max_inflight: int | None) -> AsyncIterator[tuple[Any, int]]:
    """The session's WebSocket (mode=all) after its handshake, with the server's in-flight limit; closed
    the documented way (a close message, which the server answers with close code 1000)."""
    from websockets.asyncio.client import connect

    q = f"?mode=all&max_inflight={max_inflight}" if max_inflight else "?mode=all"
    async with connect(f"{ws_base}/v1/sessions/{s.sid}/stream{q}", max_size=2**26) as ws:
        await ws.send(json.dumps({"type": "auth", "token": s.token}))
        hello = json.loads(await ws.recv())
        if hello.get("type") != "ready":
            raise RuntimeError(f"stream {s.sid}: expected ready, got {hello}")
        yield ws, int(hello["max_inflight"])
        await ws.send(json.dumps({"type": "close"}))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), 30)


def beyond_compute_ms(streams: list[Stream]) -> list[float]:
    """Each answer's latency minus the model time the worker reported with it, ms: what the service
    adds around its model step."""
    return [1000 * lat - c for s in streams for lat, c in zip(s.latencies, s.compute_ms, strict=True)]


def result_of(s: Stream, raw: str | bytes) -> None:
    """Record one answer of the stream (its time and the worker's compute_ms); anything else fails."""
    msg = json.loads(raw)
    if msg.get("type") != "result":
        raise RuntimeError(f"stream {s.sid}: {msg}")
    s.received.append(time.perf_counter())
    s.compute_ms.append(float(msg.get("compute_ms", 0.0)))


async def stream_frames(ws_base: str, s: Stream, frames: list[bytes], max_inflight: int | None,
                        ready: asyncio.Event | None, go: asyncio.Event | None) -> None:
    """Stream `frames` as binary messages, never more than the server's `max_inflight` outstanding, so
    each send time is when the server takes the frame. With `ready`/`go` the stream waits after the
    handshake until every stream of the run is connected."""
    async with open_stream(ws_base, s, max_inflight) as (ws, limit):
        window = asyncio.Semaphore(limit)
        if ready is not None and go is not None:
            ready.set()
            await go.wait()

        async def send() -> None:
            for data in frames:
                await window.acquire()
                s.sent.append(time.perf_counter())
                await ws.send(data)

        async def receive() -> None:
            for _ in frames:
                result_of(s, await ws.recv())
                window.release()

        await asyncio.gather(send(), receive())


async def run_paired(svc: Service, first: bytes, mask: bytes, frames: list[bytes], local: InProcess) -> dict[str, Any]:
    """One session at max_inflight=1, each frame stepped in this process just before it is sent: the
    service's latency and the in-process step of the same frame, taken seconds apart, so a shared
    machine's drift hits both alike (an in-process run minutes earlier differed by tens of ms)."""
    import httpx

    tracker = local.tracker()
    steps: list[float] = []
    async with httpx.AsyncClient(base_url=svc.url, timeout=300) as http:
        s = await create_session(http, first, mask)
        try:
            async with open_stream(svc.url.replace("http://", "ws://"), s, 1) as (ws, _):
                before = redis_snapshot(svc.redis_url) if svc.redis_url else {}
                for k, data in enumerate(frames):
                    steps.append(local.step(tracker, k))
                    s.sent.append(time.perf_counter())
                    await ws.send(data)
                    result_of(s, await ws.recv())
                after = redis_snapshot(svc.redis_url) if svc.redis_url else {}
        finally:
            await delete_session(http, s)
    out: dict[str, Any] = {"sessions": 1, **summarise(s.latencies, len(frames), sum(s.latencies))}
    if after:
        out.update(redis_per_frame(before, after, len(frames)))
    out["step_p50_ms"] = round(float(np.median(steps)) * 1000, 2)
    # the worker's model time against the same frame stepped here: both with default threads unless the
    # bench was given --threads, so a service that steps on fewer threads than the library shows here
    out["compute_p50_ms"] = round(float(np.median(s.compute_ms)), 2)
    out["compute_vs_step"] = round(float(np.median(np.asarray(s.compute_ms) / (1000 * np.asarray(steps)))), 3)
    out.update(p50_p95("over_step_ms", 1000 * (np.asarray(s.latencies) - np.asarray(steps))))
    out.update(p50_p95("beyond_compute_ms", beyond_compute_ms([s])))
    return out


def lane_busy_seconds(metrics_url: str) -> dict[str, float]:
    """The worker's lwl_lane_busy_seconds_total per lane (from its Prometheus text); none when the
    metrics cannot be read (the run goes on without the figure)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(metrics_url, timeout=10).text
    except httpx.HTTPError:
        return {}
    return {sample.labels["lane"]: sample.value for family in text_string_to_metric_families(text)
            if family.name == "lwl_lane_busy_seconds" for sample in family.samples
            if sample.name == "lwl_lane_busy_seconds_total"}


def redis_snapshot(redis_url: str) -> dict[str, int]:
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        return command_calls(r.info("commandstats"))
    finally:
        r.close()


async def run_sessions(svc: Service, n: int, first: bytes, mask: bytes, frames: list[bytes],
                       max_inflight: int | None = None, sequential: bool = False) -> dict[str, Any]:
    """`n` sessions of the same clip: created first, then streamed all at once (one wall clock from the
    moment all are connected to the last result) or one after another (the sum of their stream times)."""
    import httpx

    ws_base = svc.url.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=svc.url, timeout=300) as http:
        streams = [await create_session(http, first, mask) for _ in range(n)]
        try:
            before: dict[str, int] = {}
            if sequential:
                wall = 0.0
                for s in streams:
                    t0 = time.perf_counter()
                    await stream_frames(ws_base, s, frames, max_inflight, None, None)
                    wall += s.received[-1] - t0
            else:
                readies = [asyncio.Event() for _ in streams]
                go = asyncio.Event()
                tasks = [asyncio.create_task(stream_frames(ws_base, s, frames, max_inflight, e, go))
                         for s, e in zip(streams, readies, strict=True)]
                waiting = asyncio.gather(*(e.wait() for e in readies))
                done, _ = await asyncio.wait({asyncio.ensure_future(waiting), *tasks},
                                             return_when=asyncio.FIRST_COMPLETED)
                for t in tasks:  # a stream that failed its handshake ends the run now, not at a timeout
                    if t in done and t.exception():
                        raise t.exception()  # type: ignore[misc]
                if svc.redis_url:
                    before = redis_snapshot(svc.redis_url)
                busy0 = lane_busy_seconds(svc.metrics_url)
                t0 = time.perf_counter()
                go.set()
                await asyncio.gather(*tasks)
                wall = max(s.received[-1] for s in streams) - t0
                busy1 = lane_busy_seconds(svc.metrics_url)
            after = redis_snapshot(svc.redis_url) if svc.redis_url and not sequential else {}
        finally:
            for s in streams:
                await delete_session(http, s)
    out: dict[str, Any] = {"sessions": n, **summarise([x for s in streams for x in s.latencies],
                                                      n * len(frames), wall)}
    if not sequential and busy1:  # the share of the run each lane spent stepping, on average
        out["lanes"] = len(busy1)
        out["lanes_busy"] = round(sum(busy1[k] - busy0.get(k, 0.0) for k in busy1) / (len(busy1) * wall), 3)
    out.update(p50_p95("beyond_compute_ms", beyond_compute_ms(streams)))
    if after:
        out.update(redis_per_frame(before, after, out["frames"]))
    return out


def bench_service(svc: Service, args: argparse.Namespace, first: bytes, mask: bytes, clip: list[bytes],
                  local: InProcess) -> dict[str, Any]:
    """Every run of one configuration: warm-up, max_inflight=1 paired with in-process steps (the
    overhead, on the first --paired-frames of the clip), each N and the ratio (the first --frames)."""
    res: dict[str, Any] = {}
    frames = clip[: args.frames]
    say(f"{svc.kind}: warm-up (1 session, {min(3, len(frames))} frames)")
    asyncio.run(run_sessions(svc, 1, first, mask, frames[:3]))
    one = asyncio.run(run_paired(svc, first, mask, clip[: args.paired_frames], local))
    res["inflight1"] = one
    res["overhead_ms"] = one["p50_over_step_ms"]
    res["compute_vs_in_process"] = one["compute_vs_step"]
    # the same frame's latency minus the model time the worker reports with it: what the service adds
    # around its model step (the overhead above also counts a slower step inside the service)
    res["overhead_vs_worker_compute_ms"] = {"p50": one["p50_beyond_compute_ms"], "p95": one["p95_beyond_compute_ms"]}
    line = (f"{svc.kind}: 1 session, max_inflight=1: p50 {one['p50_ms']:.1f} ms against {one['step_p50_ms']:.1f} ms "
            f"in-process, frame by frame -> overhead p50 {res['overhead_ms']:.1f} ms (p95 "
            f"{one['p95_over_step_ms']:.1f}); {one['p50_beyond_compute_ms']:.1f} ms (p95 "
            f"{one['p95_beyond_compute_ms']:.1f}) over the worker's own compute; the worker's compute_ms p50 "
            f"{one['compute_p50_ms']:.1f} ms, {one['compute_vs_step']:.2f}x the in-process step of the same frame")
    if "redis_commands_per_frame" in one:
        res["redis_commands_per_frame"] = one["redis_commands_per_frame"]
        line += f", {one['redis_commands_per_frame']:.1f} Redis commands/frame"
    say(line)
    res["runs"] = []
    for n in args.sessions:
        r = asyncio.run(run_sessions(svc, n, first, mask, frames))
        res["runs"].append(r)
        extra = f", {r['redis_commands_per_frame']:.1f} Redis cmd/frame" if "redis_commands_per_frame" in r else ""
        if "lanes_busy" in r:
            extra += f", {r['lanes']} lanes busy {100 * r['lanes_busy']:.0f}% of the run"
        say(f"{svc.kind}: {n:2d} sessions at once: {r['fps']:.2f} frames/s, p50 {r['p50_ms']:.0f} ms, "
            f"p95 {r['p95_ms']:.0f} ms{extra}")
    k = args.ratio_sessions
    pairs = []  # (at once, one after another), run back to back: a shared machine's drift hits both alike
    for _ in range(args.ratio_repeats):
        at_once = asyncio.run(run_sessions(svc, k, first, mask, frames))
        seq = asyncio.run(run_sessions(svc, k, first, mask, frames, sequential=True))
        pairs.append({"concurrent_fps": at_once["fps"], "sequential_fps": seq["fps"],
                      "ratio": round(at_once["fps"] / seq["fps"], 3), "lanes_busy": at_once.get("lanes_busy")})
    mid = median_pair(pairs)
    res["concurrent_vs_sequential"] = {"sessions": k, **mid, "pairs": pairs}
    say(f"{svc.kind}: {k} sessions at once vs one after another, {len(pairs)} pairs: "
        + ", ".join(f"{p['concurrent_fps']:.2f} vs {p['sequential_fps']:.2f} frames/s ({p['ratio']:.2f}x)"
                    for p in pairs) + f"; median {mid['ratio']:.2f}x")
    return res


# -------------------------------------------------------------------------------------- in-process
@dataclass
class InProcess:
    """The model in this process, with the frames the worker gets (decoded from the same JPEGs): the
    model's own cost, with no service. Loaded once for every in-process figure."""

    model: Any
    first: np.ndarray
    mask: np.ndarray
    frames: list[np.ndarray]  # the paired run's (the longest); the other runs step the first `run_frames`
    threads: int
    run_frames: int = 0

    def tracker(self) -> Any:
        """A tracker that has taken the first frame and its mask."""
        tr = self.model.new_tracker()
        tr.step(self.first, mask=self.mask)
        return tr

    def step(self, tracker: Any, k: int) -> float:
        """Step frame k; its seconds."""
        t = time.perf_counter()
        tracker.step(self.frames[k])
        return time.perf_counter() - t


def load_in_process(weights: str | None, device: str, threads: int, first: np.ndarray, mask: np.ndarray,
                    frames: list[np.ndarray], run_frames: int = 0) -> InProcess:
    """Load the model on `threads` torch threads and warm it up (the service's warm-up does the same)."""
    import torch

    from model.api import load_model

    local = InProcess(load_model(weights, device, threads=threads), first, mask, frames, torch.get_num_threads(),
                      run_frames or len(frames))
    warm = local.tracker()
    for k in range(min(3, len(frames))):
        local.step(warm, k)
    return local


def bench_in_process(local: InProcess, sessions: list[int]) -> dict[str, Any]:
    """The same frames stepped by N trackers, one frame of each tracker in turn. Latency here is the
    step time of one frame."""
    runs: list[dict[str, Any]] = []
    all_steps: list[float] = []
    for n in sessions:
        trackers = [local.tracker() for _ in range(n)]
        t0 = time.perf_counter()
        times = [local.step(tr, k) for k in range(local.run_frames) for tr in trackers]
        r = {"sessions": n, **summarise(times, n * local.run_frames, time.perf_counter() - t0)}
        all_steps += times
        runs.append(r)
        say(f"in_process: {n:2d} trackers: {r['fps']:.2f} frames/s, step p50 {r['p50_ms']:.0f} ms, "
            f"p95 {r['p95_ms']:.0f} ms")
        del trackers
    return {"median_step_ms": round(float(np.median(all_steps)) * 1000, 2), "runs": runs,
            "model": local.model.name, "crop": "x".join(map(str, local.model.default_crop_size)),
            "device": str(local.model.device), "threads": local.threads}


def lanes_vs_sequential(local: InProcess, k: int, repeats: int) -> dict[str, Any] | None:
    """What lanes gain on this machine with no service at all: `k` trackers on one lane per thread
    (1 thread each, as the worker's CPU lanes), against the same trackers one after another on every
    thread. Pairs run back to back; the median pair is what the service's "at once vs one after
    another" ratio is read against. None where the worker has no lanes (one thread, a GPU)."""
    from concurrent.futures import ThreadPoolExecutor

    from model.threads import set_cpu_threads

    lanes = local.threads
    if lanes < 2 or not str(local.model.device).startswith("cpu"):
        return None

    def whole(tracker: Any) -> None:
        for i in range(local.run_frames):
            local.step(tracker, i)

    def fps(run: Callable[[list[Any]], object]) -> float:
        """Frames/s of `run` over k fresh trackers."""
        trackers = [local.tracker() for _ in range(k)]
        t0 = time.perf_counter()
        run(trackers)
        return k * local.run_frames / (time.perf_counter() - t0)

    pairs = []
    with ThreadPoolExecutor(lanes, initializer=set_cpu_threads, initargs=(1,)) as pool:
        for _ in range(repeats):
            lanes_fps = fps(lambda trs: list(pool.map(whole, trs)))
            seq_fps = fps(lambda trs: [whole(tr) for tr in trs])
            pairs.append({"lanes_fps": round(lanes_fps, 3), "sequential_fps": round(seq_fps, 3),
                          "ratio": round(lanes_fps / seq_fps, 3)})
    mid = median_pair(pairs)
    say(f"in_process: {k} trackers on {lanes} lanes of 1 thread vs one after another on {local.threads} threads, "
        f"{len(pairs)} pairs: " + ", ".join(f"{p['ratio']:.2f}x" for p in pairs) + f"; median {mid['ratio']:.2f}x")
    return {"sessions": k, "lanes": lanes, **mid, "pairs": pairs}


# -------------------------------------------------------------------------------------------- output
def plot(results: dict[str, Any], path: Path) -> None:
    """frames/s and p50 latency per number of sessions, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = results["meta"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, colour in zip(CONFIGS, ("#888888", "#4a7fb5", "#d9822b"), strict=True):
        runs = results.get(name, {}).get("runs", [])
        if not runs:
            continue
        n = [r["sessions"] for r in runs]
        a1.plot(n, [r["fps"] for r in runs], "o-", color=colour, label=LABELS[name])
        a2.plot(n, [r["p50_ms"] for r in runs], "o-", color=colour, label=LABELS[name])
    for ax, title in ((a1, "frames/s, all sessions together"), (a2, "p50 latency, ms (in-process: step time)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(meta["sessions"], [str(n) for n in meta["sessions"]])
        ax.set_xlabel("concurrent sessions")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    a2.set_yscale("log")
    a1.set_ylim(bottom=0)
    a1.legend(fontsize=8)
    fig.suptitle(f"{meta['model']} ({meta['crop']}), {meta['device']}, {meta['threads']} threads, "
                 f"{meta['objects']} objects, {meta['frame']}, {meta['frames_per_session']} frames/session",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_sessions(text: str) -> list[int]:
    """"1,4,8,16" -> [1, 4, 8, 16] (sorted, positive, no repeats)."""
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sessions wants numbers like 1,4,8: {text!r}") from None
    if not out or out[0] < 1:
        raise argparse.ArgumentTypeError(f"--sessions wants positive numbers: {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    from model.threads import available_cpus

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=parse_sessions, default=[1, 4, 8, 16], help="concurrent sessions, e.g. 1,4")
    ap.add_argument("--frames", type=int, default=12, help="frames each session streams after the first one")
    ap.add_argument("--paired-frames", type=int, default=36, help="frames of the max_inflight=1 run, each "
                    "stepped in-process just before it is sent (the overhead; per-frame noise needs many)")
    ap.add_argument("--ratio-sessions", type=int, default=4, help="sessions of the 'at once vs one after "
                    "another' ratio (issue 13's target is set for 4)")
    ap.add_argument("--ratio-repeats", type=int, default=3, help="pairs of runs (at once, then one after another) "
                    "the ratio is measured on; the median pair is reported, every pair is kept")
    ap.add_argument("--weights", help="weights file (default: the bundled model)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (model.testing), for a smoke run")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the worker and of the in-process "
                    "run (default: not set, so the service and the library choose, as for a user)")
    ap.add_argument("--redis-url", default=os.environ.get("LWL_REDIS_URL") or "redis://127.0.0.1:6379/0")
    ap.add_argument("--no-redis", action="store_true", help="skip lwl api + lwl worker + Redis")
    ap.add_argument("--out", default="bench/service-results.json")
    args = ap.parse_args(argv)
    if min(args.frames, args.paired_frames, args.ratio_sessions, args.ratio_repeats) < 1:
        ap.error("--frames, --paired-frames, --ratio-sessions and --ratio-repeats must be at least 1")
    if not args.no_redis and not _redis_up(args.redis_url):
        print(f"bench.service: no Redis answers at {args.redis_url} (start one, e.g. bash .ci/ensure-redis.sh, "
              "or pass --redis-url, or --no-redis to skip lwl api + worker)", file=sys.stderr)
        return 2
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    else:  # what a user who sets nothing gets: no thread setting reaches the service or the library
        for name in ("OMP_NUM_THREADS", "LWL_TORCH_THREADS", "MKL_NUM_THREADS"):
            os.environ.pop(name, None)
    # SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C, so the `finally`s stop the lwl processes
    signal.signal(signal.SIGTERM, _terminate)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="lwl-bench-service-") as tmp_dir:
        tmp = Path(tmp_dir)
        weights = args.weights
        if args.tiny:
            from model.testing import tiny_weights

            weights = str(tiny_weights(tmp / "tiny.safetensors"))
        from model.api import resolve_device

        device = str(resolve_device(args.device))
        arrays, mask = make_clip(max(args.frames, args.paired_frames) + 1)
        jpegs = [jpeg_bytes(a) for a in arrays]
        # the in-process run steps what the worker decodes, so both see the same pixels
        decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]
        first, png = jpegs[0], mask_png(mask)
        load, git_before = os.getloadavg(), _git_state()
        say(f"{len(args.sessions)} session counts {args.sessions}, {args.frames} frames each, device {device}, "
            f"threads {args.threads or 'not set (the defaults)'}, load average {load[0]:.2f}")

        results: dict[str, Any] = {}
        local = load_in_process(weights, device, args.threads, decoded[0], mask, decoded[1:], args.frames)
        results["in_process"] = bench_in_process(local, args.sessions)
        results["in_process"]["lanes_vs_sequential"] = lanes_vs_sequential(local, args.ratio_sessions,
                                                                           args.ratio_repeats)
        model_name = "tiny (random weights)" if args.tiny else results["in_process"]["model"]
        base_env = {**os.environ, "LWL_WEIGHTS": weights or "", "LWL_DEVICE": device, "LWL_CROP_SIZE": "",
                    "LWL_WORKER_METRICS_PORT": "0", "LWL_RESULTS_DIR": str(tmp / "results"),
                    "LWL_MAX_SESSIONS_PER_WORKER": str(2 * max(*args.sessions, args.ratio_sessions)),
                    "LWL_LOG_JSON": "true"}
        redis_note = ""
        kinds = ["serve"] + ([] if args.no_redis else ["api_worker"])
        for kind in kinds:
            prefix = f"lwlbench-{uuid.uuid4().hex[:10]}"
            svc = Service(kind, {**base_env, "LWL_KEY_PREFIX": prefix}, tmp, args.threads,
                          redis_url=args.redis_url if kind == "api_worker" else "")
            if kind == "api_worker":
                redis_note = _redis_check(args.redis_url)
            where = f"Redis {args.redis_url}, key prefix {prefix}" if svc.redis_url else "no Redis"
            say(f"{kind}: starting ({where})")
            try:
                svc.start()
                info = svc.wait_ready()
                res = bench_service(svc, args, first, png, jpegs[1:], local)
                res["model"] = info["models"][0]["name"] if info.get("models") else ""
                res["crop"] = info["models"][0].get("crop_size", "") if info.get("models") else ""
                res["threads"] = info["models"][0].get("threads") if info.get("models") else None
                if svc.redis_url:
                    res["key_prefix"] = prefix  # removed from Redis below; the test checks that
                results[kind] = res
            except Exception:
                for role, _, _ in svc.procs:
                    say(f"{kind}: log of lwl {role}:\n{svc.log_tail(role)}")
                raise
            finally:
                svc.stop()
                if svc.redis_url:
                    _redis_cleanup(svc.redis_url, prefix)

    ip = results["in_process"]
    results["meta"] = {
        "command": " ".join(["python -m bench.service", *(sys.argv[1:] if argv is None else argv)]),
        "model": model_name, "weights": "bundled" if not weights else ("tiny" if args.tiny else weights),
        "crop": ip["crop"], "device": ip["device"], "threads": ip["threads"],
        "threads_setting": args.threads or "default", "cores": available_cpus(),
        "torch": _torch_version(), "cpu": platform.processor() or platform.machine(),
        "frame": f"{FRAME_HW[1]}x{FRAME_HW[0]}", "objects": 2, "frames_per_session": args.frames,
        "paired_frames": args.paired_frames,
        "sessions": args.sessions, "ratio_sessions": args.ratio_sessions, "ratio_repeats": args.ratio_repeats,
        "mode": "all",
        "max_inflight": "server default (LWL_MAX_INFLIGHT_FRAMES)", "load_average_before": round(load[0], 2),
        "load_average_after": round(os.getloadavg()[0], 2), "redis_note": redis_note, "git": git_before,
    }
    if _git_state() != git_before:
        results["meta"]["git_after"] = _git_state()  # the code changed during the run: say so
        say(f"warning: the checkout changed during the run ({git_before} -> {results['meta']['git_after']})")
    results = {"meta": results["meta"], **{k: results[k] for k in CONFIGS if k in results}}
    out.write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix(".png"))
    say(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _git_state() -> str:
    """The commit measured, and whether the tree differed from it (figures of a dirty tree are suspect)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "model", "service"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes in model/ or service/' if dirty else ''}" if head else "unknown"


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _redis_up(url: str) -> bool:
    import redis

    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            return bool(r.ping())
        finally:
            r.close()
    except redis.RedisError:
        return False


def _redis_check(url: str) -> str:
    """Commandstats count every client of this Redis: say how many others were connected when we began."""
    import redis

    r = redis.Redis.from_url(url)
    try:
        others = int(r.info("clients")["connected_clients"]) - 1
    finally:
        r.close()
    if others:
        say(f"warning: {others} other client(s) on {url}: Redis commands per frame include theirs")
        return f"{others} other client(s) were connected at the start; their commands count too"
    return "no other client was connected at the start"


def _redis_cleanup(url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match=f"{prefix}:*"))
        if keys:
            r.delete(*keys)
    finally:
        r.close()


if __name__ == "__main__":
    sys.exit(main())

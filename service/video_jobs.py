"""Video jobs on a worker: take a job from the queue, run it through the model's video pipeline (as
`lwl segment`) on the job thread, write every result format (model.outputs) and keep the job record's
state and progress. The job-file rules (uploads, deletion, retention) are service.jobs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from model.api import Annotation, FrameSource, job_outputs, object_ids, read_label_png, segment_video
from model.errors import InputError
from service import jobs as jobfiles
from service import obs
from service.backends import STORE_ERRORS
from service.checks import check_count
from service.errors import ServiceError

if TYPE_CHECKING:
    from service.worker import Worker

log = logging.getLogger("lwl.worker")


class JobRunner:
    """A worker's job loop: one job at a time, on the worker's job thread."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.running = 0  # jobs running now (the heartbeat reports it; drain waits for it)

    async def loop(self) -> None:
        """Take jobs until the worker stops; none while draining. Nothing ends it: a failed take backs off."""
        while True:
            if self.w.draining:
                await asyncio.sleep(0.5)
                continue
            try:
                got = await self.w.b.take_job(self.w.id, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                obs.ERRORS.labels("broker").inc()
                await asyncio.sleep(0.5)
                continue
            if got is None:
                continue
            entry, jid = got
            self.running += 1
            try:
                await self._run_surviving(jid)
            finally:
                self.running -= 1
            with contextlib.suppress(*STORE_ERRORS):  # raises only when stopping: then it is taken over
                await self.w.health.retry("job", lambda e=entry: self.w.b.ack_job(e))

    async def _run_surviving(self, jid: str) -> None:
        """run(); the store failing under it (Redis restarting) runs it again once the store answers (a job
        writes .part files and renames them when done, so a rerun is safe)."""
        while True:
            try:
                return await self.run(jid)
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS:
                if self.w.stopping:
                    return
                await self.w.health.store_failed("job")
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001
                log.exception("job loop error", extra={"job_id": jid, "worker_id": self.w.id})
                return

    async def run(self, jid: str) -> None:
        """One job: running, then done (results kept) or failed (with a reason) or cancelled (deleted)."""
        b = self.w.b
        rec = await b.get_job(jid)
        if rec is None:
            return
        loop = asyncio.get_running_loop()
        d = Path(self.w.s.results_dir) / "jobs" / jid
        threads = await loop.run_in_executor(self.w.job_pool, torch.get_num_threads)  # the job thread's count
        if not await b.update_job(jid, {"state": "running", "worker": self.w.id, "threads": str(threads),
                                        "updated": _now()}):
            return  # deleted while queued
        log.info("job started", extra={"job_id": jid, "worker_id": self.w.id})
        try:
            n = await loop.run_in_executor(self.w.job_pool, self._body, jid, rec, self._progress(jid, rec, loop))
            if not await b.update_job(jid, {"state": "done", "progress": "1", "frames_done": str(n),
                                            "frames_total": str(n), "updated": _now()}):
                raise jobfiles.JobCancelled(jid)  # deleted during its last frames: keep no results
            await asyncio.to_thread(jobfiles.drop_inputs, d)
            log.info("job done", extra={"job_id": jid, "worker_id": self.w.id, "frames": n})
        except jobfiles.JobCancelled:
            await asyncio.to_thread(jobfiles.remove_job_files, d)
            log.info("job cancelled (deleted)", extra={"job_id": jid, "worker_id": self.w.id})
        except InputError as e:
            await b.update_job(jid, {"state": "failed", "error": jobfiles.scrub_paths(str(e), d), "updated": _now()})
            await asyncio.to_thread(jobfiles.drop_inputs, d)
            obs.ERRORS.labels("job_input").inc()
        except Exception as e:  # noqa: BLE001
            await self._failed(jid, d, e)

    async def _failed(self, jid: str, d: Path, e: Exception) -> None:
        """An internal error: the job fails with it, unless it was deleted meanwhile (then nothing stays)."""
        log.exception("job failed", extra={"job_id": jid, "worker_id": self.w.id})
        if await self.w.b.update_job(jid, {"state": "failed", "updated": _now(),
                                           "error": jobfiles.scrub_paths(f"internal error: {e!r}", d)}):
            await asyncio.to_thread(jobfiles.drop_inputs, d)
        else:  # deleted meanwhile (its files vanished under the job): leave nothing behind
            await asyncio.to_thread(jobfiles.remove_job_files, d)
        obs.ERRORS.labels("job_internal").inc()

    def _progress(self, jid: str, rec: dict[str, str], loop: asyncio.AbstractEventLoop) -> Callable[[int], None]:
        """Job thread, every few frames: progress into the record; a record that is gone (DELETE) cancels
        the job."""
        total = int(rec.get("frames_total") or 0)

        def progress(done: int) -> None:
            fields = {"frames_done": str(done), "updated": _now()}
            if total:
                fields["progress"] = f"{min(1.0, done / total):.4f}"
            if not asyncio.run_coroutine_threadsafe(self.w.b.update_job(jid, fields), loop).result():
                raise jobfiles.JobCancelled(jid)

        return progress

    def _body(self, jid: str, rec: dict[str, str], progress: Callable[[int], None]) -> int:
        """Job thread: the video through model.video.segment_video into every result format of
        model.outputs; returns the number of frames."""
        d = Path(self.w.s.results_dir) / "jobs" / jid
        init = int(rec.get("init_frame") or 0)
        mask = read_label_png((d / "mask.png").read_bytes()) if (d / "mask.png").exists() else None
        boxes = {int(k): tuple(v) for k, v in json.loads(rec.get("boxes") or "{}").items()} or None
        try:  # the same limits as a session, before any model work
            crop = self.w.ops.crop(rec.get("crop_size"))
            check_count(len(object_ids(mask, boxes)), self.w.s.max_objects, what="a job tracks")
            model = self.w.model_for(rec.get("model"))
        except ServiceError as e:
            raise InputError(e.detail) from None
        outputs = job_outputs(d, {"job_id": jid, "fps": rec.get("fps")})
        frames = segment_video(model, FrameSource(d / rec["input"]), {init: Annotation(mask, boxes)},
                               crop_size=crop, on_progress=_ticker(progress))
        return outputs.write_all(frames)


def _ticker(progress: Callable[[int], None]) -> Callable[[int], None]:
    """Per segmented frame: its time as the `model` stage and one frame counted; progress every 5 frames."""
    clock = [time.perf_counter()]

    def tick(done: int) -> None:
        now = time.perf_counter()
        obs.LATENCY.labels("model").observe(now - clock[0])
        clock[0] = now
        obs.FRAMES.inc()
        if done % 5 == 0:
            progress(done)

    return tick


def _now() -> str:
    return f"{time.time():.3f}"

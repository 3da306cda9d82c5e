"""Video-job files on `LWL_RESULTS_DIR/jobs/<id>/`: safe uploads, deletion, retention, crash leftovers.

- An upload is written as `input.video.part` and renamed to `input.video` only when complete, so a
  crash mid-upload leaves a `.part` file and no job record, never a record pointing at half a video.
- A job directory with no job record whose newest file is older than `STALE_UPLOAD_S` is a leftover
  (a crashed upload, or files of a deleted job that a worker was still writing): the sweeper removes it.
- Retention: `LWL_JOB_RETENTION_H` after a job finished or failed (its `updated` time), its record and
  its directory are removed; GET then answers 404 `unknown_job`. The input video goes as soon as the job
  is done or failed (the worker removes it); only the results wait for retention.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("lwl.jobs")

UPLOAD_NAME = "input.video"
PART_SUFFIX = ".part"
STALE_UPLOAD_S = 600.0  # a directory without a record and untouched this long is a crash leftover
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
FINISHED = ("done", "failed")
_PATH_RE = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[\w.~-]+[/\\])+[\w.~-]*")


def jobs_root(results_dir: str | Path) -> Path:
    """The jobs directory (created if missing)."""
    d = Path(results_dir) / "jobs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def scrub_paths(text: str, *paths: Path) -> str:
    """An error text without server paths: the given paths become "the upload", any other absolute path
    "<path>" (decoder messages quote the file they opened)."""
    for p in sorted((str(p) for p in paths), key=len, reverse=True):
        text = text.replace(p, "the upload")
    return _PATH_RE.sub("<path>", text)


def remove_job_files(d: Path) -> None:
    """Remove a job's directory and everything in it (no error if it is already gone)."""
    shutil.rmtree(d, ignore_errors=True)


def _newest_mtime(d: Path) -> float:
    times = [d.stat().st_mtime]
    for p in d.iterdir():
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            continue
    return max(times)


async def sweep(backend: Any, root: Path, retention_s: float, stale_s: float = STALE_UPLOAD_S) -> int:
    """One pass: expire finished jobs past retention (record and files), then remove job directories
    without a record that nobody has written to for `stale_s`. Returns how many jobs/directories went."""
    now, gone = time.time(), 0
    for jid in await backend.job_ids():
        rec = await backend.get_job(jid)
        if rec is None:
            continue
        if rec.get("state") in FINISHED and now - float(rec.get("updated") or rec.get("created") or now) > retention_s:
            await backend.delete_job(jid)
            await asyncio.to_thread(remove_job_files, root / jid)
            log.info("job expired", extra={"job_id": jid})
            gone += 1
    for d in await asyncio.to_thread(lambda: [p for p in root.iterdir() if p.is_dir()]):
        if not JOB_ID_RE.match(d.name) or await backend.get_job(d.name) is not None:
            continue
        try:
            idle = now - await asyncio.to_thread(_newest_mtime, d)
        except OSError:
            continue
        if idle > stale_s:
            await asyncio.to_thread(remove_job_files, d)
            log.info("job leftover removed", extra={"job_id": d.name, "idle_s": round(idle)})
            gone += 1
    return gone


def sweep_interval(retention_s: float) -> float:
    """How often the sweeper runs: a quarter of the retention, between 1 s and 10 minutes."""
    return min(600.0, max(1.0, retention_s / 4))


async def sweep_forever(backend: Any, root: Path, retention_s: float) -> None:
    """The api's sweeper task: a pass at start-up (crash leftovers), then one every `sweep_interval`.
    A failed pass (store down) is logged and retried at the next interval."""
    while True:
        try:
            await sweep(backend, root, retention_s)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the sweeper must outlive a store outage
            log.warning("job sweep failed; retrying later", exc_info=True)
        await asyncio.sleep(sweep_interval(retention_s))


class JobCancelled(Exception):
    """Raised in a worker's job thread when the job's record is gone (DELETE): stop, write nothing."""


def drop_inputs(d: Path) -> None:
    """A finished or failed job's input video and mask go at once: only the results wait for retention."""
    for name in (UPLOAD_NAME, "mask.png"):
        (d / name).unlink(missing_ok=True)

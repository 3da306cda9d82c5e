"""Video jobs: upload a whole video with the objects of one frame, follow the job, download its
results (the formats of model.outputs.RESULT_FORMATS), delete it. Workers run them (service.video_jobs);
the job-file rules are service.jobs."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response

from model.lite import RESULT_FORMATS
from service import jobs as jobfiles
from service.checks import boxes_header, check_crop, check_objects, parse_boxes, probe_upload, read_upload, token_digest
from service.deps import BoxesForm, Service, Svc, Token
from service.errors import ERRORS, ServiceError
from service.schemas import ErrorBody, JobCreated, JobStatus

router = APIRouter(tags=["jobs"])
log = logging.getLogger("lwl.api")
FORMAT_PATTERN = f"^({'|'.join(RESULT_FORMATS)})$"


async def _save_upload(video: UploadFile, part: Path, limit: int, limit_mb: float) -> None:
    """The upload, chunk by chunk, as `part`: 413 past LWL_MAX_UPLOAD_MB."""
    size = 0
    with open(part, "wb") as f:
        while chunk := await video.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise ServiceError(413, "upload_too_large", f"video is larger than LWL_MAX_UPLOAD_MB={limit_mb:g} MB")
            f.write(chunk)


async def _accept(svc: Service, request: Request, jid: str, d: Path, video: UploadFile, mask: UploadFile | None,
                  boxes: str | None, init_frame: int) -> tuple[int, float, dict[int, list[float]] | None]:
    """Save and check a job's inputs in its directory (renamed when complete, service.jobs), then claim
    the API key's slot; returns the frame count, the fps and the boxes."""
    s = svc.s
    part = d / (jobfiles.UPLOAD_NAME + jobfiles.PART_SUFFIX)
    await _save_upload(video, part, s.max_upload_bytes, s.max_upload_mb)
    part.rename(d / jobfiles.UPLOAD_NAME)
    mdata = await read_upload(mask, s.max_upload_bytes, "mask")
    bx = parse_boxes(boxes)
    count, hw, fps = await asyncio.to_thread(probe_upload, d / jobfiles.UPLOAD_NAME)
    if hw[0] * hw[1] > s.max_frame_pixels:
        raise ServiceError(413, "frame_too_large", f"video frames are {hw[1]}x{hw[0]}, more than "
                           f"LWL_MAX_FRAME_PIXELS={s.max_frame_pixels}")
    if init_frame >= count:
        raise ServiceError(400, "bad_init_frame", f"init_frame {init_frame} is beyond the video's {count} frames")
    check_objects(hw, mdata or None, bx, s.max_frame_pixels, s.max_objects)
    if mdata:
        (d / "mask.png").write_bytes(mdata)
    await svc.admit(request, "jobs", jid)
    return count, fps, bx


@router.post("/v1/jobs", status_code=202, response_model=JobCreated, responses=ERRORS)
async def create_job(
    request: Request,
    svc: Svc,
    video: Annotated[UploadFile, File(description="video file (any container/codec FFmpeg decodes)")],
    mask: Annotated[UploadFile | None, File(description="indexed PNG for init_frame")] = None,
    boxes: BoxesForm = None,
    init_frame: Annotated[int, Form(ge=0, description="frame the mask/boxes belong to")] = 0,
    crop_size: Annotated[str | None, Form()] = None,
    profile: Annotated[str | None, Form(description="bundled model profile: fast (the default) or accurate, "
                                        "or any served model's name")] = None,
) -> dict[str, Any]:
    """Submit a whole video: 202 and a job id; poll GET /v1/jobs/{id}."""
    await svc.check_job_room()
    check_crop(crop_size)
    await svc.place.check_served(profile)
    jid = uuid.uuid4().hex
    d = svc.jobs_dir() / jid
    d.mkdir(parents=True)
    try:
        count, fps, bx = await _accept(svc, request, jid, d, video, mask, boxes, init_frame)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    now, token = f"{time.time():.3f}", secrets.token_urlsafe(24)
    await svc.b.put_job(jid, {
        "id": jid, "state": "queued", "progress": "0", "frames_done": "0", "frames_total": str(count),
        "init_frame": str(init_frame), "boxes": json.dumps(boxes_header(bx)), "crop_size": crop_size or "",
        "model": profile or "",
        "input": jobfiles.UPLOAD_NAME, "fps": f"{fps:.4f}", "created": now, "updated": now,
        "filename": video.filename or "", "token_sha256": token_digest(token),
        "api_key": getattr(request.state, "api_key", None) or "",
    })
    await svc.b.submit_job(jid)
    log.info("job submitted", extra={"job_id": jid, "frames": count})
    return {"job_id": jid, "token": token, "state": "queued", "status_url": str(request.url_for("job_status", jid=jid))}


@router.get("/v1/jobs/{jid}", response_model=JobStatus, responses=ERRORS)
async def job_status(request: Request, jid: str, svc: Svc, token: Token) -> JobStatus:
    """Job state and progress (0..1); result URLs once done (add the job token to fetch them)."""
    rec = await svc.job(jid, token)
    results = {}
    if rec["state"] == "done":
        base = str(request.url_for("job_result", jid=jid))
        results = {f: f"{base}?format={f}" for f in RESULT_FORMATS}
    return JobStatus(job_id=jid, state=rec["state"], progress=float(rec.get("progress", 0)),
                     frames_done=int(rec.get("frames_done", 0)), frames_total=int(rec.get("frames_total", 0)),
                     error=rec.get("error") or None, created=float(rec["created"]),
                     updated=float(rec.get("updated", rec["created"])), worker_id=rec.get("worker"),
                     threads=int(rec["threads"]) if rec.get("threads") else None, results=results)


@router.get("/v1/jobs/{jid}/result", responses={**ERRORS, 409: {"model": ErrorBody}})
async def job_result(jid: str, svc: Svc, token: Token, format: str = Query(  # noqa: A002
        "png", pattern=FORMAT_PATTERN, description="; ".join(f"{f.name}: {f.description}"
                                                              for f in RESULT_FORMATS.values()))) -> FileResponse:
    """Download one result (GET /v1/info lists the formats: png = zip of DAVIS-palette PNGs, rle = COCO RLE
    JSON, mp4 = overlay video). The job token alone authenticates it (no API key needed), so `?token=`
    makes a plain download link."""
    rec = await svc.job(jid, token)
    if rec["state"] != "done":
        raise ServiceError(409, "job_not_done", f"job {jid} is {rec['state']}"
                           + (f": {rec['error']}" if rec.get("error") else ""))
    result = RESULT_FORMATS[format]
    path = svc.jobs_dir() / jid / result.file
    if not path.exists():
        raise ServiceError(404, "result_missing", f"result file {result.file} of job {jid} is missing on the volume")
    return FileResponse(path, media_type=result.media_type, filename=f"{jid}-{result.file}")


@router.delete("/v1/jobs/{jid}", status_code=204, responses=ERRORS)
async def delete_job(jid: str, svc: Svc, token: Token) -> Response:
    """Delete a job: its record, input and results. A running job is cancelled: its worker stops within
    a few frames (its next progress update finds the record gone) and writes no results."""
    rec = await svc.job(jid, token)
    await svc.b.delete_job(jid)
    if rec.get("api_key"):
        await svc.b.release_slot("jobs", rec["api_key"], jid)
    await asyncio.to_thread(jobfiles.remove_job_files, svc.jobs_dir() / jid)
    log.info("job deleted", extra={"job_id": jid, "state": rec.get("state")})
    return Response(status_code=204)

"""Pydantic response models: they make the OpenAPI schema at /docs say exactly what comes back."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a machine code and a sentence naming the problem."""

    code: str = Field(examples=["bad_image"])
    detail: str = Field(examples=["image cannot be decoded (uploaded data): cannot identify image file"])


class ObjectOut(BaseModel):
    """One object on one frame. mask: base64 1-bit PNG (format=png) or COCO RLE dict (format=rle)."""

    id: int
    box: list[float] | None = Field(None, description="[x, y, w, h] in pixels, null when not visible")
    score: float
    area: int
    mask: str | dict[str, Any] | None = None


class FrameResultOut(BaseModel):
    """Segmentation of one frame."""

    type: Literal["result"] = "result"
    session_id: str | None = None
    seq: int | None = Field(None, description="session-wide frame sequence number")
    frame_index: int
    size: list[int] = Field(description="[height, width]")
    format: Literal["png", "rle"]
    labels: str | None = Field(None, description="png: base64 DAVIS indexed PNG, all objects")
    objects: list[ObjectOut]
    compute_ms: float = Field(description="worker compute time for this frame (model forward)")
    threads: int | None = Field(None, description="torch CPU threads that stepped this frame (the worker's count, or a "
                         "lane's share when several sessions' frames were stepped side by side)")
    worker_id: str | None = None


class SessionCreated(BaseModel):
    """Answer to POST /v1/sessions."""

    session_id: str
    token: str = Field(description="session secret: Bearer header, X-Session-Token or ?token=")
    ws_url: str
    worker_id: str
    objects: list[ObjectOut]
    result: FrameResultOut


class SessionInfo(BaseModel):
    """Session metadata (what the store keeps)."""

    session_id: str
    state: str
    worker_id: str
    objects: list[int]
    frames: int
    created: float
    last_active: float
    ttl_s: float
    crop_size: str
    model: str


class JobCreated(BaseModel):
    """Answer to POST /v1/jobs (202)."""

    job_id: str
    token: str = Field(description="job secret for status, result and DELETE: Bearer header, "
                       "X-Session-Token or ?token=")
    state: str
    status_url: str


class JobStatus(BaseModel):
    """Video-job record."""

    job_id: str
    state: Literal["queued", "running", "done", "failed"]
    progress: float
    frames_done: int
    frames_total: int
    error: str | None = None
    created: float
    updated: float
    worker_id: str | None = None
    threads: int | None = Field(None, description="torch CPU threads the job runs with (once running)")
    results: dict[str, str] = Field(default_factory=dict, description="format -> download URL (when done)")


class WorkerInfo(BaseModel):
    """A live worker's last heartbeat."""

    id: str
    sessions: int
    max_sessions: int
    free: int
    memory_bytes: int
    device: str
    model: str
    draining: bool
    box_init: bool = Field(False, description="the model has a box encoder: boxes can start objects")
    crop_size: str = Field("", description="the model's default crop HxW")
    threads: int = Field(0, description="torch CPU threads of the worker's compute thread")


class ModelInfo(BaseModel):
    """A model that live workers serve, and what it can do."""

    name: str
    box_init: bool = Field(description="boxes can start objects (the model has a box encoder)")
    crop_size: str = Field(description="default network crop HxW")
    workers: int = Field(description="live workers serving it")
    free: int = Field(description="session slots free on those workers (shared by the models a worker serves)")
    default: bool = Field(False, description="the model a session or job gets when it names none (for the "
                          "bundled models: the fast profile)")
    threads: int = Field(0, description="torch CPU threads per worker (the largest among live workers)")


class Limits(BaseModel):
    """What one client may send (settings of this deployment)."""

    max_upload_bytes: int
    max_frame_pixels: int
    max_inflight_frames: int
    session_ttl_s: float


class ResultFormatInfo(BaseModel):
    """A result format of video jobs (model.outputs.RESULT_FORMATS): GET /v1/jobs/{id}/result?format=name."""

    name: str = Field(description="the `format` of the result download")
    file: str = Field(description="its file name (the download is named <job id>-<file>)")
    media_type: str
    label: str = Field(description="a short name for a link or a menu")
    description: str


class ServiceInfo(BaseModel):
    """What a client (the web page) needs before it starts: models, limits, colours."""

    version: str
    models: list[ModelInfo]
    limits: Limits
    palette: list[list[int]] = Field(description="256 RGB colours: object id -> colour (the DAVIS palette "
                                     "of every label PNG)")
    api_key_required: bool = Field(False, description="calls under /v1 need an X-API-Key header "
                                   "(LWL_API_KEYS is set)")
    result_formats: list[ResultFormatInfo] = Field(default_factory=list, description="what a done video job "
                                                   "offers for download, in this order")

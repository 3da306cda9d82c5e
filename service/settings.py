"""All service settings, read from `LWL_*` environment variables (one class, documented in docs/API.md)."""

from __future__ import annotations

import os
import socket
from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Environment-driven settings; names are a contract with the deployment files, do not rename."""

    model_config = SettingsConfigDict(env_prefix="LWL_", extra="ignore")

    redis_url: str = ""
    host: str = "0.0.0.0"
    port: int = 8000
    device: str = "auto"
    weights: str = ""
    crop_size: str = ""
    max_sessions_per_worker: int = Field(4, ge=1)
    session_ttl_s: float = Field(300, gt=0)
    max_upload_mb: float = Field(200, gt=0)
    max_frame_pixels: int = Field(8847360, gt=0)
    results_dir: str = "./results"
    cors_origins: str = ""
    worker_id: str = ""
    worker_metrics_port: int = 9100
    heartbeat_s: float = Field(2, gt=0)
    max_inflight_frames: int = Field(4, ge=1)
    drain_timeout_s: float = Field(60, ge=0)
    log_level: str = "info"
    log_json: bool = True
    public_url: str = ""
    # Additions beyond the agreed list (documented in docs/API.md).
    key_prefix: str = "lwl"
    request_timeout_s: float = Field(120, gt=0)
    snapshot_every: int = Field(8, ge=1)
    torch_threads: int = Field(0, ge=0)  # 0 = OMP_NUM_THREADS if set, else the cores the process may use
    exact: bool = False  # exact mode: the reference's operators in its order (model.api.load_model)
    max_batch: int = Field(8, ge=1)  # frames of different sessions a worker steps together at most
    cpu_lanes: int = Field(0, ge=0)  # CPU worker: lanes (1+ threads each) step queued frames; 0 = per thread
    web_ui: bool = True  # the web page at / (service/web/)
    web_frame_ancestors: str = "self"  # CSP frame-ancestors of the page: who may embed it (self, none, origins)
    max_objects: int = Field(32, ge=1, le=254)  # objects per session (and per video job)
    max_crop_pixels: int = Field(0, ge=0)  # crop H*W a client may ask for; 0 = 4x the model's default crop
    max_session_state_mb: float = Field(1024, gt=0)  # tracker memory of one session at a full few-shot memory
    worker_state_mb: float = Field(8192, gt=0)  # tracker memory of all sessions of one worker (admission)
    max_queued_jobs: int = Field(64, ge=1)  # queued + running video jobs of the deployment (503 queue_full)
    # Access control and job retention (docs/API.md "Access control", "Video jobs").
    api_keys: str = ""  # name:sha256:<hex> or name:<key>, comma/space separated; empty = no key needed
    max_sessions_per_key: int = Field(16, ge=0)  # live sessions one API key may hold (0 = no limit)
    max_jobs_per_key: int = Field(32, ge=0)  # queued + running jobs of one API key (0 = no limit)
    job_retention_h: float = Field(24, gt=0)  # hours a finished/failed job's record and files are kept

    @field_validator("api_keys")
    @classmethod
    def _hash_api_keys(cls, v: str) -> str:
        """Plain keys are hashed as the settings load, so the settings never hold one."""
        from service.access import normalize_api_keys

        return normalize_api_keys(v)

    @property
    def api_key_hashes(self) -> dict[str, str]:
        """{key name: sha256 hex} of LWL_API_KEYS (empty = keys off)."""
        from service.access import parse_api_keys

        return parse_api_keys(self.api_keys)

    @property
    def max_upload_bytes(self) -> int:
        """Upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_session_state_bytes(self) -> int:
        return int(self.max_session_state_mb * 2**20)

    @property
    def worker_state_bytes(self) -> int:
        return int(self.worker_state_mb * 2**20)

    @property
    def cors_list(self) -> list[str]:
        """CORS origins as a list (empty = CORS off)."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def resolved_worker_id(self) -> str:
        """Worker id: explicit, or hostname-pid so replicas never collide."""
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def crop_tuple(self) -> tuple[int, int] | None:
        """Parse LWL_CROP_SIZE "HxW"; None means the model's default."""
        return parse_crop(self.crop_size)


def parse_crop(text: str | None) -> tuple[int, int] | None:
    """Parse "240x432" into (240, 432) (model.lite.parse_size); "" or None -> None (the model's default).
    Raises ValueError with a readable message."""
    from model.lite import parse_size  # torch-free

    return parse_size(text) if text else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (cached: the environment is read once)."""
    return Settings()

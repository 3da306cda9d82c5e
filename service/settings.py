"""All service settings, read from `LWL_*` environment variables (one class, documented in docs/API.md)."""

from __future__ import annotations

import os
import socket
from functools import lru_cache

from pydantic import Field
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
    torch_threads: int = Field(0, ge=0)  # 0 = torch's choice, capped at the cores allowed
    max_batch: int = Field(8, ge=1)  # frames of different sessions a worker steps together at most
    web_ui: bool = True  # the web page at / (service/web/)
    web_frame_ancestors: str = "self"  # CSP frame-ancestors of the page: who may embed it (self, none, origins)

    @property
    def max_upload_bytes(self) -> int:
        """Upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

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
    """Parse "240x432" into (240, 432) (model.config.parse_size); "" or None -> None (the model's default).
    Raises ValueError with a readable message."""
    from model.config import parse_size  # torch-free

    return parse_size(text) if text else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (cached: the environment is read once)."""
    return Settings()

"""The `lwl` console script: service roles (api, worker, serve) plus the model's commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from service import __version__
from service.settings import Settings

log = logging.getLogger("lwl.cli")

_FLAGS = {  # flag -> env var; flags override the environment for this process
    "host": "LWL_HOST", "port": "LWL_PORT", "redis_url": "LWL_REDIS_URL", "weights": "LWL_WEIGHTS",
    "device": "LWL_DEVICE", "crop_size": "LWL_CROP_SIZE", "worker_id": "LWL_WORKER_ID",
    "metrics_port": "LWL_WORKER_METRICS_PORT", "results_dir": "LWL_RESULTS_DIR",
}


def _settings(args: argparse.Namespace) -> Settings:
    for flag, env in _FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            os.environ[env] = str(v)
    s = Settings()
    from service.obs import setup_logging

    setup_logging(s.log_level, s.log_json)
    return s


def _load_models(s: Settings, role: str) -> dict | None:
    """Load the worker's models before serving (LWL_WEIGHTS, or every bundled profile), so a bad
    LWL_WEIGHTS/LWL_DEVICE fails at once in one line."""
    from model.api import load_models
    from model.errors import InputError

    # One torch thread here: this thread only loads. The worker's compute thread sets its own count;
    # with an OpenMP pool left here as well, the process has more pool threads than cores, and OpenMP
    # then stops spinning between parallel regions: the compute thread's frames took 1.5x as long.
    try:
        dev = None if s.device in ("", "auto") else s.device
        return load_models(s.weights or None, dev, exact=s.exact, threads=1)
    except InputError as exc:
        print(f"lwl {role}: {exc}", file=sys.stderr)
        return None


def _uvicorn(app: object, s: Settings) -> None:
    import uvicorn

    uvicorn.run(app, host=s.host, port=s.port, log_config=None, log_level=s.log_level.lower(),
                # a frame of LWL_MAX_UPLOAD_MB fits as binary and as a base64 JSON envelope (4/3 + its fields)
                ws_max_size=s.max_upload_bytes * 4 // 3 + 65536,
                # keepalive pings still go out (proxies, NATs), but a late pong does not close the stream: in
                # mode=all the api stops reading a fast sender's socket (backpressure), so its pong waits behind
                # the frames it sent before; a dead stream is found by its session's TTL and by a newer stream
                ws_ping_interval=20.0, ws_ping_timeout=None, timeout_graceful_shutdown=5)


def cmd_api(args: argparse.Namespace) -> int:
    """Stateless api replica (needs Redis)."""
    s = _settings(args)
    if not s.redis_url:
        print("lwl api: LWL_REDIS_URL (or --redis-url) is required; use `lwl serve` without Redis",
              file=sys.stderr)
        return 2
    from service.api import create_app
    from service.backends import RedisBackend

    _uvicorn(create_app(s, RedisBackend(s.redis_url, s.key_prefix, name="lwl-api")), s)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker on one device (needs Redis); SIGTERM drains it."""
    s = _settings(args)
    if not s.redis_url:
        print("lwl worker: LWL_REDIS_URL (or --redis-url) is required", file=sys.stderr)
        return 2
    from service.backends import RedisBackend
    from service.worker import Worker
    from service.worker_http import serve_worker_http

    models = _load_models(s, "worker")
    if models is None:
        return 2

    async def main() -> None:
        w = Worker(s, RedisBackend(s.redis_url, s.key_prefix, name=f"lwl-worker-{s.resolved_worker_id}"),
                   models=models)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(w.drain()))
        if s.worker_metrics_port:
            try:
                serve_worker_http(w, s.worker_metrics_port)
            except OSError as exc:  # e.g. a second worker on the same host with the default port
                log.warning("worker metrics endpoint off: port %s: %s", s.worker_metrics_port, exc)
        await w.start()
        await w.stopped.wait()
        await w.b.close()

    asyncio.run(main())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """api + one in-process worker + in-process store: no Redis needed."""
    s = _settings(args)
    from service.api import create_app
    from service.backends import make_backend
    from service.worker import Worker

    models = _load_models(s, "serve")
    if models is None:
        return 2
    backend = make_backend(s.redis_url, s.key_prefix, name="lwl-serve")
    worker = Worker(s, backend, models=models, worker_id=s.worker_id or "embedded")
    _uvicorn(create_app(s, backend, worker), s)
    return 0


def _common(p: argparse.ArgumentParser, server: bool = True) -> None:
    p.add_argument("--redis-url", help="overrides LWL_REDIS_URL")
    p.add_argument("--results-dir", help="overrides LWL_RESULTS_DIR")
    if server:
        p.add_argument("--host", help="overrides LWL_HOST")
        p.add_argument("--port", type=int, help="overrides LWL_PORT")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lwl`."""
    from model.lite import register_cli

    parser = argparse.ArgumentParser(prog="lwl", description="LWL video object segmentation")
    parser.add_argument("--version", action="version", version=f"lwl-vos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("api", help="run a stateless api replica (FastAPI/uvicorn; needs Redis)")
    _common(p)
    p.set_defaults(func=cmd_api)
    p = sub.add_parser("worker", help="run a worker holding trackers on one device (needs Redis)")
    _common(p, server=False)
    for flag in ("--weights", "--device", "--crop-size", "--worker-id"):
        p.add_argument(flag)
    p.add_argument("--metrics-port", type=int, help="overrides LWL_WORKER_METRICS_PORT (0 = off)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("serve", help="api + one in-process worker, no Redis (the embedded default)")
    _common(p)
    for flag in ("--weights", "--device", "--crop-size"):
        p.add_argument(flag)
    p.set_defaults(func=cmd_serve)
    register_cli(sub)
    args = parser.parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

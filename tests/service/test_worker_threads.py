"""LWL_TORCH_THREADS reaches the threads that run the model: torch's CPU thread count is kept per calling
thread (an OpenMP pool each), so setting it where the model was loaded left the worker's compute thread
at OpenMP's default."""

from __future__ import annotations

import threading

import torch

from service.backends import MemoryBackend
from service.settings import Settings
from service.worker import Worker


def _fresh_thread_default() -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    t.start()
    t.join()
    return out[0]


def test_compute_and_job_threads_use_lwl_torch_threads() -> None:
    want = 3 if _fresh_thread_default() != 3 else 2  # differs from what a new thread gets by default
    w = Worker(Settings(torch_threads=want), MemoryBackend(), model=object(), worker_id="t")
    try:
        assert w.compute.submit(torch.get_num_threads).result(30) == want
        assert w.job_pool.submit(torch.get_num_threads).result(30) == want
    finally:
        w.compute.shutdown()
        w.job_pool.shutdown()

"""How many CPU threads torch should use: the cores this process may really run on.

torch sizes its thread pool from the host's core count. In a container limited to 2 CPUs on a
64-core host that means 64 threads time-sliced onto 2 cores, which runs several times slower than
2 threads. The limit lives in the cgroup CPU quota (what `docker run --cpus` and Kubernetes CPU
limits set) and in the CPU affinity mask, so both are read here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_cpus(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Cores this process can use: the affinity mask, capped by the cgroup quota (rounded up)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _quota_cpus(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def resolve_threads(requested: int = 0) -> int:
    """The torch thread count to use: `requested` when above 0, else OMP_NUM_THREADS when the user set
    it, else `available_cpus()`. Resolved once by whoever starts the work, then applied in each thread
    that computes: torch keeps the count per calling thread, so a count read from a thread that was
    set to 1 (a loader, a test harness) would carry that 1 into the compute thread."""
    if requested > 0:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cpus()


def set_cpu_threads(n: int = 0) -> int:
    """Set the calling thread's torch intra-op threads to `resolve_threads(n)`; returns the number."""
    import torch

    n = resolve_threads(n)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n

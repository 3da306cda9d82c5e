"""CPU thread count: the cgroup quota (docker --cpus, Kubernetes limits) caps the host's cores."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from model.threads import _quota_cpus, available_cpus, resolve_threads, set_cpu_threads

HOST = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, {"cpu.max": "150000 100000\n"})
    assert _quota_cpus(root) == 1.5
    assert available_cpus(root) == min(HOST, 2)  # 1.5 CPUs of time: two threads can use it


def test_cgroup_v1_quota_and_unlimited(tmp_path: Path) -> None:
    v1 = _cgroup(tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert _quota_cpus(v1) == 1.0 and available_cpus(v1) == 1
    unlimited_v1 = _cgroup(tmp_path / "u1", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    unlimited_v2 = _cgroup(tmp_path / "u2", {"cpu.max": "max 100000\n"})
    for root in (unlimited_v1, unlimited_v2, tmp_path / "missing"):
        assert _quota_cpus(root) is None
        assert available_cpus(root) == HOST


def test_set_cpu_threads_resolves_the_count_not_the_calling_threads(monkeypatch) -> None:  # noqa: ANN001
    """0 means the cores this process may use, whatever count the calling thread happens to have (a thread
    started after another was set to 1 inherits that 1); OMP_NUM_THREADS is an explicit choice and wins."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert set_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        assert resolve_threads(0) == available_cpus()
        assert set_cpu_threads(0) == available_cpus() == torch.get_num_threads()
        torch.set_num_threads(64)  # torch's default on a big host, whatever the container may use
        assert set_cpu_threads(0) == available_cpus() == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_cpu_threads(0) == 1 == torch.get_num_threads()
        assert set_cpu_threads(3) == 3 == torch.get_num_threads()  # an explicit count wins over both
    finally:
        torch.set_num_threads(before)

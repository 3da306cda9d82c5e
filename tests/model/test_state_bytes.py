"""Model.state_bytes, the bound a service admits sessions by: it must cover what a tracker really holds
once its few-shot memory is full, and not overstate it much (or admission would waste the budget)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from model.api import load_model
from model.testing import tiny_weights


def held_bytes(obj: object, seen: set[int] | None = None) -> int:
    """Bytes of every tensor and array reachable from a tracker (the network and its parameters aside)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(held_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(held_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        return sum(held_bytes(v, seen) for k, v in vars(obj).items() if k != "params")
    return 0


def test_state_bound_covers_a_full_memory(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = load_model(tiny_weights(tmp_path / "tiny.safetensors"), device="cpu")
    model.params = replace(model.params, sample_memory_size=4)
    rng = np.random.default_rng(0)
    frame = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    mask[20:50, 20:60] = 1
    mask[60:90, 70:120] = 2
    tracker = model.new_tracker()
    tracker.step(frame, mask=mask)
    for i in range(1, 12):  # more frames than memory slots: the memory is full
        tracker.step(np.roll(frame, 2 * i, axis=1))
    assert all(t.memory.num_stored == 4 for t in tracker.targets.values())
    held = held_bytes(tracker)
    bound = model.state_bytes((96, 128), 2, memory_size=4)
    assert held <= bound <= 1.05 * held, (held, bound)
    assert model.state_bytes((96, 128), 3, memory_size=4) > bound  # grows with objects
    assert model.state_bytes((960, 1280), 2, memory_size=4) > bound  # and with frame size

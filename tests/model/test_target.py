"""The parts of one tracked object: crop window, few-shot memory, learner, their states and the frame stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.api import load_model
from model.config import TrackerParams
from model.errors import InputError
from model.learner import apply_filter
from model.target import CropWindow, FewShotMemory, Target, decode, extract_features
from tests.model.test_tracker import H, W, first_mask, frame

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tiny_weights_path: Path):
    return load_model(tiny_weights_path, "cpu")


def tracked(model, frames: int = 4):
    """A tracker after `frames` frames with a correction on frame 1 (so every part holds some state)."""
    tr = model.new_tracker()
    tr.step(frame(0), mask=first_mask())
    for i in range(1, frames):
        tr.step(frame(i))
        if i == 1:
            fixed = np.zeros((H, W), np.uint8)
            fixed[21:51, 22:62] = 1
            tr.correct(fixed)
    return tr


def plain(value: object) -> bool:
    """Only tensors, numbers, None, strings and lists/dicts of them: what the weights-only unpickler reads."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return value is None or isinstance(value, (torch.Tensor, int, float, str))


def test_each_part_serialises_itself(model) -> None:
    t = tracked(model).targets[1]
    state = t.to_state()
    assert set(state) == {"object_id", "frame_num", "last_x", "last_scores", "window", "memory", "learner"}
    assert plain(state)
    copy = Target.from_state(state, model.net, model.params, (64, 112), CPU)
    for part in ("window", "memory", "learner"):
        a, b = getattr(t, part).to_state(), getattr(copy, part).to_state()
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), (part, k)
            else:
                assert a[k] == b[k], (part, k)


def test_restored_target_continues_identically(model) -> None:
    tr = tracked(model)
    t = tr.targets[1]
    copy = Target.from_state(t.to_state(), model.net, model.params, (64, 112), CPU)
    im = torch.from_numpy(frame(4).astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        a, b = t.track(im, tr._prob[1]), copy.track(im, tr._prob[1])
    assert torch.equal(a, b) and torch.equal(t.tau, copy.tau)


def test_stages_compose_to_track(model) -> None:
    """The stages a batched tracker will call one by one give exactly what `track` gives."""
    tr = tracked(model)
    t = tr.targets[2]
    staged = Target.from_state(t.to_state(), model.net, model.params, (64, 112), CPU)
    im = torch.from_numpy(frame(4).astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        want = t.track(im, tr._prob[2])
        staged.begin_frame(tr._prob[2])
        patch, coords = staged.window.crop(im)  # 1
        feats, x = extract_features(model.net, patch, CPU)  # 2
        enc = staged.learner.apply(x)  # 3
        logits = decode(model.net, enc, feats, x)  # 4
        got = staged.finish_frame(logits, coords, x, enc, (H, W))  # 5
    assert torch.equal(want, got)


def test_kept_scores_are_the_memory_samples_under_the_current_tau(model) -> None:
    """The learner starts each refinement from the scores the memory keeps (each sample's T_tau(x), carried
    from frame to frame instead of convolved again): they must be what convolving now gives."""
    tr = tracked(model)
    for t in tr.targets.values():
        kept = t.memory.kept_scores()
        assert kept is not None and kept.shape[0] == t.memory.num_stored > 2
        feat, _, _ = t.memory.stored()
        fresh = apply_filter(feat, t.tau)
        assert torch.allclose(kept, fresh, rtol=1e-4, atol=1e-4), (kept - fresh).abs().max()


def test_window_follows_the_mask_with_a_bounded_scale_change() -> None:
    params = TrackerParams()
    win = CropWindow((64, 112), 3, params)
    win.start((20.0, 10.0, 40.0, 30.0), (H, W))
    assert win.pos.tolist() == [24.5, 39.5] and win.target_sz.tolist() == [30.0, 40.0]
    scale = win.target_scale.clone()
    tiny = torch.zeros(1, 1, H, W)
    tiny[0, 0, 0:5, 0:5] = 1  # under min_mask_area: position and size are kept
    win.follow(tiny)
    assert win.pos.tolist() == [24.5, 39.5] and torch.allclose(win.target_scale, scale)
    big = torch.ones(1, 1, H, W)  # the whole frame: the scale may grow by 1.1 at most
    win.follow(big)
    assert torch.allclose(win.target_scale, scale * params.max_scale_change[1])
    assert win.pos.tolist() == pytest.approx([(H - 1) / 2, (W - 1) / 2])


def test_memory_keeps_corrections_and_refuses_too_many() -> None:
    mem = FewShotMemory(size=4, learning_rate=0.1, lower_init_weight=False, weight_floor=0.25)
    mem.start(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    fixed = mem.add_correction(torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    assert mem.protected == [0, fixed] and mem.floor_slots == [0, fixed]
    for _ in range(10):
        assert mem.add(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)) not in (0, fixed)
    assert mem.masks[fixed].item() == 1 and mem.num_stored == 4
    assert mem.has_room_for_correction()
    mem.add_correction(torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    assert not mem.has_room_for_correction()  # one replaceable slot left: the memory could not learn any more


def test_memory_state_must_match_its_size() -> None:
    mem = FewShotMemory(size=4, learning_rate=0.1, lower_init_weight=False, weight_floor=0.25)
    mem.start(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    other = FewShotMemory(size=8, learning_rate=0.1, lower_init_weight=False, weight_floor=0.25)
    with pytest.raises(InputError, match="memory of 4 samples"):
        other.load_state(mem.to_state(), CPU)


def test_too_many_corrections_is_a_user_error(model) -> None:
    tr = model.new_tracker(params=model.params.with_(sample_memory_size=3))
    tr.step(frame(0), mask=first_mask())
    tr.step(frame(1))
    fixed = first_mask()
    tr.correct(fixed)  # slots: init, correction, one replaceable
    with pytest.raises(InputError, match="object 1: too many corrections"):
        tr.correct(fixed)


def test_each_stored_mask_is_encoded_once(model, monkeypatch: pytest.MonkeyPatch) -> None:
    """E/W is fixed at inference: a mask is encoded when it is stored, not again at every update."""
    calls: list[int] = []
    encode = model.net.encode_labels
    monkeypatch.setattr(model.net, "encode_labels", lambda m: calls.append(m.shape[0]) or encode(m))
    tr = model.new_tracker((64, 112))
    tr.step(frame(0), mask=first_mask())
    for i in range(1, 8):
        tr.step(frame(i))
    assert calls and all(n == 1 for n in calls)
    assert len(calls) == sum(t.memory.num_stored for t in tr.targets.values())  # each stored mask once

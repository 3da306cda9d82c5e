"""Tracker behaviour on generated sequences: objects, late starts, corrections, export/import, memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.api import load_model
from model.config import TrackerParams
from model.errors import InputError
from model.target import FewShotMemory

H, W = 96, 128


def frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.random((H, W, 3)) * 80 + 40).astype(np.uint8)
    img[20 + i:50 + i, 20 + 2 * i:60 + 2 * i] = (220, 40, 40)
    img[55:85, 80 - i:115 - i] = (40, 200, 60)
    return img


def first_mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[20:50, 20:60] = 1
    m[55:85, 80:115] = 2
    return m


@pytest.fixture(scope="module")
def model(tiny_weights_path: Path):
    return load_model(tiny_weights_path, "cpu")


def test_multi_object_sequence(model) -> None:
    tr = model.new_tracker()
    res = tr.step(frame(0), mask=first_mask())
    assert np.array_equal(res.labels, first_mask())  # the init frame returns the given mask
    assert tr.object_ids == [1, 2]
    for i in range(1, 5):
        res = tr.step(frame(i))
        assert res.frame_index == i and res.labels.shape == (H, W) and res.labels.dtype == np.uint8
        assert set(np.unique(res.labels)) <= {0, 1, 2}
        for oid, o in res.objects.items():
            assert o.prob.shape == (H, W) and 0 <= o.score <= 1
            assert o.area == int((res.labels == oid).sum())
        total = sum(o.prob for o in res.objects.values())
        assert total.max() <= 1 + 1e-5


def test_is_deterministic(model) -> None:
    outs = []
    for _ in range(2):
        tr = model.new_tracker()
        outs.append([tr.step(frame(i), mask=first_mask() if i == 0 else None).labels for i in range(3)])
    assert all(np.array_equal(a, b) for a, b in zip(*outs, strict=True))


def test_object_appearing_later(model) -> None:
    tr = model.new_tracker()
    m = first_mask()
    tr.step(frame(0), mask=np.where(m == 1, 1, 0).astype(np.uint8))
    tr.step(frame(1))
    res = tr.step(frame(2), mask=m)  # id 1 is known (ignored), id 2 starts here
    assert tr.object_ids == [1, 2]
    assert (res.labels == 2).sum() == (m == 2).sum()
    assert tr.targets[2].frame_num == 1 and tr.targets[1].frame_num == 3


def test_box_initialisation(model) -> None:
    tr = model.new_tracker()
    res = tr.step(frame(0), boxes={1: (20, 20, 40, 30), 4: (80, 55, 35, 30)})
    assert tr.object_ids == [1, 4]
    assert set(res.objects) == {1, 4}
    tr.step(frame(1))


def test_export_import_continues_identically(model) -> None:
    tr = model.new_tracker()
    for i in range(4):
        tr.step(frame(i), mask=first_mask() if i == 0 else None)
    blob = tr.export_state()
    clone = model.restore_tracker(blob)
    assert clone.object_ids == tr.object_ids and clone.frame_index == tr.frame_index
    for i in range(4, 7):
        a, b = tr.step(frame(i)), clone.step(frame(i))
        assert np.array_equal(a.labels, b.labels)
        for oid in a.objects:
            assert np.array_equal(a.objects[oid].prob, b.objects[oid].prob)


def test_correction_becomes_a_permanent_sample(model) -> None:
    tr = model.new_tracker()
    tr.step(frame(0), mask=first_mask())
    tr.step(frame(1))
    fixed = np.zeros((H, W), np.uint8)
    fixed[21:51, 22:62] = 1
    res = tr.correct(fixed)
    assert np.array_equal(res.labels == 1, fixed == 1)
    mem = tr.targets[1].memory
    slot = mem.protected[-1]
    assert slot in mem.floor_slots and mem.num_stored == 2
    for i in range(2, 36):  # fill the 32-sample memory: the correction must survive
        tr.step(frame(i % 5))
    assert torch.count_nonzero(mem.masks[slot]) > 0 and slot in mem.protected
    assert mem.num_stored == 32


def test_user_errors(model) -> None:
    tr = model.new_tracker()
    with pytest.raises(InputError, match="needs a mask"):
        tr.step(frame(0))
    with pytest.raises(InputError, match="differs from the frame"):
        tr.step(frame(0), mask=np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="empty"):
        tr.step(frame(0), mask=np.zeros((H, W), np.uint8))
    with pytest.raises(InputError, match="outside"):
        tr.step(frame(0), boxes={1: (W, 80, 50, 50)})
    tr.step(frame(0), mask=first_mask())
    with pytest.raises(InputError, match="unknown object"):
        tr.correct(np.full((H, W), 7, np.uint8))
    with pytest.raises(InputError, match="unknown object"):
        tr.remove_object(9)
    with pytest.raises(InputError, match="RGB"):
        tr.step(np.zeros((H, W), np.uint8))


def test_box_past_the_frame_edge_is_clipped(model) -> None:
    clipped = model.new_tracker().step(frame(0), boxes={1: (20, 20, 40, 30), 2: (80, 55, W - 80, H - 55)})
    past = model.new_tracker().step(frame(0), boxes={1: (20, 20, 40, 30), 2: (80, 55, W - 79, H - 54)})
    assert np.array_equal(clipped.labels, past.labels)
    assert np.array_equal(clipped.objects[2].prob, past.objects[2].prob)


def _resave(blob: bytes, state: dict, **head: object) -> bytes:
    """A state with its torch payload replaced (and header fields changed)."""
    import io
    import json
    import struct

    from model.state_header import pack_state_header, read_state_header

    old, _ = read_state_header(blob)
    buf = io.BytesIO()
    torch.save(state, buf)
    fields = {**old, **head, "payload_bytes": len(buf.getvalue())}
    out = pack_state_header(fields) + buf.getvalue()
    if "version" in head:  # pack_state_header writes the current version: put the asked one back
        text = json.dumps(fields).encode()
        out = b"LWLSTATE" + struct.pack(">I", len(text)) + text + buf.getvalue()
    return out


def test_restore_refuses_other_versions_models_and_damaged_states(model) -> None:
    import io

    from model.state_header import read_state_header

    tr = model.new_tracker()
    tr.step(frame(0), mask=first_mask())
    blob = tr.export_state()
    head, start = read_state_header(blob)
    assert head["model"] == model.name and head["weights"] == model.weights_hash and head["objects"] == [1, 2]
    state = torch.load(io.BytesIO(blob[start:]), weights_only=True)
    for version in (1, 99, None):
        with pytest.raises(InputError, match=f"version {version!r} is not supported"):
            model.restore_tracker(_resave(blob, state, version=version))
    buf = io.BytesIO()
    torch.save(state, buf)  # a bare torch zip: what version 2 wrote
    with pytest.raises(InputError, match="version 2 or older is not supported"):
        model.restore_tracker(buf.getvalue())
    with pytest.raises(InputError, match="not of this model"):
        model.restore_tracker(_resave(blob, state, model="other"))
    with pytest.raises(InputError, match="not of this model"):
        model.restore_tracker(_resave(blob, state, weights="0" * 16))
    with pytest.raises(InputError, match="truncated"):
        model.restore_tracker(blob[:-10])
    with pytest.raises(InputError, match="does not match its header"):
        model.restore_tracker(_resave(blob, state, objects=[1]))
    del state["targets"][0]["memory"]["weights"]
    with pytest.raises(InputError, match="incomplete or damaged"):
        model.restore_tracker(_resave(blob, state))
    with pytest.raises(InputError, match="not a tracker state"):
        model.restore_tracker(b"not a state")


def test_remove_object_returns_the_merged_result(model) -> None:
    tr = model.new_tracker()
    tr.step(frame(0), mask=first_mask())
    res = tr.remove_object(2)
    assert list(res.objects) == [1] and not (res.labels == 2).any()
    assert not tr.remove_object(1).labels.any()


def test_no_box_encoder_refuses_boxes(tmp_path: Path) -> None:
    from model.testing import tiny_weights

    m = load_model(tiny_weights(tmp_path / "nobox.safetensors", with_box=False), "cpu")
    with pytest.raises(InputError, match="no box encoder"):
        m.new_tracker().step(frame(0), boxes={1: (10, 10, 20, 20)})


# The authors' tracker's memory weights after insertion k (slot, w[0], w[slot], sum), both parameter sets.
YTVOS = {1: (1, 0.917431, 0.082569, 1.0), 2: (2, 0.840336, 0.084034, 1.0), 10: (10, 0.397922, 0.092439, 1.0),
         20: (20, 0.25, 0.086029, 1.005697), 31: (31, 0.25, 0.078516, 1.005200), 32: (1, 0.25, 0.078496, 1.005011),
         40: (9, 0.25, 0.078495, 1.005)}
BOXINIT = {1: (1, 0.5, 0.5, 1.0), 2: (2, 0.307692, 0.384615, 1.0), 10: (10, 0.029195, 0.217517, 1.0),
           31: (31, 0.000248, 0.200149, 1.0), 32: (0, 0.200159, 0.200159, 1.0), 33: (1, 0.160127, 0.200159, 1.0),
           40: (8, 0.033581, 0.200159, 1.0)}


@pytest.mark.parametrize("preset,table", [("lwl_ytvos", YTVOS), ("lwl_boxinit", BOXINIT)])
def test_memory_weights_follow_the_reference(preset: str, table: dict) -> None:
    params = TrackerParams.preset(preset)
    mem = FewShotMemory.from_params(params)
    mem.start(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    for k in range(1, 41):
        slot = mem.add(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
        if k in table:
            want_slot, w0, ws, total = table[k]
            assert slot == want_slot, k
            assert mem.weights[0].item() == pytest.approx(w0, abs=2e-6), k
            assert mem.weights[slot].item() == pytest.approx(ws, abs=2e-6), k
            assert mem.weights.sum().item() == pytest.approx(total, abs=2e-6), k


def test_correction_on_the_first_frame_replaces_the_initial_mask(model) -> None:
    tr = model.new_tracker()
    tr.step(frame(0), mask=first_mask())
    fixed = first_mask()
    fixed[20:50, 50:60] = 0
    res = tr.correct(fixed)
    assert np.array_equal(res.labels, fixed)
    clone = model.restore_tracker(tr.export_state())
    assert np.array_equal(tr.step(frame(1)).labels, clone.step(frame(1)).labels)

"""COCO RLE: the vectorised encoder and decoder give exactly what the plain per-run loops give."""

from __future__ import annotations

import numpy as np
import pytest

from bench.reference import ref_counts_to_string, ref_decode, ref_string_to_counts
from model.rle import _counts_to_string, _string_to_counts, rle_decode, rle_encode


def ref_runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a (possibly empty) run of zeros."""
    flat = mask.reshape(-1, order="F").astype(bool).tolist()
    runs, cur, n = [], False, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return runs


def masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [np.zeros((h, w), np.uint8) for h, w in [(1, 1), (1, 9), (9, 1), (7, 5)]]
    out += [np.ones((h, w), np.uint8) for h, w in [(1, 1), (1, 9), (9, 1), (7, 5)]]
    for _ in range(60):
        h, w = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        out.append((rng.random((h, w)) < rng.random()).astype(np.uint8))
    noisy = (rng.random((120, 214)) < 0.5).astype(np.uint8)
    out.append(noisy)
    big = np.zeros((480, 854), np.uint8)  # long runs: multi-character values and negative deltas
    big[100:300, 200:700] = 1
    big[400:, :5] = 1
    out += [big, 1 - big]
    return out


def test_known_value() -> None:
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:4] = 1
    rle = rle_encode(m)
    assert rle == {"size": [4, 5], "counts": "5220003"}  # pycocotools' string for this mask
    assert np.array_equal(rle_decode(rle), m)


def test_encode_identical_to_reference_and_round_trips() -> None:
    for m in masks():
        rle = rle_encode(m)
        assert rle["size"] == list(m.shape)
        assert rle["counts"] == ref_counts_to_string(ref_runs(m))
        back = rle_decode(rle)
        assert back.dtype == np.uint8 and np.array_equal(back, m)
        assert np.array_equal(rle_decode({"size": list(m.shape), "counts": ref_runs(m)}), m)  # uncompressed form


def test_bool_and_empty_shapes() -> None:
    m = np.zeros((3, 4), bool)
    m[0, 0] = True
    assert rle_encode(m) == rle_encode(m.astype(np.uint8))
    for shape in [(0, 5), (5, 0), (0, 0)]:
        rle = rle_encode(np.zeros(shape, np.uint8))
        assert rle == {"size": list(shape), "counts": ""}
        assert rle_decode(rle).shape == shape


def test_counts_text_identical_for_arbitrary_runs() -> None:
    # values far beyond any mask, zeros, and big swings give negative deltas and long groups
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(0, 40))
        scale = int(rng.choice([2, 40, 10**4, 10**9, 10**15]))
        runs = rng.integers(0, scale, n).tolist()
        text = _counts_to_string(np.asarray(runs, dtype=np.int64))
        assert text == ref_counts_to_string(runs)
        assert _string_to_counts(text).tolist() == runs == ref_string_to_counts(text)


def test_counts_text_at_group_edges() -> None:
    # deltas at the edges of each character count: +-2^(5g-1) and one inside
    base = 2**56
    for g in range(1, 12):
        edge = 2 ** (5 * g - 1)
        for d in (edge - 1, edge, -edge, -edge - 1):
            runs = [1, base, base, base + d, base - d]
            text = _counts_to_string(np.asarray(runs, dtype=np.int64))
            assert text == ref_counts_to_string(runs), (g, d)
            assert _string_to_counts(text).tolist() == runs


def test_decode_identical_for_short_and_long_counts() -> None:
    # totals below the mask size leave zeros; runs past the end are cut (no huge allocation)
    cases = [[3], [0, 4], [2, 2, 2], [5, 100], [0, 10**15, 7], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 100], []]
    for runs in cases:
        for form in (runs, ref_counts_to_string(runs)):
            assert np.array_equal(rle_decode({"size": [3, 4], "counts": form}), ref_decode(3, 4, runs)), form


def test_noisy_480p_identical() -> None:
    m = (np.random.default_rng(2).random((480, 854)) < 0.5).astype(np.uint8)
    rle = rle_encode(m)
    assert rle["counts"] == ref_counts_to_string(ref_runs(m))
    assert np.array_equal(rle_decode(rle), m)
    assert np.array_equal(rle_decode(rle), ref_decode(480, 854, ref_string_to_counts(rle["counts"])))


@pytest.mark.parametrize("counts", ["5\u00e92", "5 2", "52a", "5b", "5\x7f"])
def test_malformed_strings_raise(counts: str) -> None:
    # non-ASCII, characters outside '0'..'o', or a value cut off by the end of the string
    with pytest.raises(ValueError):
        rle_decode({"size": [4, 5], "counts": counts})


def test_negative_runs_raise() -> None:
    with pytest.raises(ValueError):
        rle_decode({"size": [4, 5], "counts": [3, -1, 5]})

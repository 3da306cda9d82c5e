"""Wire helpers: COCO RLE must match pycocotools' text format; packing must round-trip binary blobs."""

import json

import numpy as np
import pytest

from service.codec import (
    frame_bytes,
    pack,
    parse_frame_bytes,
    rle_decode,
    rle_encode,
    splice,
    unpack,
)


def test_rle_known_value() -> None:
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:4] = 1
    # column-major runs 5,2,2,2,2,2,5 -> pycocotools string
    assert rle_encode(m) == {"size": [4, 5], "counts": "5220003"}


def test_rle_roundtrip_random() -> None:
    rng = np.random.default_rng(0)
    for i in range(100):
        m = (rng.random((rng.integers(1, 40), rng.integers(1, 40))) > rng.random()).astype(np.uint8)
        if i % 4 == 0:
            m[:] = i % 8 == 0
        assert np.array_equal(rle_decode(rle_encode(m)), m)


def test_pack_roundtrip() -> None:
    h, body = pack({"op": "frame", "seq": 3}, b"\x00\xff" * 10, b"", b"abc")
    hd, blobs = unpack(h, body)
    assert hd["op"] == "frame" and blobs == [b"\x00\xff" * 10, b"", b"abc"]
    hd, blobs = parse_frame_bytes(frame_bytes({"seq": 1}, lambda fp: fp.write(b"xyz")))
    assert hd["seq"] == 1 and blobs == [b"xyz"]


@pytest.mark.parametrize("size", [0, 7, 3 * 2**20 + 1])
def test_frame_bytes_reads_back_any_size(size: int) -> None:
    """A snapshot written straight into its record (header room reserved, then padded) parses as one."""
    blob = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    head = {"seq": 12, "recent": list(range(256)), "frame_id": "1700000000000-5"}
    rec = frame_bytes(head, lambda fp: fp.write(blob))
    hd, blobs = parse_frame_bytes(rec)
    assert blobs == [blob] and {k: hd[k] for k in head} == head and hd["parts"] == [size]


def test_splice_adds_fields_to_json_text() -> None:
    body = json.dumps({"type": "result", "labels": "a}b", "objects": [{"id": 1}]}).encode()
    out = json.loads(splice(body, {"id": {"k": [1, "x"]}, "latency_ms": 1.5}))
    assert out == {"type": "result", "labels": "a}b", "objects": [{"id": 1}], "id": {"k": [1, "x"]},
                   "latency_ms": 1.5}
    assert json.loads(splice(b"{ }", {"seq": 3})) == {"seq": 3}
    assert splice(body, {}) == body
    with pytest.raises(ValueError):
        splice(b"[1]", {"a": 1})

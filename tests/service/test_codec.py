"""Wire helpers: COCO RLE must match pycocotools' text format; packing must round-trip binary blobs."""

import numpy as np

from service.codec import frame_bytes, pack, parse_frame_bytes, rle_decode, rle_encode, unpack


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
    hd, blobs = parse_frame_bytes(frame_bytes({"seq": 1}, b"xyz"))
    assert hd["seq"] == 1 and blobs == [b"xyz"]

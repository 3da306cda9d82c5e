"""The header of an exported tracker state (torch-free): what a state is before anyone unpickles it.

A state is `LWLSTATE`, a 4-byte big-endian header length, a JSON header, then the torch payload
(model.tracker). The header names the format version, the model and a hash of its weights, the sizes
and objects, and the payload's length, so a process without torch (the service's api) can refuse a
state from another model or release, a truncated one, or one past its limits before any worker
unpickles it; the tracker checks the payload against the header when it restores it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from model.errors import InputError

STATE_MAGIC = b"LWLSTATE"
# Version 3: the header above (model name, weights hash, sizes) before the torch payload.
# Version 2 and older: a bare torch zip (starts with "PK"), readable by no release after them.
STATE_VERSION = 3
MAX_HEADER_BYTES = 64 << 10


def pack_state_header(head: dict[str, Any], room: int = 0) -> bytes:
    """Magic, length and JSON header, padded with spaces (which JSON ignores) to `room` header bytes."""
    text = json.dumps({**head, "version": STATE_VERSION}, separators=(",", ":")).encode().ljust(room)
    return STATE_MAGIC + struct.pack(">I", len(text)) + text


def _int_pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                       for x in v)


def _check_fields(head: dict[str, Any]) -> None:
    """The header's fields have the types a reader relies on."""
    ok = (isinstance(head.get("model"), str) and isinstance(head.get("weights"), str)
          and _int_pair(head.get("crop_hw")) and (head.get("frame_hw") is None or _int_pair(head["frame_hw"]))
          and isinstance(head.get("objects"), list)
          and all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= 254 for i in head["objects"])
          and isinstance(head.get("frame_index"), int) and isinstance(head.get("payload_bytes"), int))
    if not ok:
        raise InputError("tracker state header is damaged: model, weights, crop_hw, frame_hw, objects, "
                         "frame_index and payload_bytes must be present with their types")


def read_state_header(blob: bytes) -> tuple[dict[str, Any], int]:
    """The header of a state and where its payload starts; InputError for anything that is not a whole
    state of this version (a bare torch zip is version 2 or older)."""
    if blob[:2] == b"PK":
        raise InputError(f"tracker state version 2 or older is not supported: this lwl-vos reads version "
                         f"{STATE_VERSION} only (a state from another release cannot continue; start the video again)")
    if blob[: len(STATE_MAGIC)] != STATE_MAGIC or len(blob) < len(STATE_MAGIC) + 4:
        raise InputError("not a tracker state (it does not start with LWLSTATE)")
    (n,) = struct.unpack(">I", blob[len(STATE_MAGIC) : len(STATE_MAGIC) + 4])
    start = len(STATE_MAGIC) + 4
    if n > MAX_HEADER_BYTES or start + n > len(blob):
        raise InputError("tracker state is truncated or damaged (its header is cut off)")
    try:
        head = json.loads(blob[start : start + n])
    except ValueError:
        raise InputError("tracker state header is not JSON") from None
    if not isinstance(head, dict):
        raise InputError("tracker state header is not a JSON object")
    if head.get("version") != STATE_VERSION:
        raise InputError(f"tracker state version {head.get('version')!r} is not supported: this lwl-vos reads "
                         f"version {STATE_VERSION} only (a state from another release cannot continue; start the "
                         "video again)")
    _check_fields(head)
    have = len(blob) - start - n
    if have != head["payload_bytes"]:
        raise InputError(f"tracker state is truncated or padded: its payload has {have} bytes, its header says "
                         f"{head['payload_bytes']}")
    return head, start + n

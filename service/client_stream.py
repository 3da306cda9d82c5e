"""The SDK's stream protocol and basics (service.client uses them): images and label maps as bytes, the
SDK's error type, edits inside a live stream, and the outbox that keeps frames and edits in order across
reconnects (docs/API.md, "WebSocket stream")."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ImageLike = bytes | str | Path | np.ndarray


class LWLError(Exception):
    """A 4xx/5xx answer: status, machine code and the server's sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


def image_bytes(x: ImageLike, label: bool = False) -> bytes:
    """Files are sent as they are (bit-identical decode on the worker); arrays are PNG-encoded."""
    if isinstance(x, bytes):
        return x
    if isinstance(x, str | Path):
        return Path(x).read_bytes()
    buf = io.BytesIO()
    arr = np.asarray(x, dtype=np.uint8)
    if label:
        from model.lite import DAVIS_PALETTE  # numpy + Pillow only

        im = Image.fromarray(arr, mode="P")
        im.putpalette(DAVIS_PALETTE.reshape(-1).tolist())
    else:
        im = Image.fromarray(arr)
    im.save(buf, format="PNG")
    return buf.getvalue()


class _Edits:
    """Edits in a live stream (docs/API.md, "Edits"): sent before the next frame, so each applies after the
    frames sent so far; answered in order (`corrected`, `added`, `removed`); resent after a reconnect."""

    box: Outbox

    def correct(self, mask: ImageLike) -> None:
        """Corrected masks of tracked objects (a label map)."""
        self.box.edit({"type": "correct", "mask": base64.b64encode(image_bytes(mask, label=True)).decode()})

    def add(self, mask: ImageLike | None = None, boxes: dict | None = None) -> None:
        """New objects: a label map with new ids and/or boxes {id: (x, y, w, h)}."""
        msg: dict[str, Any] = {"type": "add"}
        if mask is not None:
            msg["mask"] = base64.b64encode(image_bytes(mask, label=True)).decode()
        if boxes:
            msg["boxes"] = {str(k): list(v) for k, v in boxes.items()}
        self.box.edit(msg)

    def remove(self, object_id: int) -> None:
        """Stop tracking an object."""
        self.box.edit({"type": "remove", "object_id": int(object_id)})


class Stream(_Edits):
    """A sync stream: iterate it for the answers, in order; edit with correct/add/remove."""

    def __init__(self, box: Outbox, messages: Iterator[dict[str, Any]]) -> None:
        self.box, self.messages = box, messages

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self.messages)


class AsyncStream(_Edits):
    """An asyncio stream: `async for` the answers, in order; edit with correct/add/remove."""

    def __init__(self, box: Outbox, messages: AsyncIterator[dict[str, Any]]) -> None:
        self.box, self.messages = box, messages

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.messages.__anext__()


def stream_query(mode: str, fmt: str | None, max_inflight: int | None) -> str:
    q = f"&mode={mode}"
    if fmt:
        q += f"&format={fmt}"
    if max_inflight:
        q += f"&max_inflight={max_inflight}"
    return q


def window_size(ready: dict[str, Any], mode: str) -> int:
    """all: keep max_inflight frames outstanding; latest: never wait, the server drops stale frames."""
    return ready["max_inflight"] if mode == "all" else 1 << 30


def ready_message(msg: dict[str, Any]) -> dict[str, Any]:
    """The stream's first message must be `ready`; anything else is the service's refusal."""
    if msg.get("type") != "ready":
        raise LWLError(400, msg.get("code", "error"), msg.get("detail", str(msg)))
    return msg


RESUMABLE_CLOSES = {1001, 1006, 1011, 1012, 1013, 4503}  # the connection or the service, not the request
_END = object()


class Outbox:
    """One stream's frames in flight, by id, and where to resume: the state the sync and asyncio streams
    share (docs/API.md, "Resume"). Frames go out as JSON envelopes with an id, so after a reconnect the
    `ready` message says which of them the session had accepted."""

    def __init__(self, mode: str, reconnects: int) -> None:
        self.mode, self.reconnects_left = mode, reconnects
        self.inflight: dict[int, str] = {}  # id -> the frame's message text, in the order sent
        self.edits: list[str] = []  # edits queued, sent before the next frame
        self.next_id = 0
        self.resume_from: int | None = None  # seq of the first frame not answered yet
        self.done = False  # the source is exhausted and {"type": "close"} is to be (or was) sent
        self.ready_seen = False
        self.backoff = 0.5  # doubled before each reconnect: 1, 2, 4, 8, 8 s

    @property
    def pending(self) -> int:
        """Frames and edits sent and not answered yet (queued edits are not sent)."""
        return len(self.inflight) - len(self.edits)

    def next_message(self, source: Iterator[ImageLike]) -> str:
        """The next edit or frame's envelope (remembered until answered), or the close message at the end."""
        if self.edits:
            return self.edits.pop(0)
        frame = next(source, _END)
        if frame is _END:
            self.done = True
            return json.dumps({"type": "close"})
        self.next_id += 1
        text = json.dumps({"type": "frame", "id": self.next_id, "image": base64.b64encode(image_bytes(frame)).decode()})
        self.inflight[self.next_id] = text
        return text

    def edit(self, msg: dict[str, Any]) -> None:
        """Queue an edit with its id (remembered until answered, like a frame)."""
        if self.done:
            raise LWLError(400, "stream_ended", "the stream has sent its last frame: edit over REST instead")
        self.next_id += 1
        self.inflight[self.next_id] = text = json.dumps({**msg, "id": self.next_id})
        self.edits.append(text)

    def resume_query(self) -> str:
        return f"&resume_from={self.resume_from}" if self.ready_seen and self.resume_from is not None else ""

    def on_ready(self, ready: dict[str, Any]) -> list[str]:
        """What to send after `ready`: nothing on the first stream; after a resume, the frames in flight the
        session never accepted (not in `ready.resumed`: those are answered anyway), then close if it was due."""
        first, self.ready_seen = not self.ready_seen, True
        if first:
            self.resume_from = ready.get("next_seq")
            return []
        accepted = {r.get("id") for r in ready.get("resumed", [])}
        queued = set(self.edits)  # not sent yet: they go out in their turn
        out = [text for i, text in self.inflight.items() if i not in accepted and text not in queued]
        return [*out, json.dumps({"type": "close"})] if self.done else out

    def answered(self, msg: dict[str, Any]) -> None:
        if msg.get("type") in ("result", "error", "skipped", "corrected", "added", "removed"):
            self.inflight.pop(msg.get("id"), None)
        if isinstance(msg.get("seq"), int):
            self.resume_from = max(self.resume_from or 0, msg["seq"] + 1)

    def retry_after(self, exc: Exception) -> float:
        """Seconds to wait before resuming after `exc`; raises when the stream cannot or may not resume."""
        rcvd = getattr(exc, "rcvd", None)
        code = rcvd.code if rcvd is not None else 1006
        if self.mode != "all" or code not in RESUMABLE_CLOSES or self.reconnects_left <= 0 or not self.ready_seen:
            raise LWLError(503 if code in RESUMABLE_CLOSES else 400, f"stream_closed_{code}",
                           getattr(rcvd, "reason", "") or str(exc)) from exc
        self.reconnects_left -= 1
        self.backoff = min(8.0, self.backoff * 2)
        return self.backoff

"""The messages a client sends on a session's WebSocket stream, one pydantic model each in a
discriminated union on `type`, each with its own handler. A binary message is a frame too (raw image
bytes). docs/API.md's "Client -> server" list is checked against `CLIENT_MESSAGES`
(tests/service/test_stream_messages.py): adding a message type is one model here, added to the union,
and its line in the docs.

A handler returns the frame or edit to submit (`Incoming`), or None when the message needs neither;
`close` raises `ClientClosed`. A message that is not valid gets an `error` message and the stream goes
on. Edits (`correct`, `add`, `remove`) are checked here as their REST routes check them (service.checks),
go into the session's frames stream in order with the frames, and count as in flight like a frame. Their
masks come as base64 in the JSON, or as PNG bytes after a binary envelope header (`parse_binary`).
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, TypeAdapter, ValidationError

from service.checks import boxes_header, check_mask, check_size, parse_boxes
from service.errors import ServiceError

if TYPE_CHECKING:
    from service.stream import StreamHandler

MAX_ID_CHARS = 128  # a client's frame id is echoed in its answer and kept with the frame: keep it small
EXPECTED = ('expected {"type": "frame", "image": "<base64 JPEG/PNG>"}, an edit ({"type": "correct", "mask": ...}, '
            '{"type": "add", "mask"/"boxes": ...}, {"type": "remove", "object_id": N}), {"type": "close"} or binary')
EDIT_MAGIC = b"LWLM"  # a binary message that starts so is an edit: magic, 4-byte big-endian length, JSON, PNG
MAX_ENVELOPE_HEADER = 64 << 10


class ClientClosed(Exception):
    """The client said `close`: answer the frames in flight, then close with 1000."""


@dataclass
class Incoming:
    """A frame to submit: its bytes and the id the client gave it (echoed in its answer)."""

    data: bytes
    client_id: Any = None
    head: dict[str, Any] | None = None  # an edit's op header for the worker; None: a frame


class BadMessage(Exception):
    """A message the stream answers with an error message (and goes on)."""

    def __init__(self, code: str, detail: str, client_id: Any = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.client_id = code, detail, client_id

        self.status: int | None = None

    @classmethod
    def of(cls, e: ServiceError, client_id: Any) -> BadMessage:
        """A check's refusal of a frame or an edit: its status and code, naming the message by its id."""
        bad = cls(e.code, e.detail, client_id)
        bad.status = e.status
        return bad

    def message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": self.code, "detail": self.detail}
        if self.status is not None:
            out["status"] = self.status
        if self.code == "bad_image" or self.status is not None:  # a frame's or an edit's error: it names it
            out["id"] = self.client_id
        return out


def client_id(cid: Any) -> Any:
    """The id a client gives a frame or an edit (echoed in its answer): a short string or a number."""
    if not (cid is None or (isinstance(cid, (int, float)) and not isinstance(cid, bool))
            or (isinstance(cid, str) and len(cid) <= MAX_ID_CHARS)):
        raise BadMessage("bad_message", f"id must be a string of at most {MAX_ID_CHARS} characters or a number")
    return cid


class FrameMessage(BaseModel):
    """`{"type": "frame", "image": "<base64 JPEG/PNG>", "id": ...}`: one frame as text."""

    type: Literal["frame"]
    image: str
    id: Any = None

    async def handle(self, stream: StreamHandler) -> Incoming | None:
        cid = client_id(self.id)
        try:
            return Incoming(base64.b64decode(self.image, validate=True), cid)
        except ValueError:
            raise BadMessage("bad_image", "image is not valid base64", cid) from None


class PingMessage(BaseModel):
    """`{"type": "ping"}`: answered with `{"type": "pong"}`."""

    type: Literal["ping"]

    async def handle(self, stream: StreamHandler) -> Incoming | None:
        await stream.send({"type": "pong"})
        return None


class CloseMessage(BaseModel):
    """`{"type": "close"}`: the frames in flight are answered, then the stream closes with 1000."""

    type: Literal["close"]

    async def handle(self, stream: StreamHandler) -> Incoming | None:
        raise ClientClosed


class AuthMessage(BaseModel):
    """`{"type": "auth", "token": ..., "resume_from": ...}`: the first message when the URL has no token
    (read by the handshake); later ones are ignored."""

    type: Literal["auth"]
    token: Any = None
    resume_from: Any = None

    async def handle(self, stream: StreamHandler) -> Incoming | None:
        return None


class MaskEdit(BaseModel):
    """An edit whose mask is an indexed PNG: base64 in `mask`, or the bytes after a binary envelope's
    header (then `mask` is not read)."""

    _payload: bytes | None = PrivateAttr(default=None)

    def with_payload(self, data: bytes) -> MaskEdit:
        """The PNG bytes that followed a binary envelope's header."""
        self._payload = data
        return self

    def mask_bytes(self, mask: str | None, cid: Any) -> bytes:
        if self._payload is not None:
            return self._payload
        try:
            return base64.b64decode(mask or "", validate=True)
        except ValueError:
            raise BadMessage.of(ServiceError(400, "bad_mask", "mask is not valid base64"), cid) from None


def checked_mask(stream: StreamHandler, data: bytes, cid: Any) -> None:
    """An edit's mask as the REST routes check it: LWL_MAX_UPLOAD_MB, a readable image within the pixel
    limit, of the session's frame size (header only; the worker decodes it)."""
    try:
        check_size(len(data), stream.svc.s.max_upload_bytes, "mask")
        check_mask(data, stream.hw, stream.svc.s.max_frame_pixels)
    except ServiceError as e:
        raise BadMessage.of(e, cid) from None


class CorrectMessage(MaskEdit):
    """`{"type": "correct", "mask": "<base64 indexed PNG>", "id": ...}`: corrected masks of tracked objects
    on the frame last sent before it (POST .../corrections); answered with `corrected`."""

    type: Literal["correct"]
    mask: str | None = None
    id: Any = None

    async def handle(self, stream: StreamHandler) -> Incoming | None:
        cid = client_id(self.id)
        data = self.mask_bytes(self.mask, cid)
        if not data:
            raise BadMessage.of(ServiceError(400, "bad_mask", "mask is empty"), cid)
        checked_mask(stream, data, cid)
        return Incoming(data, cid, {"op": "correct"})


class AddMessage(MaskEdit):
    """`{"type": "add", "mask": "<base64 indexed PNG>", "boxes": {"3": [x, y, w, h]}, "id": ...}`: new objects
    on the frame last sent before it (POST .../objects); answered with `added`."""

    type: Literal["add"]
    mask: str | None = None
    boxes: Any = None
    id: Any = None

    async def handle(self, stream: StreamHandler) -> Incoming | None:
        cid = client_id(self.id)
        data = self.mask_bytes(self.mask, cid)
        text = self.boxes if isinstance(self.boxes, str) or self.boxes is None else json.dumps(self.boxes)
        try:
            bx = parse_boxes(text)
            if not data and not bx:
                raise ServiceError(400, "no_objects", "give a mask with new object ids or boxes")
        except ServiceError as e:
            raise BadMessage.of(e, cid) from None
        if data:
            checked_mask(stream, data, cid)
        return Incoming(data, cid, {"op": "add", "boxes": boxes_header(bx)})


class RemoveMessage(BaseModel):
    """`{"type": "remove", "object_id": 3, "id": ...}`: stop tracking an object after the frame last sent
    before it (DELETE .../objects/{id}); answered with `removed`."""

    type: Literal["remove"]
    object_id: int
    id: Any = None

    async def handle(self, stream: StreamHandler) -> Incoming | None:
        return Incoming(b"", client_id(self.id), {"op": "remove", "object_id": self.object_id})


ClientMessage = Annotated[FrameMessage | PingMessage | CloseMessage | AuthMessage | CorrectMessage | AddMessage
                          | RemoveMessage, Field(discriminator="type")]
CLIENT_MESSAGES = (FrameMessage, PingMessage, CloseMessage, AuthMessage, CorrectMessage, AddMessage, RemoveMessage)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClientMessage)
Message = FrameMessage | PingMessage | CloseMessage | AuthMessage | CorrectMessage | AddMessage | RemoveMessage


def parse_binary(data: bytes) -> CorrectMessage | AddMessage:
    """A binary edit: EDIT_MAGIC, the JSON header's length (4 bytes, big-endian), the JSON header (a
    `correct` or `add` message without `mask`), then the mask's PNG bytes (none: an `add` of boxes)."""
    n = struct.unpack(">I", data[4:8])[0] if len(data) >= 8 else -1
    if n < 0 or n > MAX_ENVELOPE_HEADER or 8 + n > len(data):
        raise BadMessage("bad_message", "a binary edit is LWLM, a 4-byte big-endian header length, a JSON header "
                         "and the PNG bytes; this one is cut short")
    msg = parse_text(data[8 : 8 + n].decode("utf-8", "replace"))
    if not isinstance(msg, (CorrectMessage, AddMessage)):
        raise BadMessage("bad_message", 'a binary edit\'s header is {"type": "correct"} or {"type": "add"}')
    msg.with_payload(data[8 + n :])
    return msg


def parse_text(text: str | None) -> Message:
    """A text message as its model; BadMessage when it is not a JSON object of a known shape."""
    try:
        env = json.loads(text or "")
        if not isinstance(env, dict):
            raise ValueError("not an object")
    except ValueError:
        raise BadMessage("bad_message", "text messages must be JSON objects") from None
    try:
        return _ADAPTER.validate_python(env)
    except ValidationError:
        raise BadMessage("bad_message", EXPECTED) from None


def message_types() -> set[str]:
    """The `type` of every client message model (for the docs check)."""
    return {m.model_fields["type"].annotation.__args__[0] for m in CLIENT_MESSAGES}

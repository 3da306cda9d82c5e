"""The messages a client sends on a session's WebSocket stream, one pydantic model each in a
discriminated union on `type`, each with its own handler. A binary message is a frame too (raw image
bytes). docs/API.md's "Client -> server" list is checked against `CLIENT_MESSAGES`
(tests/service/test_stream_messages.py): adding a message type is one model here, added to the union,
and its line in the docs.

A handler returns the frame to submit (`Incoming`), or None when the message needs no frame; `close`
raises `ClientClosed`. A message that is not valid gets an `error` message and the stream goes on.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

if TYPE_CHECKING:
    from service.stream import StreamHandler

MAX_ID_CHARS = 128  # a client's frame id is echoed in its answer and kept with the frame: keep it small
EXPECTED = 'expected {"type": "frame", "image": "<base64 JPEG/PNG>"}, {"type": "close"} or binary'


class ClientClosed(Exception):
    """The client said `close`: answer the frames in flight, then close with 1000."""


@dataclass
class Incoming:
    """A frame to submit: its bytes and the id the client gave it (echoed in its answer)."""

    data: bytes
    client_id: Any = None


class BadMessage(Exception):
    """A message the stream answers with an error message (and goes on)."""

    def __init__(self, code: str, detail: str, client_id: Any = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.client_id = code, detail, client_id

    def message(self) -> dict[str, Any]:
        if self.code == "bad_image":  # a frame's error: it names the frame
            return {"type": "error", "code": self.code, "id": self.client_id, "detail": self.detail}
        return {"type": "error", "code": self.code, "detail": self.detail}


class FrameMessage(BaseModel):
    """`{"type": "frame", "image": "<base64 JPEG/PNG>", "id": ...}`: one frame as text."""

    type: Literal["frame"]
    image: str
    id: Any = None

    async def handle(self, stream: StreamHandler) -> Incoming | None:
        cid = self.id
        if not (cid is None or (isinstance(cid, (int, float)) and not isinstance(cid, bool))
                or (isinstance(cid, str) and len(cid) <= MAX_ID_CHARS)):
            raise BadMessage("bad_message", f"id must be a string of at most {MAX_ID_CHARS} characters or a number")
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


ClientMessage = Annotated[FrameMessage | PingMessage | CloseMessage | AuthMessage, Field(discriminator="type")]
CLIENT_MESSAGES = (FrameMessage, PingMessage, CloseMessage, AuthMessage)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClientMessage)


def parse_text(text: str | None) -> FrameMessage | PingMessage | CloseMessage | AuthMessage:
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

"""The WebSocket client messages of docs/API.md and the models that parse them (service.stream_messages)
are the same set: every model is documented and every documented message type is a model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.stream_messages import BadMessage, CloseMessage, FrameMessage, message_types, parse_text

API_MD = Path(__file__).resolve().parents[2] / "docs" / "API.md"


def _documented_client_types() -> set[str]:
    """The `"type"` of each JSON message the client sends in the stream section: the "Client -> server." list
    and the handshake's auth message."""
    text = API_MD.read_text()
    section = text[text.index("## WebSocket stream"):]
    section = section[:section.index("\n## ")]
    client = section[section.index("**Client -> server.**"):section.index("**Server -> client**")]
    handshake = re.findall(r'first message must be text `\{"type": "(\w+)"', section)
    sent = re.findall(r'(?<!-> )`\{"type": "(\w+)"', client)  # not the answers: `{"type": "ping"}` -> `{...}`
    return set(sent) | set(handshake)


def test_every_client_message_model_is_documented_and_every_documented_type_is_a_model() -> None:
    documented = _documented_client_types()
    assert documented, "no client message found in docs/API.md"
    assert documented == message_types(), (sorted(documented), sorted(message_types()))


def test_text_messages_parse_to_their_model_or_a_bad_message() -> None:
    assert isinstance(parse_text('{"type": "frame", "image": "", "id": 3}'), FrameMessage)
    assert isinstance(parse_text('{"type": "close", "extra": 1}'), CloseMessage)
    for text in ('{"type": "frame"}', '{"type": "nope"}', '{"image": "x"}', '{"type": "frame", "image": 5}'):
        with pytest.raises(BadMessage) as e:
            parse_text(text)
        assert e.value.code == "bad_message" and e.value.detail.startswith('expected {"type": "frame"'), text
    for text in ("[1]", "not json", ""):
        with pytest.raises(BadMessage, match="must be JSON objects"):
            parse_text(text)


def test_binary_edits_parse_to_their_model_with_the_png_after_the_header() -> None:
    import struct

    from service.stream_messages import AddMessage, CorrectMessage, parse_binary

    def envelope(header: bytes, payload: bytes = b"PNG") -> bytes:
        return b"LWLM" + struct.pack(">I", len(header)) + header + payload

    msg = parse_binary(envelope(b'{"type": "correct", "id": "c1"}'))
    assert isinstance(msg, CorrectMessage) and msg.id == "c1" and msg.mask_bytes(None, "c1") == b"PNG"
    assert isinstance(parse_binary(envelope(b'{"type": "add", "boxes": {"3": [1, 2, 3, 4]}}', b"")), AddMessage)
    for bad in (b"LWLM", b"LWLM\x00\x00\x00\x40{}", envelope(b'{"type": "remove", "object_id": 1}'),
                envelope(b'{"type": "frame", "image": ""}'), envelope(b"not json")):
        with pytest.raises(BadMessage) as e:
            parse_binary(bad)
        assert e.value.code == "bad_message", bad

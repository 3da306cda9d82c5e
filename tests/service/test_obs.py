"""Logs are one JSON object per line, carry extra ids, and never show session tokens."""

import json
import logging

from service.obs import JsonFormatter, RedactTokens


def test_json_line_with_ids_and_redacted_token() -> None:
    rec = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
                            ("127.0.0.1:5", "/v1/sessions/abc/stream?token=SECRET&mode=all"), None)
    rec.session_id = "abc"
    assert RedactTokens().filter(rec)
    out = json.loads(JsonFormatter().format(rec))
    assert out["session_id"] == "abc" and "SECRET" not in out["msg"] and "token=***" in out["msg"]
    assert out["level"] == "info" and out["logger"] == "uvicorn.error"

"""Access control of the api: optional API keys (`LWL_API_KEYS`) and per-key limits on live sessions
and queued/running jobs.

Keys are held only as SHA-256 digests: a plain key in the setting is hashed when the settings load, and
a presented key is hashed and compared with every configured digest by `hmac.compare_digest`, so
neither the comparison time nor the process memory gives a key away. Keys should be long random
strings (e.g. `openssl rand -hex 32`): then an unsalted hash is as good as a slow one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from service import obs

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")
HEADER = "X-API-Key"
log = logging.getLogger("lwl.api")


def key_digest(key: str) -> str:
    """SHA-256 hex digest of a key (what the setting keeps and what a presented key is compared as)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_api_keys(text: str) -> dict[str, str]:
    """`LWL_API_KEYS` -> {name: sha256 hex}. Entries are separated by commas or white space (a Secret
    file may hold one per line); each is `name:sha256:<64 hex>` or `name:<plain key>` (hashed here).
    Raises ValueError naming the entry by position, never by content (it may be a secret)."""
    out: dict[str, str] = {}
    for i, entry in enumerate(e for e in re.split(r"[\s,]+", text or "") if e):
        name, sep, rest = entry.partition(":")
        if not sep or not NAME_RE.match(name) or not rest:
            raise ValueError(f"LWL_API_KEYS entry {i + 1}: expected name:sha256:<hex> or name:<key>, "
                             "name of letters, digits, '_', '.', '-'")
        if name in out:
            raise ValueError(f"LWL_API_KEYS entry {i + 1}: key name {name!r} appears twice")
        if rest.startswith("sha256:"):
            digest = rest[7:]
            if not HEX_RE.match(digest):
                raise ValueError(f"LWL_API_KEYS entry {i + 1} ({name}): sha256: needs 64 hex digits")
            out[name] = digest.lower()
        else:
            if len(rest) < 16:
                raise ValueError(f"LWL_API_KEYS entry {i + 1} ({name}): a plain key needs 16 characters "
                                 "or more")
            out[name] = key_digest(rest)
    return out


def normalize_api_keys(text: str) -> str:
    """The setting with every plain key replaced by its digest (so the plain key is not kept)."""
    return ",".join(f"{n}:sha256:{d}" for n, d in parse_api_keys(text).items())


def match_key(presented: str, keys: dict[str, str]) -> str | None:
    """The name of the configured key equal to `presented`, else None. Every digest is compared (no early
    exit) in constant time."""
    digest = key_digest(presented)
    found = None
    for name, want in keys.items():
        if hmac.compare_digest(digest, want):
            found = name
    return found


def _key_needed(method: str, path: str) -> bool:
    """Everything under /v1 needs a key, except GET /v1/info (the page asks it whether a key is needed),
    CORS preflights, and job result downloads (a browser download link cannot send a header: the job
    token in `?token=` authenticates it, and it was issued to a keyed caller). Health, metrics, the page
    and the API docs are outside /v1. The WebSocket stream is not HTTP: the session token covers it."""
    if method == "OPTIONS" or not (path == "/v1" or path.startswith("/v1/")):
        return False
    if path == "/v1/info" and method in ("GET", "HEAD"):
        return False
    parts = path.split("/")  # "", "v1", "jobs", id, "result"
    return not (len(parts) == 5 and parts[2] == "jobs" and parts[4] == "result" and method in ("GET", "HEAD"))


def _refuse(status: int, code: str, detail: str) -> JSONResponse:
    obs.ERRORS.labels(code).inc()
    return JSONResponse({"code": code, "detail": detail}, status)


def api_key_middleware(keys: dict[str, str], backend: Any) -> Callable[[Request, Any], Awaitable[Response]]:
    """HTTP middleware: 401 missing_api_key / 403 wrong_api_key; the key's name goes to
    `request.state.api_key` (None when keys are off or the path needs none)."""

    async def check(request: Request, call_next: Any) -> Response:
        request.state.api_key = None
        if keys and _key_needed(request.method, request.url.path):
            presented = request.headers.get(HEADER)
            if not presented:
                return _refuse(401, "missing_api_key", f"this service needs an API key: send {HEADER}: <key>")
            name = match_key(presented, keys)
            if name is None:
                return _refuse(403, "wrong_api_key", "the API key is not one of this service's keys")
            request.state.api_key = name
        try:
            response = await call_next(request)
        except BaseException:
            await _release(request)
            raise
        if response.status_code >= 400:
            await _release(request)
        return response

    async def _release(request: Request) -> None:
        """A request that failed after claiming a per-key slot (e.g. no worker had room) gives it back."""
        for kind, owner, item in getattr(request.state, "claims", []):
            try:
                await backend.release_slot(kind, owner, item)
            except Exception:  # noqa: BLE001 - the claim then lapses after CLAIM_GRACE_S
                log.warning("could not release a per-key claim", exc_info=True)

    return check


# ============================================================================ per-key limits

# A claim whose record is not written yet counts this long (the request that made it is between its
# claim and its first write, a few milliseconds); deletes release their claim at once, expired sessions
# and finished jobs are older than this and are pruned when next counted.
CLAIM_GRACE_S = 5.0


async def admit(backend: Any, request: Request, kind: str, item: str, limit: int,
                live: Callable[[str], Awaitable[bool]]) -> bool:
    """Claim a slot of the request's API key for `item` (a session or job id) if the key holds fewer than
    `limit` live items; False (nothing kept) when it is full. Claim first, count after: two requests at
    once can both be refused, never both admitted past the limit. Items whose record is gone (deleted,
    expired, a finished job) are pruned as they are counted, so the count goes down by itself. The claim
    is noted on the request: if the request then fails, the middleware releases it."""
    owner = getattr(request.state, "api_key", None)
    if not owner or limit <= 0:
        return True
    await backend.claim_slot(kind, owner, item)
    now, n = time.time(), 0
    for other, since in await backend.slots(kind, owner):
        if other == item or await live(other):
            n += 1
        elif now - since > CLAIM_GRACE_S:
            await backend.release_slot(kind, owner, other)
        else:
            n += 1  # being created by another request
    if n > limit:
        await backend.release_slot(kind, owner, item)
        return False
    request.state.claims = [*getattr(request.state, "claims", []), (kind, owner, item)]
    return True

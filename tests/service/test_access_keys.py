"""API keys (service.access) on the real app with the in-process backend: what needs a key, the JSON
answers, keys kept only as digests, per-key claims released when a creation fails."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.access import admit, key_digest, match_key, normalize_api_keys, parse_api_keys
from service.api import create_app
from service.backends import MemoryBackend
from service.settings import Settings

ALICE, BOB = "alice-0123456789abcdef", "bob-0123456789abcdef"


def test_keys_are_kept_as_digests_only() -> None:
    s = Settings(api_keys=f"alice:sha256:{key_digest(ALICE).upper()}\nbob:{BOB}")
    assert BOB not in s.api_keys and ALICE not in s.api_keys
    assert s.api_key_hashes == {"alice": key_digest(ALICE), "bob": key_digest(BOB)}
    keys = parse_api_keys(s.api_keys)
    assert match_key(BOB, keys) == "bob" and match_key(ALICE, keys) == "alice"
    assert match_key(BOB + "x", keys) is None
    assert normalize_api_keys("") == "" and Settings().api_key_hashes == {}


@pytest.mark.parametrize("bad", ["nocolon", "a:sha256:abc", "a:short", f"a:{BOB},a:{ALICE}", f"bad name:{BOB}"])
def test_bad_key_settings_fail_without_showing_the_key(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_api_keys(bad)
    assert BOB not in str(e.value) and ALICE not in str(e.value) and "short" not in str(e.value)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buf, "PNG")
    return buf.getvalue()


def test_what_needs_a_key(tmp_path) -> None:  # noqa: ANN001
    b = MemoryBackend()
    s = Settings(results_dir=str(tmp_path), api_keys=f"alice:{ALICE}", max_sessions_per_key=1)
    with TestClient(create_app(s, b)) as c:
        assert c.get("/v1/info").json()["api_key_required"] is True
        for path in ("/healthz", "/metrics", "/", "/openapi.json", "/docs", "/web/js/api.js"):
            assert c.get(path).status_code == 200, path
        r = c.get("/v1/workers")
        assert (r.status_code, r.json()["code"]) == (401, "missing_api_key")
        r = c.get("/v1/workers", headers={"X-API-Key": BOB})
        assert (r.status_code, r.json()["code"]) == (403, "wrong_api_key")
        assert c.get("/v1/workers", headers={"X-API-Key": ALICE}).status_code == 200
        for method, path in (("POST", "/v1/sessions"), ("GET", "/v1/sessions/x"), ("DELETE", "/v1/jobs/x"),
                             ("GET", "/v1/jobs/x"), ("POST", "/v1/jobs")):
            assert c.request(method, path).json()["code"] == "missing_api_key", path
        # a job result link authenticates by its job token alone
        assert c.get("/v1/jobs/x/result").json()["code"] == "unknown_job"

        # no worker: 503, and the claimed per-key slot is given back (else the next try would be 429)
        for _ in range(2):
            r = c.post("/v1/sessions", headers={"X-API-Key": ALICE}, files={"image": ("f.png", _png())},
                       data={"boxes": '{"1": [1, 1, 8, 8]}'})
            assert (r.status_code, r.json()["code"]) == (503, "no_capacity")
        assert b.key_slots[("sessions", "alice")] == {}


def test_no_keys_no_checks(tmp_path) -> None:  # noqa: ANN001
    with TestClient(create_app(Settings(results_dir=str(tmp_path)), MemoryBackend())) as c:
        assert c.get("/v1/info").json()["api_key_required"] is False
        assert c.get("/v1/workers").status_code == 200


def test_admit_counts_live_items_and_prunes_gone_ones() -> None:
    asyncio.run(_admit_story())


async def _admit_story() -> None:
    b = MemoryBackend()

    class Req:  # what admit reads and writes of a request
        class state:  # noqa: N801
            api_key = "alice"

    live = {"s1"}

    async def is_live(item: str) -> bool:
        return item in live

    assert await admit(b, Req, "sessions", "s1", 2, is_live)
    assert await admit(b, Req, "sessions", "s2", 2, is_live)  # s2 being created: counts
    assert not await admit(b, Req, "sessions", "s3", 2, is_live)
    assert "s3" not in dict(await b.slots("sessions", "alice"))
    b.key_slots[("sessions", "alice")]["s2"] = time.time() - 60  # s2 never came to life (or expired)
    assert await admit(b, Req, "sessions", "s3", 2, is_live)
    assert sorted(dict(await b.slots("sessions", "alice"))) == ["s1", "s3"]

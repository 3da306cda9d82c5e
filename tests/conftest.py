"""Shared fixtures: paths to ../shared (optional), tiny seeded weights."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the shared reference material is not next to this clone)")
    return p


@pytest.fixture(scope="session")
def tiny_weights_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.testing import tiny_weights

    return tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")

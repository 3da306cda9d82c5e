"""`lwl --version` prints `lwl-vos <version>` and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service import __version__
from service.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"lwl-vos {__version__}"


def test_version_from_the_command_line() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "service.cli", "--version"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"lwl-vos {__version__}\n"

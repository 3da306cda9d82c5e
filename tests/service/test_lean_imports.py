"""The run-time paths work without the `[train]` extra (and scipy, a test/bench tool).

A fresh interpreter refuses to import matplotlib, scikit-image and scipy, then builds the `lwl` command line,
the api (with /docs) and the worker, and runs `lwl segment` on a small video with a tiny model: a module-level
import of one of them anywhere on those paths fails here, as it would after `pip install lwl-vos`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from model.media import write_label_png

ROOT = Path(__file__).resolve().parents[2]
NOT_AT_RUN_TIME = ("matplotlib", "skimage", "scipy")

SCRIPT = textwrap.dedent("""
    import sys

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (refused by the test)")
            return None

    sys.meta_path.insert(0, Refuse())
    from fastapi.testclient import TestClient

    import model.api
    import service.worker
    from service.api import create_app
    from service.backends import MemoryBackend
    from service.cli import main
    from service.settings import Settings

    try:
        main(["--version"])  # builds every subcommand's parser, train and eval included
    except SystemExit as exc:
        assert exc.code == 0, exc.code
    with TestClient(create_app(Settings(results_dir=sys.argv[1]), MemoryBackend())) as c:
        assert c.get("/docs").status_code == 200 and c.get("/redoc").status_code == 200
    sys.exit(main(["segment", sys.argv[2], "--mask", sys.argv[3], "--weights", sys.argv[4], "--size", "64x112",
                   "--device", "cpu", "--quiet", "--out", sys.argv[5]]))
""").format(blocked=set(NOT_AT_RUN_TIME))


def test_run_time_paths_do_not_import_train_only_packages(tmp_path: Path) -> None:
    import av

    from model.testing import tiny_weights

    weights = tiny_weights(tmp_path / "tiny.safetensors")
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as box:
        stream = box.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(4):
            img = np.full((120, 160, 3), 90, np.uint8)
            img[30 + 2 * i : 70 + 2 * i, 40 + 3 * i : 90 + 3 * i] = (220, 60, 60)
            box.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        box.mux(stream.encode(None))
    mask = np.zeros((120, 160), np.uint8)
    mask[30:70, 40:90] = 1
    write_label_png(tmp_path / "mask.png", mask)
    out = tmp_path / "masks"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "results"), str(video), str(tmp_path / "mask.png"),
                        str(weights), str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert len(list(out.glob("*.png"))) == 4

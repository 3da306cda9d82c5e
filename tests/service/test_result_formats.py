"""Result formats of video jobs are declared once (model.outputs.RESULT_FORMATS): /v1/info lists them for
the SDK and the web page, the result route takes exactly those, and each writer writes its file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.outputs import RESULT_FORMATS, job_outputs
from model.video import ObjectInfo, SegmentedFrame
from service.api import create_app
from service.backends import MemoryBackend
from service.settings import Settings


def test_info_lists_the_registered_formats_and_the_result_route_takes_only_those(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(results_dir=str(tmp_path)), MemoryBackend())) as c:
        listed = c.get("/v1/info").json()["result_formats"]
        assert [f["name"] for f in listed] == list(RESULT_FORMATS)
        assert all(f["file"] and f["media_type"] and f["label"] for f in listed)
        r = c.get(f"/v1/jobs/{'0' * 32}/result", params={"format": "gif", "token": "t"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request"
        r = c.get(f"/v1/jobs/{'0' * 32}/result", params={"format": "rle", "token": "t"})
        assert r.status_code == 404 and r.json()["code"] == "unknown_job"


def test_job_outputs_write_every_registered_file_or_none(tmp_path: Path) -> None:
    labels = np.zeros((32, 48), np.uint8)
    labels[4:12, 6:20] = 1
    frames = [SegmentedFrame(i, f"{i:05d}", np.full((32, 48, 3), 80, np.uint8), labels,
                             {1: ObjectInfo((6.0, 4.0, 14.0, 8.0), 0.9, int((labels == 1).sum()))}) for i in range(3)]
    assert job_outputs(tmp_path, {"job_id": "j", "fps": 10}).write_all(iter(frames)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.file for f in RESULT_FORMATS.values())
    assert zipfile.ZipFile(tmp_path / RESULT_FORMATS["png"].file).namelist() == ["00000.png", "00001.png", "00002.png"]
    rle = json.loads((tmp_path / RESULT_FORMATS["rle"].file).read_text())
    assert rle["job_id"] == "j" and [f["frame_index"] for f in rle["frames"]] == [0, 1, 2]

    def broken():  # noqa: ANN202
        yield frames[0]
        raise RuntimeError("decoder failed")

    failed = tmp_path / "failed"
    failed.mkdir()
    with pytest.raises(RuntimeError, match="decoder failed"):
        job_outputs(failed, {"job_id": "j"}).write_all(broken())
    assert list(failed.iterdir()) == []  # nothing half written stays

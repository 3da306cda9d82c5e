"""The torch-free half of the model's contract: what a process that runs no model code (the api, the
SDK, the wire format) needs of the model, importable without loading torch. `model.api` re-exports all
of it, so code that has the model loaded anyway needs one door only.

Everything here is numpy, Pillow and (for videos) PyAV.
"""

from __future__ import annotations

import argparse

import numpy as np

from model.boxes import clip_box
from model.config import parse_size
from model.media import (
    DAVIS_PALETTE,
    PNG_RLE,
    FrameSource,
    encode_label_png,
    probe_video,
    read_image,
    read_label_png,
    write_label_png,
)
from model.outputs import RESULT_FORMATS, ResultFormat, job_outputs
from model.rle import rle_decode, rle_encode
from model.state_header import read_state_header
from model.video import Annotation, SegmentedFrame

__all__ = ["DAVIS_PALETTE", "PNG_RLE", "RESULT_FORMATS", "Annotation", "FrameSource", "ResultFormat", "SegmentedFrame",
           "clip_box", "encode_label_png", "job_outputs", "mask_ids", "object_ids", "palette", "parse_size",
           "probe_video", "read_image", "read_label_png", "read_state_header", "register_cli", "rle_decode",
           "rle_encode", "write_label_png"]


def palette() -> list[list[int]]:
    """The 256 RGB colours of every label PNG (object id -> colour), as plain lists for JSON."""
    return DAVIS_PALETTE.tolist()


def mask_ids(labels: np.ndarray) -> list[int]:
    """The object ids a label map holds (0 is background, 255 the DAVIS 'void' label)."""
    return Annotation(mask=labels).mask_ids()


def object_ids(mask: np.ndarray | None, boxes: dict[int, tuple] | None) -> list[int]:
    """The object ids a mask and boxes start together (what the object limit counts)."""
    return Annotation(mask, boxes).ids()


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add the model's commands (segment, convert, train, eval) to the `lwl` parser's subcommands. Their
    heavy imports (torch) happen when a command runs, so `lwl api` stays torch-free."""
    from model.cli import register

    register(sub)

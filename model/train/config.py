"""Training configuration: one YAML file per recipe (model/train/configs/*.yaml).

A recipe is a network preset plus an ordered list of phases (e.g. warm-up, mini-sequences, box
encoder). Each phase names the parameter groups it trains by state-dict prefix with their learning
rates; every parameter not matched by a prefix is frozen. This expresses the paper's stage 1 (backbone
frozen), stage 2 (layers 2-4 trained) and box-init (only the box encoder) with one mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from model.config import NetConfig, TrackerParams


@dataclass
class PhaseConfig:
    """One training phase; `mode` is 'single' (warm-up), 'sequence' or 'box'."""

    name: str
    mode: str = "sequence"
    steps: int = 1000
    batch_size: int = 20
    lr: dict[str, float] = field(default_factory=dict)  # state-dict prefix -> Adam learning rate
    milestones: list[int] = field(default_factory=list)  # phase-local steps where lr *= gamma
    gamma: float = 0.2
    loss_weight: float = 100.0
    direct_weight: float = 0.0  # single mode: also segment the train frame through the decoder alone
    direct_input: str = "mask"  # what the decoder gets there: "mask" = E(mask), "none" = zero scores
    bce_weight: float = 0.0  # extra BCE term (0 = the reference loss); helps training from scratch
    num_train: int = 1
    num_test: int = 3
    max_gap: int = 100
    max_gap_start: int | None = None  # grow the gap linearly from this to max_gap over the phase
    min_gap: int = 0  # test frames at least this many frames after the train frame (harder sampling)
    num_init_iter: int = 5
    num_update_iter: int = 2
    eval_mode: bool = False  # whole network in eval mode (box phase: everything but B is frozen)
    freeze_bn: bool = False  # BatchNorm uses its running statistics (as at inference); affines still train
    data: list[dict[str, Any]] | None = None  # overrides the recipe's data for this phase
    processing: dict[str, Any] = field(default_factory=dict)  # ProcessingParams overrides
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    """The whole recipe; paths are relative to the working directory (run from the repository root)."""

    name: str
    out_dir: str
    net: dict[str, Any]
    phases: list[PhaseConfig]
    data: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    init_weights: str | None = None  # project safetensors or pytracking .pth to start from
    init_backbone: str | None = None  # state dict for `feature_extractor` only (stage 1)
    export_to: str | None = None  # copy the final model here (e.g. the bundled weights)
    export_dtype: str = "float32"  # "float16" halves the shipped file (the repo limit is 50 MB)
    tracker_preset: str | None = None  # recorded in the weights; None: lwl_boxinit after a box phase
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op threads, 0 = torch default
    checkpoint_minutes: float = 5.0
    val_minutes: float = 30.0
    log_every: int = 10
    description: str = ""

    def net_config(self) -> NetConfig:
        d = dict(self.net)
        d.pop("ablation", None)  # not an architecture field (see model.ablation)
        preset = d.pop("preset", None)
        base = {"compact": NetConfig.compact, "official_stage2": NetConfig.official_stage2,
                "official_boxinit": NetConfig.official_boxinit}
        if preset is None:
            return NetConfig.from_dict(d)
        if preset not in base:
            raise ValueError(f"unknown net preset {preset!r} (one of {sorted(base)})")
        merged = {**base[preset]().to_dict(), **d}
        return NetConfig.from_dict(merged)


# What a recipe must say itself even when it names a `base`: what it trains and where it writes.
# Inheriting these would resume the base's checkpoint or overwrite its export.
OWN_KEYS = frozenset({"name", "description", "out_dir", "init_weights", "init_backbone", "export_to",
                      "phases"})


def read_recipe(path: str | Path, _seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """The recipe's mapping with its `base` (a recipe path relative to this file) merged in: the
    base supplies the shared settings (network, data, validation split, cadence), so a follow-up
    recipe cannot drift from them; top-level keys of the recipe replace the base's, except `net`,
    whose keys are merged into the base's."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: recipe bases form a cycle")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a mapping")
    base_name = raw.pop("base", None)
    if base_name is None:
        return raw
    base = read_recipe(path.parent / base_name, _seen | {path})
    shared = {k: v for k, v in base.items() if k not in OWN_KEYS}
    if isinstance(shared.get("net"), dict) and isinstance(raw.get("net"), dict):
        raw["net"] = {**shared["net"], **raw["net"]}  # e.g. `net: {ablation: raw_labels}` keeps the base's net
    return {**shared, **raw}


def load_config(path: str | Path) -> TrainConfig:
    """Parse a recipe; unknown keys are errors so typos do not silently change training."""
    raw = read_recipe(path)
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    missing = {"name", "out_dir"} - set(raw)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)} (a base recipe never supplies them)")
    phase_known = {f.name for f in fields(PhaseConfig)}
    phases = []
    for p in raw.get("phases", []):
        bad = set(p) - phase_known
        if bad:
            raise ValueError(f"{path}: phase {p.get('name')!r} has unknown keys {sorted(bad)}")
        phases.append(PhaseConfig(**p))
    if not phases:
        raise ValueError(f"{path}: no phases")
    for ph in phases:
        if ph.mode not in ("single", "sequence", "box"):
            raise ValueError(f"{path}: phase {ph.name!r} has unknown mode {ph.mode!r}")
        if ph.direct_input not in ("mask", "none"):
            raise ValueError(f"{path}: phase {ph.name!r} has unknown direct_input {ph.direct_input!r}")
    if raw.get("tracker_preset") is not None:
        try:
            TrackerParams.preset(raw["tracker_preset"])
        except ValueError as exc:
            raise ValueError(f"{path}: tracker_preset: {exc}") from None
    raw["phases"] = phases
    raw.setdefault("net", {"preset": "compact"})
    _check_backbone_source(path, raw, phases)
    return TrainConfig(**raw)


def _check_backbone_source(path: str | Path, raw: dict[str, Any], phases: list[PhaseConfig]) -> None:
    """A backbone that no phase trains must start from trained weights: frozen at its random init, every
    later phase learns on noise features (an hour of CPU for a model below copying the first mask)."""
    trains_backbone = any("feature_extractor.".startswith(k) or k.startswith("feature_extractor.")  # "" = all
                          for ph in phases for k in ph.lr)
    if not trains_backbone and not raw.get("init_backbone") and not raw.get("init_weights"):
        raise ValueError(f"{path}: no phase trains the backbone (feature_extractor) and neither init_backbone "
                         "nor init_weights gives it weights: it would stay random (a recipe's init_backbone "
                         "is its own, not taken from its base)")

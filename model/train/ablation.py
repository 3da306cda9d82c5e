"""The ablation baseline for training: defined in `model.ablation`, where inference loads it too
(a loaded ablation checkpoint needs the swap, and inference never imports `model.train`)."""

from model.ablation import RAW_LABELS, RawMaskLabels, apply_ablation

__all__ = ["RAW_LABELS", "RawMaskLabels", "apply_ablation"]

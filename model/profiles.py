"""Named profiles of the bundled model: which weights and which tracker schedule a user gets by name.

`fast` is what `load_model()`, sessions, jobs and `lwl segment` use unless asked otherwise: a lighter
network (decoder width 16, 128 target-model features) whose learner refines its target model on every
`train_skipping`-th frame (every 3rd), live on a CPU. `accurate` is the full-width network with the paper's
schedule (a refinement on every frame). Both are trained by `make train-default`; each profile's J&F
and speed are in README's model table. Official checkpoints (and any weights file a user passes) are
not profiles: they run with the schedule their weights declare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import InputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Profile:
    """A bundled weights file and the tracker parameters it runs with (on top of its preset)."""

    name: str
    weights: Path
    params: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


PROFILES: dict[str, Profile] = {
    "fast": Profile("fast", WEIGHTS_DIR / "fast.safetensors", {"train_skipping": 3},
                    "live streams on a CPU: lighter decoder and target model, target model refined every 3rd frame"),
    "accurate": Profile("accurate", WEIGHTS_DIR / "accurate.safetensors", {},
                        "full-width network, target model refined on every frame (the paper's schedule)"),
}
DEFAULT_PROFILE = "fast"


def get_profile(name: str | None) -> Profile:
    """The profile called `name` (None: the default), or an InputError naming the choices."""
    name = name or DEFAULT_PROFILE
    if name not in PROFILES:
        raise InputError(f"unknown profile {name!r}: choose {' or '.join(PROFILES)}")
    return PROFILES[name]

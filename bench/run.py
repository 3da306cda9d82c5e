"""Tracker speed: frames per second per configuration, written to bench/results.json and a bar plot.

Runs on whatever device `auto` picks. Times each bundled profile (fast, accurate) whose weights are
present and the official ResNet-50 architecture with random weights (same cost as the released
checkpoints); each configuration's frame is also given as a ratio to a fixed reference network's
forward on the same frame, timed alternately in the same process.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from model.api import PROFILES, Model, load_model, resolve_device
from model.config import NetConfig, TrackerParams
from model.fuse import fuse_batchnorm
from model.network import build_network
from model.threads import set_cpu_threads


def official_random(device: torch.device) -> Model:
    cfg = NetConfig.official_stage2()
    net = build_network(cfg).eval().to(device)
    with torch.no_grad():
        net.feature_extractor.bn1.running_var.fill_(4096.0)
    fuse_batchnorm(net)  # as load_model does with the released checkpoints
    return Model(net, cfg, TrackerParams.lwl_ytvos(), device, "official-architecture (random weights)")


def clip(n: int, hw: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Two squares moving over noise."""
    h, w = hw
    rng = np.random.default_rng(0)
    base = (rng.random((h, w, 3)) * 100 + 50).astype(np.uint8)
    frames = []
    for i in range(n):
        f = base.copy()
        f[h // 4 + i: h // 2 + i, w // 5 + 2 * i: w // 2 + 2 * i] = (220, 40, 40)
        frames.append(f)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: h // 2, w // 5: w // 2] = 1
    return frames, mask


FULL_MEMORY = 33  # frames after which the 32-sample memory is full: the steady-state cost


def reference_net() -> torch.nn.Module:
    """The fixed yardstick: torchvision's MobileNetV3-Large (random weights, eval mode). Its forward on the
    same frame, timed alternately with the tracker's frames in the same process, cancels the machine's
    drift (2-4x here between runs): frame time / reference time is comparable across runs and machines."""
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(0)
    return mobilenet_v3_large().eval()


def time_tracker(model: Model, crop: tuple[int, int], frames: list[np.ndarray], mask: np.ndarray,
                 ref: torch.nn.Module, params: TrackerParams | None = None) -> dict:
    """Mean time per frame once the memory is full, the reference network's forward on the same frame
    timed right after each of those frames, and the floor: the bare backbone on one crop. `params`
    replaces the model's tracker parameters (another refinement schedule, say)."""
    tr = model.new_tracker(crop, params)
    t0 = time.perf_counter()
    tr.step(frames[0], mask=mask)
    init_s = time.perf_counter() - t0
    times, ref_times = [], []
    for i, f in enumerate(frames[1:], start=1):
        t = time.perf_counter()
        tr.step(f)
        times.append(time.perf_counter() - t)
        if i > FULL_MEMORY:
            ref_times.append(_forward_s(ref, f))
    steady = times[FULL_MEMORY:] or times
    # the mean, not the median: a profile that refines its target model every k-th frame has a dear
    # frame every k frames, and frames/s is what a stream gets over all of them
    mean, med = float(np.mean(steady)), float(np.median(steady))
    ref_med = float(np.median(ref_times or [_forward_s(ref, frames[0])]))
    return {"init_s": round(init_s, 3), "mean_frame_s": round(mean, 4), "median_frame_s": round(med, 4),
            "fps": round(1 / mean, 2), "reference_s": round(ref_med, 4), "frame_vs_reference": round(mean / ref_med, 3),
            "floor_fps": round(1 / backbone_floor(model, crop), 2),
            "state_mb": round(len(tr.export_state()) / 2**20, 1)}


def _forward_s(net: torch.nn.Module, frame: np.ndarray) -> float:
    x = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float() / 255
    with torch.inference_mode():
        t = time.perf_counter()
        net(x)
        return time.perf_counter() - t


def backbone_floor(model: Model, crop: tuple[int, int], reps: int = 7) -> float:
    """Median seconds of the backbone forward alone on one crop: no tracker can be faster than this."""
    from model.target import extract_features

    patch = torch.rand(1, 3, *crop) * 255
    out = []
    with torch.inference_mode():
        extract_features(model.net, patch, model.device)
        for _ in range(reps):
            t = time.perf_counter()
            extract_features(model.net, patch, model.device)
            out.append(time.perf_counter() - t)
    return float(np.median(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=60, help="at least 34: the memory fills after 33 frames")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (default: as the library chooses, the cores this process may use)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench/results.json")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    set_cpu_threads(args.threads)
    ref = reference_net()
    previous = {}
    if Path(args.out).is_file():  # the last run's figures, to report each configuration against
        old = json.loads(Path(args.out).read_text())
        previous = {(r["model"], r["crop"]): r["fps"] for r in old.get("results", [])}
    frames, mask = clip(args.frames, (480, 854))
    runs = []
    for name, prof in PROFILES.items():  # the bundled models, by profile (schedule included)
        if prof.weights.is_file():
            m = load_model(None, str(dev), threads=None, profile=name)
            runs.append((f"bundled {name}", m, m.default_crop_size))
    off = official_random(dev)
    runs += [("official ResNet-50", off, (240, 416)), ("official ResNet-50", off, (480, 832))]
    results = []
    for name, model, crop in runs:
        r = time_tracker(model, crop, frames, mask, ref)
        r.update(model=name, crop=f"{crop[0]}x{crop[1]}", previous_fps=previous.get((name, f"{crop[0]}x{crop[1]}")))
        results.append(r)
        before = f"was {r['previous_fps']:.2f}" if r["previous_fps"] else "no previous run"
        print(f"{name:22s} crop {r['crop']:8s} init {r['init_s']:6.2f} s   {r['mean_frame_s']:.3f} s/frame "
              f"({r['fps']:.2f} fps, {before}; {r['frame_vs_reference']:.2f}x the reference network's forward; "
              f"backbone alone {r['floor_fps']:.2f} fps)   state {r['state_mb']} MB")
    meta = {"device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "frame": "854x480", "objects": 1,
            "frames": args.frames, "timed": f"mean of frames {FULL_MEMORY + 1}..{args.frames - 1} (memory full)",
            "reference": "torchvision mobilenet_v3_large forward on the 854x480 frame, timed after each frame"}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    labels = [f"{r['model']}\n{r['crop']}" for r in results]
    y = np.arange(len(results))
    ax.barh(y + 0.2, [r["floor_fps"] for r in results], 0.4, color="#c9d6e3", label="backbone alone (floor)")
    ax.barh(y - 0.2, [r["fps"] for r in results], 0.4, color="#4a7fb5", label="tracker")
    ax.set_yticks(y, labels)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(f"frames per second ({dev}, {meta['threads']} threads, 1 object, 854x480)")
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=120)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")


if __name__ == "__main__":
    main()

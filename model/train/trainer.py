"""The trainer behind `lwl train CONFIG`: phases, parameter groups, checkpoints, resume, logs, plot.

Design choices (why):
* Phases in one run (warm-up -> mini-sequences -> box encoder) so the bundled model retrains with one
  command; paper stages are separate recipes chained through `init_weights`.
* A resumable checkpoint (`last.pt`: weights, optimiser, step counters, RNG states) is written every
  few minutes because CPU runs outlive the sessions that start them.
* Metrics go to `metrics.jsonl` (one JSON object per line, append-only, survives crashes) and are
  re-plotted into `training.png` at every checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.api import resolve_device
from model.config import NetConfig
from model.network import LWLNet, build_network
from model.threads import available_cpus, set_cpu_threads
from model.train.ablation import apply_ablation
from model.train.composite import CompositeParams, CompositeSource
from model.train.config import PhaseConfig, TrainConfig
from model.train.datasets import (
    CocoDataset,
    DavisDataset,
    VideoSource,
    YouTubeVOSDataset,
    read_labels,
    read_rgb,
)
from model.train.lovasz import lovasz_sigmoid
from model.train.pretrained import backbone_state
from model.train.processing import LWLProcessing, ProcessingParams, collate
from model.train.sampler import MiniSequenceSampler
from model.train.synthetic import SyntheticSource


def check_data_folders(cfg: TrainConfig) -> None:
    """Every data folder the recipe names exists, before anything is built (a missing data set is the
    commonest mistake; found at a phase start it would be a traceback an hour in)."""
    specs = [*cfg.data, *(cfg.validation and [cfg.validation] or [])]
    specs += [d for ph in cfg.phases for d in (ph.data or [])]
    for spec in specs:
        for key in ("root", "copy_paste_from", "sprites_from"):
            if spec.get(key) and not Path(spec[key]).is_dir():
                raise FileNotFoundError(f"data folder {spec[key]} ({spec.get('type', 'data')} {key}) not found: "
                                        "get the data set there or change the recipe")


def copy_paste_pool(root: str | Path, exclude: list[str], every: int = 8, max_items: int = 120
                    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """Object cut-outs (rgb, mask) and background frames from a DAVIS-layout set, for synthetic clips."""
    ds = DavisDataset(root, exclude=exclude)
    sprites, bgs = [], []
    for si, seq in enumerate(ds.sequences):
        for fi in seq.annotated[::every]:
            img = read_rgb(seq.frames[fi])
            ann = seq.annotations[fi]
            assert ann is not None
            lab = read_labels(ann)
            bgs.append(img)
            for oid in np.unique(lab):
                if oid in (0, 255):
                    continue
                ys, xs = np.nonzero(lab == oid)
                if len(xs) < 400:
                    continue
                y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
                sprites.append((img[y0:y1, x0:x1].copy(), (lab[y0:y1, x0:x1] == oid)))
        if len(sprites) >= max_items:
            break
        del si
    return sprites, bgs[:max_items]


def build_sources(specs: list[dict[str, Any]], crop: tuple[int, int]) -> list[tuple[Any, float]]:
    """Instantiate the datasets of a recipe's `data` list."""
    out: list[tuple[Any, float]] = []
    for spec in specs:
        s = dict(spec)
        kind = s.pop("type")
        weight = float(s.pop("weight", 1.0))
        src: VideoSource | SyntheticSource
        if kind == "davis":
            src = DavisDataset(s["root"], sequences=s.get("sequences"), exclude=s.get("exclude", ()),
                               split=s.get("split"))
        elif kind == "youtubevos":
            src = YouTubeVOSDataset(s["root"], videos=s.get("videos"), exclude=s.get("exclude", ()))
        elif kind == "coco":
            src = CocoDataset(s["images"], s["annotations"])
        elif kind == "composite":
            sprites, _ = copy_paste_pool(s["sprites_from"], list(s.get("exclude", ())))
            params = CompositeParams(**s.get("params", {}))
            src = CompositeSource(s["root"], sprites, params, sequences=s.get("sequences"),
                                  exclude=s.get("exclude", ()))
        elif kind == "synthetic":
            sprites = bgs = None
            if s.get("copy_paste_from") and Path(s["copy_paste_from"]).is_dir():
                sprites, bgs = copy_paste_pool(s["copy_paste_from"], list(s.get("exclude", ())))
            size = tuple(s.get("size", crop))
            src = SyntheticSource((int(size[0]), int(size[1])), int(s.get("max_objects", 3)), sprites, bgs)
        else:
            raise ValueError(f"unknown dataset type {kind!r}")
        out.append((src, weight))
    return out


def param_groups(net: nn.Module, lrs: dict[str, float]) -> list[dict[str, Any]]:
    """Adam groups by longest matching state-dict prefix; unmatched parameters are frozen."""
    groups: dict[str, list[nn.Parameter]] = {k: [] for k in lrs}
    prefixes = sorted(lrs, key=len, reverse=True)
    for name, p in net.named_parameters():
        match = next((k for k in prefixes if name == k or name.startswith(k + ".") or k == ""), None)
        p.requires_grad_(match is not None)
        if match is not None:
            groups[match].append(p)
    return [{"params": ps, "lr": lrs[k], "initial_lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def batch_iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean IoU of thresholded predictions (empty/empty counts 1), a cheap training-time signal."""
    pred = logits > 0
    gt = masks > 0.5
    inter = (pred & gt).flatten(2).sum(-1).float()
    union = (pred | gt).flatten(2).sum(-1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return float(iou.mean())


class StopRequest:
    """Set by SIGINT/SIGTERM while a run is active: the loop finishes its step, checkpoints and
    returns, so Ctrl-C or `kill` (or a container stop) never loses the steps since the last save.
    A second signal aborts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class Trainer:
    """Runs a recipe; `run()` returns the path of the exported weights."""

    def __init__(self, cfg: TrainConfig, fresh: bool = False, max_minutes: float | None = None,
                 max_steps: int | None = None, progress: bool = True, log=print) -> None:
        check_data_folders(cfg)
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.device)
        self.adaptive_threads = cfg.threads == 0 and self.device.type == "cpu"
        if cfg.threads:
            set_cpu_threads(cfg.threads)
        elif self.adaptive_threads:
            adapt_threads(busy_self=0)
        self.max_minutes = max_minutes
        self.max_steps = max_steps
        self.progress = progress
        self.log = log
        self.net_cfg: NetConfig = cfg.net_config()
        self.ablation = cfg.net.get("ablation") if isinstance(cfg.net, dict) else None
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.net: LWLNet = build_network(self._arch_cfg()).to(self.device)
        apply_ablation(self.net, self.ablation)
        self.phase_idx = 0
        self.phase_step = 0
        self.global_step = 0
        self.elapsed = 0.0
        self.optimizer: torch.optim.Optimizer | None = None
        self._resume_opt_state: dict | None = None
        self._rng_states: dict[str, Any] | None = None
        ckpt = self.out / "last.pt"
        if ckpt.exists() and not fresh:
            self._load_checkpoint(ckpt)
        else:
            self._init_weights()
        (self.out / "config.json").write_text(json.dumps(
            {"train": {**asdict(cfg), "phases": [asdict(p) for p in cfg.phases]},
             "net": self.net_cfg.to_dict()},
            indent=1, default=str))

    def _arch_cfg(self) -> NetConfig:
        d = self.net_cfg.to_dict()
        return NetConfig.from_dict(d)

    # -- weights ----------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        if self.cfg.init_weights:
            from model.checkpoint import read_weights

            w = read_weights(self.cfg.init_weights)
            made_by = (w.meta.get("trained") or {}).get("recipe")
            if made_by == self.cfg.name:
                raise ValueError(f"init_weights {self.cfg.init_weights} were made by this recipe ({made_by}): a "
                                 "recipe that continues a file it also replaces must start from the file the "
                                 "recipe before it wrote (rerun that one first)")
            missing, unexpected = self.net.load_state_dict(w.state_dict, strict=False)
            self.log(f"init from {self.cfg.init_weights}: {len(missing)} missing keys (new modules), "
                     f"{len(unexpected)} unexpected")
            if unexpected:
                raise ValueError(f"init weights have keys this network lacks: {unexpected[:5]}")
        if self.cfg.init_backbone:
            sd = backbone_state(self.cfg.init_backbone)
            self.net.feature_extractor.load_state_dict(sd, strict=True)
            self.log(f"backbone from {self.cfg.init_backbone}")

    def _save_checkpoint(self, sampler: MiniSequenceSampler | None, proc: LWLProcessing | None) -> None:
        state = {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "phase_idx": self.phase_idx, "phase_step": self.phase_step, "global_step": self.global_step,
            "elapsed": self.elapsed,
            "rng": {"torch": torch.get_rng_state(),
                    "sampler": sampler.rng.bit_generator.state if sampler else None,
                    "proc": proc.rng.bit_generator.state if proc else None},
        }
        tmp = self.out / "last.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "last.pt")

    def _load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.net.load_state_dict(state["net"])
        self.phase_idx = state["phase_idx"]
        self.phase_step = state["phase_step"]
        self.global_step = state["global_step"]
        self.elapsed = state.get("elapsed", 0.0)
        self._resume_opt_state = state.get("optimizer")
        self._rng_states = state.get("rng")
        if self._rng_states and self._rng_states.get("torch") is not None:
            torch.set_rng_state(self._rng_states["torch"])
        self.log(f"resumed from {path}: phase {self.phase_idx} step {self.phase_step} "
                 f"(global {self.global_step})")

    def export(self, path: Path, phase: str, dtype: str = "float32") -> Path:
        """Write the project's weights format (safetensors + JSON config) for this network."""
        meta = {"trained": {"recipe": self.cfg.name, "phase": phase, "global_step": self.global_step,
                            "hours": round(self.elapsed / 3600, 3)}}
        if self.ablation:
            meta["ablation"] = self.ablation
        preset = self.cfg.tracker_preset or (
            "lwl_boxinit" if phase and self._phase_mode(phase) == "box" else "lwl_ytvos")
        sd = self.net.state_dict()
        if dtype != "float32":
            target = getattr(torch, dtype)
            sd = {k: v.to(target) if v.is_floating_point() else v for k, v in sd.items()}
            meta["stored_dtype"] = dtype
        return save_weights(path, sd, self.net_cfg, preset, meta)

    def _phase_mode(self, name: str) -> str:
        return next((p.mode for p in self.cfg.phases if p.name == name), "sequence")

    # -- logging ----------------------------------------------------------------------------------
    def _write_metrics(self, rec: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def plot(self) -> Path | None:
        """Loss (smoothed) and validation scores against the step, as a PNG."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return None
        recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        return plot_metrics(recs, self.out / "training.png", self.cfg.name)

    # -- phases -----------------------------------------------------------------------------------
    def _phase_objects(self, ph: PhaseConfig) -> tuple[MiniSequenceSampler, LWLProcessing]:
        crop = tuple(self.net_cfg.crop_size)
        specs = ph.data if ph.data is not None else self.cfg.data
        sources = build_sources(specs, crop)  # type: ignore[arg-type]
        box = ph.mode == "box"
        sampler = MiniSequenceSampler(sources, num_train=ph.num_train, num_test=0 if box else ph.num_test,
                                      max_gap=ph.max_gap, same_frame=ph.mode == "single",
                                      seed=self.cfg.seed * 1000 + self.phase_idx, min_gap=ph.min_gap)
        pp = {"crop_size": crop, "affine": not box, **ph.processing}
        if "crop_size" in ph.processing:
            pp["crop_size"] = tuple(ph.processing["crop_size"])
        proc = LWLProcessing(ProcessingParams(**pp), seed=self.cfg.seed * 1000 + self.phase_idx + 1)
        if self._rng_states:
            if self._rng_states.get("sampler"):
                sampler.rng.bit_generator.state = self._rng_states["sampler"]
            if self._rng_states.get("proc"):
                proc.rng.bit_generator.state = self._rng_states["proc"]
            self._rng_states = None
        return sampler, proc

    def _set_mode(self, ph: PhaseConfig) -> None:
        """Train/eval mode for the phase. `freeze_bn` makes training see the normalisation the tracker
        sees (running statistics, one frame at a time) instead of statistics of a batch of 4 crops."""
        if ph.eval_mode:
            self.net.eval()
            return
        self.net.train()
        if ph.freeze_bn:
            self.net.freeze_batchnorm()

    def _lr_factor(self, ph: PhaseConfig) -> float:
        return ph.gamma ** sum(1 for m in ph.milestones if self.phase_step >= m)

    def _current_gap(self, ph: PhaseConfig) -> int:
        if ph.max_gap_start is None:
            return ph.max_gap
        frac = min(1.0, self.phase_step / max(1, ph.steps))
        return int(round(ph.max_gap_start + frac * (ph.max_gap - ph.max_gap_start)))

    def compute_loss(self, ph: PhaseConfig, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        """The phase's loss on a collated batch; returns (loss, IoU of the predictions)."""
        b = {k: v.to(self.device) for k, v in batch.items()}
        if ph.mode == "box":
            imgs = b["train_images"].reshape(-1, *b["train_images"].shape[-3:])
            logits = self.net.forward_box(imgs, b["train_boxes"].reshape(-1, 4))
            masks = b["train_masks"].reshape(-1, *b["train_masks"].shape[-2:])
            loss = self._loss(ph, logits, masks) / ph.num_train
            return loss, batch_iou(logits[None], masks[None])
        if ph.mode == "single" and ph.direct_weight:
            return self._single_with_direct(ph, b)
        logits = self.net(b["train_images"], b["test_images"], b["train_masks"],
                          num_init_iter=ph.num_init_iter, num_update_iter=ph.num_update_iter)
        return self._loss(ph, logits, b["test_masks"]), batch_iou(logits, b["test_masks"])

    def _single_with_direct(self, ph: PhaseConfig, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        """Warm-up forward (notes: teach the network to see first): the test frame is segmented through
        the few-shot learner, and the train frame by the decoder alone, which gives the decoder and
        backbone a strong, learner-independent signal while the learner is still poor.

        With `direct_input: mask` the decoder gets E(m) of that very frame, which it can learn to copy
        (little is learnt about images); with `none` it gets zero target scores and must find the
        object from the backbone features: a foreground-segmentation pre-training of F and D, the role
        Mask R-CNN pre-training plays for the paper's backbone."""
        net = self.net
        tr, te = b["train_images"], b["test_images"]
        nb = tr.shape[1]
        size = tuple(tr.shape[-2:])
        feats = net.extract_features(torch.cat((tr, te)).reshape(-1, *tr.shape[-3:]))
        x = net.target_features(feats["layer3"])
        x = x.reshape(-1, nb, *x.shape[-3:])
        ntr = tr.shape[0]
        y, v = net.encode_labels(b["train_masks"])
        tau, _, _ = net.learn(x[:ntr], y, v, ph.num_init_iter)
        feats_tr = {k: f[:ntr * nb] for k, f in feats.items()}  # frame-major: train frames first
        feats_te = {k: f[ntr * nb:] for k, f in feats.items()}
        enc_te = net.target_model.apply(tau, x[ntr:])
        logits_te = net.decoder(enc_te, feats_te, size).reshape(-1, nb, *size)
        enc_tr = y if ph.direct_input == "mask" else torch.zeros_like(y)
        logits_tr = net.decoder(enc_tr, feats_tr, size).reshape(-1, nb, *size)
        loss = self._loss(ph, logits_te, b["test_masks"]) + ph.direct_weight * self._loss(
            ph, logits_tr, b["train_masks"])
        return loss, batch_iou(logits_te, b["test_masks"])

    @staticmethod
    def _loss(ph: PhaseConfig, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """weight x Lovasz, plus optional BCE: from random weights the Lovasz loss alone
        sits at its p = 0.5 plateau (loss = 0.5) for a long time; BCE gives dense gradients to escape it."""
        loss = ph.loss_weight * lovasz_sigmoid(torch.sigmoid(logits), masks)
        if ph.bce_weight:
            loss = loss + ph.bce_weight * F.binary_cross_entropy_with_logits(logits, masks)
        return loss

    def train_step(self, ph: PhaseConfig, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        assert self.optimizer is not None
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * self._lr_factor(ph)
        self.optimizer.zero_grad(set_to_none=True)
        loss, iou = self.compute_loss(ph, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at global step {self.global_step}")
        loss.backward()
        if ph.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           ph.grad_clip)
        self.optimizer.step()
        return float(loss.detach()), iou

    def validate(self, ph: PhaseConfig, full: bool) -> dict[str, Any]:
        """Validation loss/IoU on fixed mini-sequences, plus tracker J&F on held-out videos when full."""
        v = self.cfg.validation
        if not v:
            return {}
        rec: dict[str, Any] = {"type": "val", "step": self.global_step, "phase": ph.name}
        specs = [{k: val for k, val in v.items() if k in ("type", "root", "sequences")}]
        if not Path(v["root"]).is_dir():
            return {}
        crop = tuple(self.net_cfg.crop_size)
        sources = build_sources(specs, crop)
        box = ph.mode == "box"
        sampler = MiniSequenceSampler(sources, num_train=1, num_test=0 if box else ph.num_test,
                                      max_gap=ph.max_gap, same_frame=ph.mode == "single", seed=4321)
        proc = LWLProcessing(ProcessingParams(crop_size=crop, affine=not box), seed=4322)
        n = int(v.get("batches", 2))
        bs = int(v.get("batch_size", 4))
        was_training = self.net.training
        self.net.eval()
        losses, ious = [], []
        with torch.no_grad():
            for _ in range(n):
                batch = collate([proc(sampler.sample()) for _ in range(bs)])
                loss, iou = self.compute_loss(ph, batch)
                losses.append(float(loss))
                ious.append(iou)
        rec["val_loss"] = float(np.mean(losses))
        rec["val_iou"] = float(np.mean(ious))
        if full and v.get("tracker", True) and not box:
            from model.api import Model
            from model.eval.runner import evaluate_davis

            model = Model.from_net(self.net, self.net_cfg, device=self.device)
            _, summ, info = evaluate_davis(model, v["root"], None, v.get("sequences"), v.get("max_frames"))
            rec.update({"J&F": summ.jf_mean, "J": summ.j_mean, "F": summ.f_mean,
                        "val_seconds": round(info["seconds"], 1)})
        if was_training:
            self._set_mode(ph)
        self._write_metrics(rec)
        return rec

    def run(self) -> Path:
        """Train until every phase is done or a limit/signal stops it; the state is saved either way."""
        with StopRequest().installed() as stop_request:
            return self._run(stop_request)

    def _run(self, stop_request: StopRequest) -> Path:
        from tqdm import tqdm

        cfg = self.cfg
        total = sum(p.steps for p in cfg.phases)
        done_before = sum(p.steps for p in cfg.phases[:self.phase_idx]) + self.phase_step
        bar = tqdm(total=total, initial=done_before, disable=not self.progress, dynamic_ncols=True,
                   desc=cfg.name)
        t_start = time.time()
        elapsed0 = self.elapsed
        last_ckpt = time.time()
        last_val = time.time()
        stop = False
        steps_run = 0
        export_path = Path(cfg.export_to) if cfg.export_to else self.out / "model.safetensors"
        while self.phase_idx < len(cfg.phases) and not stop and not stop_request:
            ph = cfg.phases[self.phase_idx]
            sampler, proc = self._phase_objects(ph)
            self._start_phase(ph)
            win_loss: list[float] = []
            win_iou: list[float] = []
            t_win = time.time()
            while self.phase_step < ph.steps:
                sampler.max_gap = self._current_gap(ph)
                t0 = time.time()
                batch = collate([proc(sampler.sample()) for _ in range(ph.batch_size)])
                t_data = time.time() - t0
                loss, iou = self.train_step(ph, batch)
                self.phase_step += 1
                self.global_step += 1
                steps_run += 1
                self.elapsed = elapsed0 + time.time() - t_start
                win_loss.append(loss)
                win_iou.append(iou)
                bar.update(1)
                bar.set_postfix(phase=ph.name, loss=f"{loss:.2f}", iou=f"{iou:.2f}")
                if self.adaptive_threads and self.global_step % 20 == 0:
                    adapt_threads(busy_self=torch.get_num_threads())
                if self.phase_step % cfg.log_every == 0 or self.phase_step == ph.steps:
                    self._log_window(ph, sampler.max_gap, win_loss, win_iou, time.time() - t_win, t_data)
                    win_loss, win_iou, t_win = [], [], time.time()
                now = time.time()
                if now - last_val > cfg.val_minutes * 60:
                    self.validate(ph, full=True)
                    last_val = time.time()
                if now - last_ckpt > cfg.checkpoint_minutes * 60:
                    self._save_checkpoint(sampler, proc)
                    self.plot()
                    last_ckpt = time.time()
                if (self.max_steps is not None and steps_run >= self.max_steps) or (
                        self.max_minutes is not None and now - t_start > self.max_minutes * 60):
                    stop = True
                    break
                if stop_request:
                    self.log(f"signal {stop_request.signal} received: saving the state at global step "
                             f"{self.global_step} (send it again to abort without saving)")
                    stop = True
                    break
            if self.phase_step >= ph.steps:
                self._end_phase(ph)
            else:
                self._save_checkpoint(sampler, proc)
        bar.close()
        return self._finish(export_path)

    def _start_phase(self, ph: PhaseConfig) -> None:
        """A phase's optimizer (the saved Adam state when resuming inside it), and a log line."""
        self._set_mode(ph)
        self.optimizer = torch.optim.Adam(param_groups(self.net, ph.lr), betas=(0.9, 0.999), eps=1e-8)
        if self._resume_opt_state is not None:
            try:
                self.optimizer.load_state_dict(self._resume_opt_state)
            except (ValueError, KeyError) as exc:
                self.log(f"optimizer state not restored ({exc}); starting Adam afresh")
            self._resume_opt_state = None
        n_trainable = sum(p.numel() for g in self.optimizer.param_groups for p in g["params"])
        self.log(f"phase {ph.name} ({ph.mode}): {ph.steps} steps, batch {ph.batch_size}, "
                 f"{n_trainable / 1e6:.2f}M trainable parameters")

    def _log_window(self, ph: PhaseConfig, max_gap: int, win_loss: list[float], win_iou: list[float], dt: float,
                    t_data: float) -> None:
        """One `train` record of metrics.jsonl: the means of the steps since the last one."""
        self._write_metrics({"type": "train", "step": self.global_step, "phase": ph.name,
                             "phase_step": self.phase_step, "loss": float(np.mean(win_loss)),
                             "iou": float(np.mean(win_iou)), "lr_factor": self._lr_factor(ph), "max_gap": max_gap,
                             "seq_per_s": len(win_loss) * ph.batch_size / max(dt, 1e-9),
                             "data_s": round(t_data, 3), "threads": torch.get_num_threads(),
                             "hours": round(self.elapsed / 3600, 4)})

    def _end_phase(self, ph: PhaseConfig) -> None:
        """A finished phase: validated, exported as <phase>.safetensors, the next one checkpointed."""
        rec = self.validate(ph, full=True)
        if rec:
            self.log(f"phase {ph.name} done: " + ", ".join(
                f"{k} {v:.3f}" for k, v in rec.items() if isinstance(v, float)))
        self.export(self.out / f"{ph.name}.safetensors", ph.name)
        self.phase_idx += 1
        self.phase_step = 0
        self.optimizer = None  # the next phase starts its own Adam: a resumed run must not load this one's moments
        self._save_checkpoint(None, None)

    def _finish(self, export_path: Path) -> Path:
        """The weights so far as model.safetensors (and `export_to` once every phase is done), the plot."""
        cfg = self.cfg
        last_phase = cfg.phases[min(self.phase_idx, len(cfg.phases)) - 1].name if self.phase_idx else ""
        path = self.export(self.out / "model.safetensors", last_phase)
        if self.phase_idx >= len(cfg.phases) and cfg.export_to:
            path = self.export(export_path, last_phase, cfg.export_dtype)
        self.plot()
        self.log(f"{'finished' if self.phase_idx >= len(cfg.phases) else 'paused'} at global step "
                 f"{self.global_step}; weights {path}; log {self.out / 'metrics.jsonl'}")
        return path


def adapt_threads(busy_self: int) -> int:
    """Use only the cores other processes leave free: on a shared 2-core machine two OpenMP threads
    competing with another busy process ran 2.4x slower than one thread (measured)."""
    ncpu = available_cpus()
    try:
        others = max(0.0, os.getloadavg()[0] - busy_self)
    except OSError:
        others = 0.0
    return set_cpu_threads(int(min(ncpu, max(1, round(ncpu - others)))))


def save_weights(path: Path, sd: dict[str, torch.Tensor], cfg: NetConfig, preset: str,
                 meta: dict[str, Any]) -> Path:
    """model.checkpoint.save_model, with an equivalent writer if that module cannot be imported."""
    try:
        from model.checkpoint import save_model
    except ImportError:
        from safetensors.torch import save_file

        header = {"format": "lwl-vos/1", "net": cfg.to_dict(), "tracker_preset": preset, **meta}
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
        save_file(tensors, str(path), metadata={"lwl": json.dumps(header)})
        return path
    return save_model(path, sd, cfg, tracker_preset=preset, extra_meta=meta)


def plot_metrics(recs: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Training loss (moving average) on the left axis, validation IoU / J&F on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [r for r in recs if r.get("type") == "train"]
    va = [r for r in recs if r.get("type") == "val"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if tr:
        steps = np.asarray([r["step"] for r in tr])
        loss = np.asarray([r["loss"] for r in tr])
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid") if len(loss) >= k else loss
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(steps[k - 1:], smooth, color="tab:blue", lw=1.5, label="train loss")
        # phase boundaries
        prev = None
        for r in tr:
            if r["phase"] != prev and prev is not None:
                ax.axvline(r["step"], color="grey", ls=":", lw=0.8)
            prev = r["phase"]
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    if tr:
        ax2.plot([r["step"] for r in tr], [r["iou"] for r in tr], color="tab:orange", alpha=0.35, lw=0.8,
                 label="train IoU")
    if va:
        ax2.plot([r["step"] for r in va], [r["val_iou"] for r in va], "o-", color="tab:red", label="val IoU")
        jf = [(r["step"], r["J&F"]) for r in va if "J&F" in r]
        if jf:
            ax2.plot(*zip(*jf, strict=True), "s-", color="tab:green", label="val J&F (tracker)")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("IoU / J&F")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["Trainer", "build_sources", "param_groups", "plot_metrics"]

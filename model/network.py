"""LWLNet: composes F, the target model T/A, E/W, D and (optionally) B (paper Fig. 2).

Attribute names equal the official checkpoints' state-dict prefixes, so `lwl_stage2.pth` and
`lwl_boxinit.pth` load with strict=True.
"""

from __future__ import annotations

import torch
from torch import nn

from model.backbone import build_backbone
from model.config import NetConfig
from model.decoder import Decoder
from model.encoders import BoxEncoder, LabelEncoder
from model.learner import TargetModel

IMAGE_MEAN_BGR = (102.9801, 115.9465, 122.7717)


def normalise(images_rgb: torch.Tensor) -> torch.Tensor:
    """RGB 0-255 float (..., 3, H, W) -> network input: BGR, minus the Caffe mean, no scaling."""
    mean = torch.tensor(IMAGE_MEAN_BGR, dtype=images_rgb.dtype, device=images_rgb.device).reshape(3, 1, 1)
    return images_rgb.flip(-3) - mean


class LWLNet(nn.Module):
    """The LWL network; `cfg` says which variant (official ResNet-50 or compact)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.layer_channels
        self.feature_extractor = build_backbone(cfg.backbone, cfg.norm)
        self.target_model = TargetModel(
            ch["layer3"], cfg.tm_feature_dim, cfg.num_filters, cfg.filter_size, cfg.init_filter_reg,
            cfg.train_optim_iter,
        )
        self.decoder = Decoder(ch, cfg.num_filters, cfg.decoder_mdim, cfg.norm)
        self.label_encoder = LabelEncoder(cfg.label_encoder_dims, cfg.num_filters)
        self.box_label_encoder = (
            BoxEncoder(cfg.tm_feature_dim, cfg.box_encoder_dims, cfg.num_filters) if cfg.has_box_encoder else None
        )
        self.exact = False

    def set_exact(self, exact: bool = True) -> LWLNet:
        """Exact mode: inference runs the reference's operators in the reference's order (the ResNet in
        the default layout, torch's bicubic before the decoder's last convolution, the learner's steps as
        autograd runs them, each object's crop through the network alone), so that masks equal the
        authors' tracker bit for bit on the same machine. The fast kernels agree to float rounding, but a
        tracker feeds its masks back into its memory, so rounding grows over a video. BatchNorms must not
        be folded (`load_model` leaves them in exact mode)."""
        self.exact = exact
        self.decoder.project.exact = exact
        self.target_model.filter_optimizer.exact = exact
        if hasattr(self.feature_extractor, "use_channels_last"):  # the ResNets; the Lite trunk has no reference
            self.feature_extractor.use_channels_last(not exact and self.cfg.norm == "bn")
        return self

    def train(self, mode: bool = True) -> LWLNet:
        """Official models keep every BatchNorm in eval mode even while training."""
        super().train(mode)
        if mode and not self.cfg.bn_train:
            self.freeze_batchnorm()
        return self

    def freeze_batchnorm(self) -> None:
        """BatchNorm layers use (and keep) their running statistics; their affine parameters still train."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()

    # -- building blocks used by the tracker and the trainer --------------------------------------
    def extract_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone on normalised images (N, 3, H, W) -> layer1..layer4."""
        return self.feature_extractor(images)

    def target_features(self, layer3: torch.Tensor) -> torch.Tensor:
        """x: target-model features (N, C, h, w)."""
        return self.target_model.extract_features(layer3)

    def encode_labels(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E/W on masks (F, S, H, W) -> (y, v), each (F, S, D, h, w)."""
        return self.label_encoder(masks)

    def learn(self, feat: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None, num_iter: int,
              tau: torch.Tensor | None = None, compute_losses: bool = False):
        """A: fit tau (S, D, C, k, k) on features (N, S, C, h, w)."""
        return self.target_model.learn(feat, label, weight, num_iter, tau, compute_losses)

    def segment(self, tau: torch.Tensor, x: torch.Tensor, feats: dict[str, torch.Tensor],
                size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask encoding T_tau(x) and decoder logits (N, 1, H, W) for features x (N, C, h, w), one sequence."""
        enc = self.target_model.apply(tau, x.reshape(x.shape[0], 1, *x.shape[-3:]))
        if size is None:
            size = (x.shape[-2] * 16, x.shape[-1] * 16)
        return self.decoder(enc, feats, size), enc

    # -- training forwards -------------------------------------------------------------------------
    def forward(self, train_imgs: torch.Tensor, test_imgs: torch.Tensor, train_masks: torch.Tensor,
                num_init_iter: int | None = None, num_update_iter: int = 2) -> torch.Tensor:
        """Training forward on mini-sequences (paper Sec. 3.6): learn on the train frames, predict the test frames.

        train_imgs (Ftr, B, 3, H, W), test_imgs (Fte, B, 3, H, W) normalised; train_masks (Ftr, B, H, W).
        Returns test logits (Fte, B, H, W). Gradients flow through every learner iteration but not
        through the predicted masks that are fed back as new few-shot samples.
        """
        num_init_iter = self.cfg.train_optim_iter if num_init_iter is None else num_init_iter
        ftr, b = train_imgs.shape[:2]
        fte = test_imgs.shape[0]
        size = tuple(train_imgs.shape[-2:])
        tr_feats = self.extract_features(train_imgs.reshape(-1, *train_imgs.shape[-3:]))
        te_feats = self.extract_features(test_imgs.reshape(-1, *test_imgs.shape[-3:]))
        x_tr = self.target_features(tr_feats["layer3"])
        x_tr = x_tr.reshape(ftr, b, *x_tr.shape[-3:])
        x_te = self.target_features(te_feats["layer3"])
        x_te = x_te.reshape(fte, b, *x_te.shape[-3:])
        y, v = self.encode_labels(train_masks)
        tau, _, _ = self.learn(x_tr, y, v, num_init_iter)
        feats, labels, weights = [x_tr], [y], [v]
        out = []
        for i in range(fte):
            enc = self.target_model.apply(tau, x_te[i:i + 1])
            frame_feats = {k: t.reshape(fte, b, *t.shape[-3:])[i] for k, t in te_feats.items()}
            logits = self.decoder(enc, frame_feats, size).reshape(b, *size)
            out.append(logits)
            if i + 1 < fte:
                yi, vi = self.encode_labels(torch.sigmoid(logits.detach()).unsqueeze(0))
                feats.append(x_te[i:i + 1])
                labels.append(yi)
                weights.append(vi)
                tau, _, _ = self.learn(torch.cat(feats), torch.cat(labels), torch.cat(weights), num_update_iter,
                                       tau=tau)
        return torch.stack(out)

    def forward_box(self, imgs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Box-encoder training forward: imgs (N, 3, H, W) normalised, boxes (N, 4) -> logits (N, H, W)."""
        if self.box_label_encoder is None:
            raise ValueError("this network has no box encoder")
        size = tuple(imgs.shape[-2:])
        feats = self.extract_features(imgs)
        x = self.target_features(feats["layer3"])
        enc = self.box_label_encoder(boxes.reshape(-1, 1, 4), x, size)
        return self.decoder(enc, feats, size).reshape(-1, *size)

    def box_init_logits(self, image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """Box-init at inference: full frame (1, 3, H, W) normalised, box (4,) -> logits (1, 1, H, W)."""
        return self.forward_box(image, box.reshape(1, 4)).unsqueeze(1)


def build_network(cfg: NetConfig) -> LWLNet:
    """Factory for every variant: one config, one set of modules."""
    return LWLNet(cfg)


__all__ = ["LWLNet", "build_network", "normalise", "IMAGE_MEAN_BGR"]

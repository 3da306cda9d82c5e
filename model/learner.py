"""Target model T_tau and the few-shot learner A (paper eq. 3-4).

T_tau is a linear 3x3 convolution from target-model features x (C channels) to a D-channel mask
encoding. A fits tau to the few-shot memory by steepest descent on
    L(tau) = 1/2 sum_t ||v_t * (T_tau(x_t) - y_t)||^2 + 1/2 ||lambda * tau||^2
with the exact step length of the Gauss-Newton quadratic model. The whole unrolled loop is
differentiable, which is how E, W, lambda and the features are meta-learned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class InstanceL2Norm(nn.Module):
    """Scale each sample's features to a fixed mean square; eps sits inside the sum."""

    def __init__(self, scale: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = scale
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        sq = torch.sum((x * x).reshape(n, 1, 1, -1), dim=3, keepdim=True)
        return x * (self.scale * ((c * h * w) / (sq + self.eps)).sqrt())


def target_feature_extractor(in_dim: int, out_dim: int, filter_size: int) -> nn.Sequential:
    """conv3x3 (no bias) + InstanceL2Norm; state-dict names `0.weight` as in the checkpoints."""
    norm_scale = math.sqrt(1.0 / (out_dim * filter_size * filter_size))
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False), InstanceL2Norm(norm_scale))


def apply_filter(feat: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """T_tau(x): feat (N, S, C, h, w), tau (S, D, C, k, k) -> scores (N, S, D, h, w), one group per sequence."""
    n, s, c, h, w = feat.shape
    k = tau.shape[-2:]
    out = F.conv2d(feat.reshape(n, s * c, h, w), tau.reshape(-1, c, *k), padding=(k[0] // 2, k[1] // 2), groups=s)
    return out.reshape(n, s, -1, out.shape[-2], out.shape[-1])


class FilterInitializerZero(nn.Module):
    """tau^0 = 0."""

    def __init__(self, num_filters: int, feat_dim: int, filter_size: int) -> None:
        super().__init__()
        self.shape = (num_filters, feat_dim, filter_size, filter_size)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """feat (N, S, C, h, w) -> zeros (S, D, C, k, k)."""
        return feat.new_zeros(feat.shape[1], *self.shape)


class Residual(nn.Module):
    """Residuals [v * (T_tau(x) - y), lambda * tau] whose squared norm is the few-shot loss."""

    def __init__(self, init_filter_reg: float = 0.01) -> None:
        super().__init__()
        self.filter_reg = nn.Parameter(init_filter_reg * torch.ones(1))

    def forward(
        self, tau: torch.Tensor, feat: torch.Tensor, label: torch.Tensor, sample_weight: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = apply_filter(feat, tau)
        if sample_weight is None:
            weight: torch.Tensor | float = math.sqrt(1.0 / feat.shape[0])
        elif sample_weight.numel() == scores.numel():
            weight = sample_weight.reshape(scores.shape)
        elif sample_weight.dim() == 1:
            weight = sample_weight.reshape(-1, 1, 1, 1, 1)
        else:
            weight = sample_weight
        data = weight * (scores - label.reshape(scores.shape))
        reg = self.filter_reg * tau.reshape(1, feat.shape[1], -1)
        return data, reg


def _sqr_norm(tensors: tuple[torch.Tensor, ...], batch_dim: int) -> torch.Tensor:
    """Per-batch-element squared norm summed over a list of tensors."""
    total: torch.Tensor | int = 0
    for e in tensors:
        dims = [d for d in range(e.dim()) if d != batch_dim]
        total = total + (e * e).sum(dim=dims)
    return total  # type: ignore[return-value]


class SteepestDescent(nn.Module):
    """A: steepest descent with the Gauss-Newton step length, computed with autograd.

    g = J^T r is a vector-Jacobian product; J g is obtained by differentiating g = J^T u with respect
    to u (a copy of r). This matches the reference bit for bit, unlike an explicit gradient.
    """

    def __init__(self, residual_module: Residual, num_iter: int = 5) -> None:
        super().__init__()
        self.residual_module = residual_module
        self.num_iter = num_iter

    def forward(
        self,
        tau: torch.Tensor,
        feat: torch.Tensor,
        label: torch.Tensor,
        sample_weight: torch.Tensor | None = None,
        num_iter: int | None = None,
        compute_losses: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run `num_iter` steps from tau. Returns (tau_N, [tau_0..tau_N], losses).

        Differentiable (create_graph) when grad mode is on at the call; otherwise it enables grad
        internally and returns detached results.
        """
        num_iter = self.num_iter if num_iter is None else num_iter
        outer_grad = torch.is_grad_enabled()
        iterates = [tau]
        losses: list[torch.Tensor] = []
        with torch.enable_grad():
            for _ in range(num_iter):
                if not tau.requires_grad:
                    tau = tau.detach().requires_grad_(True)
                r = self.residual_module(tau, feat, label, sample_weight)
                if compute_losses:
                    losses.append(0.5 * sum((e * e).sum() for e in r))
                u = tuple(e.clone() for e in r)
                (g,) = torch.autograd.grad(r, tau, u, create_graph=True)
                q = torch.autograd.grad(g, u, g, create_graph=outer_grad)
                gg = _sqr_norm((g,), batch_dim=0)
                qq = _sqr_norm(q, batch_dim=1)
                alpha = gg / (qq + 0.0 * gg).clamp(1e-8)
                step = alpha.reshape(-1, *([1] * (g.dim() - 1))) * g
                tau = tau - step
                if not outer_grad:
                    tau = tau.detach()
                iterates.append(tau)
            if compute_losses:
                r = self.residual_module(tau, feat, label, sample_weight)
                losses.append(0.5 * sum((e * e).sum() for e in r))
        if not outer_grad:
            losses = [x.detach() for x in losses]
        return tau, iterates, losses


class TargetModel(nn.Module):
    """Container named like the reference `LinearFilter`: features, tau^0 and the learner."""

    def __init__(self, in_dim: int, feat_dim: int, num_filters: int, filter_size: int, init_reg: float,
                 optim_iter: int) -> None:
        super().__init__()
        self.feature_extractor = target_feature_extractor(in_dim, feat_dim, filter_size)
        self.filter_initializer = FilterInitializerZero(num_filters, feat_dim, filter_size)
        self.filter_optimizer = SteepestDescent(Residual(init_reg), optim_iter)

    def extract_features(self, layer3: torch.Tensor) -> torch.Tensor:
        """x = target-model features of backbone layer3, (N, C, h, w)."""
        return self.feature_extractor(layer3)

    def learn(
        self, feat: torch.Tensor, label: torch.Tensor, sample_weight: torch.Tensor | None,
        num_iter: int, tau: torch.Tensor | None = None, compute_losses: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Fit tau to (feat (N,S,C,h,w), label (N,S,D,h,w)); start from zeros unless tau is given."""
        if tau is None:
            tau = self.filter_initializer(feat)
        return self.filter_optimizer(tau, feat, label, sample_weight, num_iter, compute_losses)

    @staticmethod
    def apply(tau: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        return apply_filter(feat, tau)

"""Target model T_tau and the few-shot learner A (paper eq. 3-4).

T_tau is a linear 3x3 convolution from target-model features x (C channels) to a D-channel mask
encoding. A fits tau to the few-shot memory by steepest descent on
    L(tau) = 1/2 sum_t ||v_t * (T_tau(x_t) - y_t)||^2 + 1/2 ||lambda * tau||^2
with the exact step length of the Gauss-Newton quadratic model. The whole unrolled loop is
differentiable, which is how E, W, lambda and the features are meta-learned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
        data = self.weight(sample_weight, scores, feat.shape[0]) * (scores - label.reshape(scores.shape))
        reg = self.filter_reg * tau.reshape(1, feat.shape[1], -1)
        return data, reg

    @staticmethod
    def weight(sample_weight: torch.Tensor | None, scores: torch.Tensor, n: int) -> torch.Tensor | float:
        """v broadcast to the scores (N, S, D, h, w): none (1/sqrt(N)), per sample, or per element."""
        if sample_weight is None:
            return math.sqrt(1.0 / n)
        if sample_weight.numel() == scores.numel():
            return sample_weight.reshape(scores.shape)
        if sample_weight.dim() == 1:
            return sample_weight.reshape(-1, 1, 1, 1, 1)
        return sample_weight


def _sqr_norm(tensors: tuple[torch.Tensor, ...], batch_dim: int) -> torch.Tensor:
    """Per-batch-element squared norm summed over a list of tensors."""
    total: torch.Tensor | int = 0
    for e in tensors:
        dims = [d for d in range(e.dim()) if d != batch_dim]
        total = total + (e * e).sum(dim=dims)
    return total  # type: ignore[return-value]


def _step_length(g: torch.Tensor, q: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The exact step length of the quadratic model, alpha = |g|^2 / |J g|^2, one per sequence (S,)."""
    gg = _sqr_norm((g,), batch_dim=0)
    qq = _sqr_norm(q, batch_dim=1)
    return gg / (qq + 0.0 * gg).clamp(1e-8)


def _gauss_newton_step(tau: torch.Tensor, g: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """tau - alpha g, alpha one per sequence (S,)."""
    return tau - alpha.reshape(-1, *([1] * (g.dim() - 1))) * g


class SteepestDescent(nn.Module):
    """A: steepest descent with the Gauss-Newton step length, computed with autograd.

    g = J^T r is a vector-Jacobian product; J g is obtained by differentiating g = J^T u with respect
    to u (a copy of r). This is how the reference computes it. At inference, where no gradient has to
    flow through the steps, `_explicit_steps` runs the same arithmetic without building graphs.
    """

    def __init__(self, residual_module: Residual, num_iter: int = 5) -> None:
        super().__init__()
        self.residual_module = residual_module
        self.num_iter = num_iter
        self.exact = False  # inference in the reference's operator order (LWLNet.set_exact)

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

        Differentiable (create_graph) when grad mode is on at the call. Otherwise the steps run without
        autograd (`_explicit_steps`), unless losses are asked for: then autograd runs inside and the
        results come back detached.
        """
        num_iter = self.num_iter if num_iter is None else num_iter
        outer_grad = torch.is_grad_enabled()
        if not outer_grad and not compute_losses:
            return self._explicit_steps(tau, feat, label, sample_weight, num_iter)
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
                tau = _gauss_newton_step(tau, g, _step_length(g, q))
                if not outer_grad:
                    tau = tau.detach()
                iterates.append(tau)
            if compute_losses:
                r = self.residual_module(tau, feat, label, sample_weight)
                losses.append(0.5 * sum((e * e).sum() for e in r))
        if not outer_grad:
            losses = [x.detach() for x in losses]
        return tau, iterates, losses


    def _explicit_steps(self, tau: torch.Tensor, feat: torch.Tensor, label: torch.Tensor,
                        sample_weight: torch.Tensor | None, num_iter: int
                        ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        iterates = [tau]
        tau, _ = self.descend(tau, feat, label, sample_weight, num_iter, iterates=iterates)
        return tau, iterates, []

    def descend(self, tau: torch.Tensor, feat: torch.Tensor, label: torch.Tensor, sample_weight: torch.Tensor | None,
                num_iter: int, scores: torch.Tensor | None = None, iterates: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The steps of `forward` without autograd, for inference: (tau_N, scores T_tau_N(x) or None).

        g is the convolution's weight gradient of (v * r) plus the regulariser's part; J g is the forward
        convolution of the features with g, times v. Two numerics:
        - fast (default): the gradient is one matrix product on the CPU (`_filter_gradient`), and the
          scores are carried: they are linear in tau, so the next iterate's are T_tau(x) - alpha T_g(x),
          with T_g(x) at hand from J g, which saves one convolution of three per step. `scores`, T_tau(x)
          for the starting tau when the caller kept them (the tracker keeps each memory sample's), saves
          the first one too. Equal to autograd up to float rounding (~1e-6 relative).
        - exact (`self.exact`): the operators autograd runs, in its order (scores convolved afresh each
          step, the convolution's own weight gradient): bit for bit the reference's Gauss-Newton steps.
          It returns no scores, so a caller keeps none.
        """
        n, s, c, h, w = feat.shape
        k = (int(tau.shape[-2]), int(tau.shape[-1]))
        pad = [k[0] // 2, k[1] // 2]
        x = feat.reshape(n, s * c, h, w)
        reg = self.residual_module.filter_reg
        with torch.no_grad():
            filter_grad = _filter_gradient(x, tau.reshape(-1, c, *k), s, reference=self.exact)
            if scores is None or self.exact:
                scores = apply_filter(feat, tau)
            for i in range(num_iter):
                v = Residual.weight(sample_weight, scores, n)
                r_data = v * (scores - label.reshape(scores.shape))
                r_reg = reg * tau.reshape(1, s, -1)
                g_conv = filter_grad((r_data * v).reshape(n, -1, h, w))
                g = g_conv.reshape(tau.shape) + (r_reg * reg).reshape(tau.shape)
                xg = F.conv2d(x, g.reshape(-1, c, *k), padding=pad, groups=s).reshape(scores.shape)
                alpha = _step_length(g, (xg * v, g.reshape(1, s, -1) * reg))
                tau = _gauss_newton_step(tau, g, alpha)
                if iterates is not None:
                    iterates.append(tau)
                if not self.exact:
                    scores = scores - alpha.reshape(1, -1, 1, 1, 1) * xg
                elif i + 1 < num_iter:
                    scores = apply_filter(feat, tau)
        return tau, (None if self.exact else scores)


def _filter_gradient(x: torch.Tensor, weight: torch.Tensor, groups: int,
                     reference: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """d/dweight of a 'same' convolution of x (N, groups*C, h, w), as a function of the output's gradient.

    A fit's steps all take the weight gradient over the same features, so for one group they are laid out
    once as a zero-padded strip of pixels (rows of the padded images one after another, C floats each):
    every kernel offset is then one shift along the strip, and the gradient for all offsets together is
    one matrix product of the strip with shifted copies of the output's gradient. On the CPU that runs
    about twice as fast as the convolution's own weight gradient (oneDNN's), to float rounding the same
    sums (tests/model/test_learner.py). Several groups, other devices and `reference` (exact mode) use the
    convolution's backward, which is what autograd runs.
    """
    if reference or groups != 1 or x.device.type != "cpu":
        pad = [weight.shape[-2] // 2, weight.shape[-1] // 2]
        return lambda grad_out: torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, [1, 1], pad, [1, 1], False, [0, 0], groups, [False, True, False])[1]
    n, c, h, w = x.shape
    d, _, kh, kw = weight.shape
    ph, pw = kh // 2, kw // 2
    hp, wp = h + ph, w + pw  # one side of padding suffices: row ends and the next row's start share it
    margin = ph * wp + pw  # the farthest a kernel offset reaches along the strip
    length = n * hp * wp
    offsets = [(i - ph) * wp + (j - pw) for i in range(kh) for j in range(kw)]
    strip = x.new_zeros(margin + length + margin, c)
    strip[margin: margin + length].view(n, hp, wp, c)[:, :h, :w] = x.permute(0, 2, 3, 1)
    shifted = x.new_zeros(margin + length + margin, kh * kw, d)
    out = x.new_zeros(n, hp, wp, d)

    def grad(grad_out: torch.Tensor) -> torch.Tensor:
        out[:, :h, :w] = grad_out.permute(0, 2, 3, 1)
        flat = out.view(length, d)
        for i, o in enumerate(offsets):
            shifted[margin + o: margin + o + length, i] = flat
        g = shifted.view(-1, kh * kw * d).T @ strip  # (kh*kw*D, C)
        return g.view(kh, kw, d, c).permute(2, 3, 0, 1)

    return grad


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

    def fit(self, feat: torch.Tensor, label: torch.Tensor, sample_weight: torch.Tensor | None, num_iter: int,
            tau: torch.Tensor | None = None, scores: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inference: (tau, T_tau(feat), None in exact mode) after `num_iter` steps from tau (zeros unless
        given), whose scores T_tau(feat) the caller may pass when it has them (SteepestDescent.descend)."""
        if tau is None:
            tau = self.filter_initializer(feat)
        return self.filter_optimizer.descend(tau, feat, label, sample_weight, num_iter, scores)

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

"""The steepest-descent learner A: monotone descent and the closed-form minimiser of eq. (3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.learner import Residual, SteepestDescent, _filter_gradient, apply_filter


def _problem(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, d, h, w = 3, 4, 2, 6, 7
    feat = torch.randn(n, 1, c, h, w, generator=g, dtype=dtype)
    label = torch.randn(n, 1, d, h, w, generator=g, dtype=dtype)
    weight = torch.rand(n, 1, d, h, w, generator=g, dtype=dtype) + 0.5
    return feat, label, weight


def _learner(reg: float, dtype=torch.float64) -> SteepestDescent:
    res = Residual(reg)
    res.filter_reg.data = res.filter_reg.data.to(dtype)
    return SteepestDescent(res, num_iter=5)


def test_loss_decreases_at_every_iteration() -> None:
    feat, label, weight = _problem(torch.float32)
    sd = _learner(0.1, torch.float32)
    tau0 = torch.zeros(1, 2, 4, 3, 3)
    with torch.no_grad():
        _, iterates, losses = sd(tau0, feat, label, weight, num_iter=20, compute_losses=True)
    assert len(iterates) == 21 and len(losses) == 21
    vals = [float(v) for v in losses]
    assert all(b < a for a, b in zip(vals, vals[1:], strict=False)), vals


def test_converges_to_closed_form_minimiser() -> None:
    feat, label, weight = _problem()
    lam = 0.7
    sd = _learner(lam)
    with torch.no_grad():
        tau, _, _ = sd(torch.zeros(1, 2, 4, 3, 3, dtype=torch.float64), feat, label, weight, num_iter=3000)
    # Normal equations per output channel: (sum v^2 u u^T + lam^2 I) t = sum v^2 y u
    n, _, c, h, w = feat.shape
    cols = F.unfold(feat[:, 0], 3, padding=1)  # (n, c*9, h*w)
    u = cols.permute(0, 2, 1).reshape(-1, c * 9)
    for dch in range(2):
        v2 = (weight[:, 0, dch] ** 2).reshape(-1)
        y = label[:, 0, dch].reshape(-1)
        a = (u * v2[:, None]).T @ u + lam**2 * torch.eye(c * 9, dtype=torch.float64)
        b = (u * v2[:, None]).T @ y
        t = torch.linalg.solve(a, b)
        assert torch.allclose(tau[0, dch].reshape(-1), t, rtol=1e-6, atol=1e-8)


def test_apply_filter_matches_conv2d_per_sequence() -> None:
    feat = torch.randn(2, 3, 4, 5, 6)
    tau = torch.randn(3, 2, 4, 3, 3)
    out = apply_filter(feat, tau)
    for s in range(3):
        ref = F.conv2d(feat[:, s], tau[s], padding=1)
        assert torch.allclose(out[:, s], ref, atol=1e-5)


def test_zero_iterations_return_the_start() -> None:
    feat, label, weight = _problem(torch.float32)
    tau0 = torch.randn(1, 2, 4, 3, 3)
    tau, _, _ = _learner(0.1, torch.float32)(tau0, feat, label, weight, num_iter=0)
    assert torch.equal(tau, tau0)


def _problems(g: torch.Generator):
    for s, weights in ((1, "full"), (1, "per-sample"), (1, None), (2, "full")):
        n, c, d, h, w = 5, 8, 3, 9, 11
        feat = torch.randn(n, s, c, h, w, generator=g)
        label = torch.randn(n, s, d, h, w, generator=g)
        weight = {"full": torch.rand(n, s, d, h, w, generator=g) + 0.1,
                  "per-sample": torch.rand(n, generator=g) + 0.1, None: None}[weights]
        tau0 = torch.randn(s, d, c, 3, 3, generator=g) * 0.1
        yield (s, weights), feat, label, weight, tau0


def test_inference_steps_equal_autograd_up_to_rounding() -> None:
    """Without grad (inference) the steps run without autograd and update the scores linearly instead of
    convolving again; with `compute_losses` they go through autograd, as the reference computes them."""
    for case, feat, label, weight, tau0 in _problems(torch.Generator().manual_seed(3)):
        sd = _learner(0.05, torch.float32)
        with torch.no_grad():
            fast, fast_its, _ = sd(tau0, feat, label, weight, num_iter=4)
            ref, ref_its, _ = sd(tau0, feat, label, weight, num_iter=4, compute_losses=True)
        assert len(fast_its) == len(ref_its) == 5
        for a, b in zip(fast_its, ref_its, strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (case, (a - b).abs().max())
        assert not torch.equal(fast_its[1], tau0), case


def test_descend_returns_the_scores_of_its_tau_and_takes_them_as_a_start() -> None:
    """The scores it returns are T_tau(x) of the tau it returns; given as the start, they replace the first
    convolution exactly, so the tracker can carry them from frame to frame."""
    for case, feat, label, weight, tau0 in _problems(torch.Generator().manual_seed(5)):
        sd = _learner(0.05, torch.float32)
        tau, scores = sd.descend(tau0, feat, label, weight, 3)
        assert torch.allclose(scores, apply_filter(feat, tau), rtol=1e-5, atol=1e-5), case
        again, _ = sd.descend(tau0, feat, label, weight, 3, scores=apply_filter(feat, tau0))
        assert torch.equal(again, tau), case
        wrong, _ = sd.descend(tau0, feat, label, weight, 3, scores=apply_filter(feat, tau0) + 1.0)
        assert not torch.allclose(wrong, tau), case


def test_filter_gradient_equals_the_convolution_backward() -> None:
    """The strip-and-shift weight gradient the inference steps use gives the convolution's own weight
    gradient, for square and oblong kernels, odd image sizes, one sample or several, channels-last or not."""
    gen = torch.Generator().manual_seed(11)
    for n, c, h, w, d, kh, kw in [(1, 5, 7, 9, 3, 3, 3), (4, 8, 6, 11, 2, 5, 3), (3, 6, 5, 5, 4, 1, 1),
                                  (32, 16, 15, 27, 16, 3, 3)]:
        x = torch.randn(n, c, h, w, generator=gen)
        weight = torch.randn(d, c, kh, kw, generator=gen)
        grad_out = torch.randn(n, d, h, w, generator=gen)
        for layout in (torch.contiguous_format, torch.channels_last):
            xl = x.contiguous(memory_format=layout)
            ref = torch.ops.aten.convolution_backward(grad_out, xl, weight, None, [1, 1], [kh // 2, kw // 2],
                                                      [1, 1], False, [0, 0], 1, [False, True, False])[1]
            grad = _filter_gradient(xl, weight, 1)
            for scale in (1.0, -2.0):  # twice from one layout: the buffers it reuses start clean
                got = grad(grad_out * scale)
                assert got.shape == ref.shape
                assert torch.allclose(got, ref * scale, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_exact_steps_equal_autograd_bit_for_bit() -> None:
    """Exact mode runs the operators autograd runs, in its order: every iterate equals the autograd
    Gauss-Newton steps bit for bit (the fast steps only to rounding), and it returns no scores to carry."""
    for case, feat, label, weight, tau0 in _problems(torch.Generator().manual_seed(7)):
        sd = _learner(0.05, torch.float32)
        sd.exact = True
        with torch.no_grad():
            exact, exact_its, _ = sd(tau0, feat, label, weight, num_iter=4)
            ref, ref_its, _ = sd(tau0, feat, label, weight, num_iter=4, compute_losses=True)
        for a, b in zip(exact_its, ref_its, strict=True):
            assert torch.equal(a, b), (case, (a - b).abs().max())
        tau, scores = sd.descend(tau0, feat, label, weight, 2, scores=apply_filter(feat, tau0) + 1.0)
        assert scores is None and torch.equal(tau, sd.descend(tau0, feat, label, weight, 2)[0]), case

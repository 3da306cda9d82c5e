"""Binary Lovasz loss on sigmoid probabilities (Berman et al., CVPR 2018).

A convex surrogate of the Jaccard loss: the per-pixel errors |gt - p|, sorted in decreasing order,
weighted by the Jaccard increments of the correspondingly sorted ground truth. Computed over all
pixels of all frames at once (per_image=False), as in the reference training.
"""

from __future__ import annotations

import torch


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Jaccard loss w.r.t. sorted errors (the discrete increments)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat((jaccard[:1], jaccard[1:] - jaccard[:-1]))
    return jaccard


def lovasz_sigmoid(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax with the single foreground class: probs, labels of any equal shape, labels in {0,1}."""
    p = probs.reshape(-1)
    fg = labels.reshape(-1).float()
    if p.numel() == 0:
        return p.sum() * 0.0
    errors = (fg - p).abs()
    errors_sorted, perm = torch.sort(errors, descending=True)
    return torch.dot(errors_sorted, lovasz_grad(fg[perm]))


def lovasz_loss_logits(logits: torch.Tensor, labels: torch.Tensor, weight: float = 100.0) -> torch.Tensor:
    """The training loss of stage 1/2: weight x Lovasz over sigmoid(logits)."""
    return weight * lovasz_sigmoid(torch.sigmoid(logits), labels)

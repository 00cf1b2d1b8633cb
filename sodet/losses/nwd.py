"""Normalized Gaussian Wasserstein Distance (Wang et al. 2021, arXiv 2110.13389): a box similarity that does not
vanish for tiny boxes, where a few pixels of offset already take IoU to zero.

A box is the Gaussian N([cx, cy], diag(w^2/4, h^2/4)); between two of them
W2^2 = |c1 - c2|^2 + ((w1 - w2)^2 + (h1 - h2)^2) / 4, and NWD = exp(-sqrt(W2^2) / C), C a length in pixels (the
paper's 12.8 is AI-TOD's mean object size). Identical boxes give NWD 1 and loss 0 exactly; the gradient stays
finite there and for boxes of zero width or height.
"""

from __future__ import annotations

import torch

SQRT_FLOOR = 1e-12  # below this W2^2 counts as 0 (identical boxes): sqrt's gradient at 0 is infinite


def wasserstein_sq(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
    """W2^2 of the Gaussians of aligned xyxy boxes (..., 4) -> (...)."""
    p_c = (pred_xyxy[..., :2] + pred_xyxy[..., 2:]) / 2
    t_c = (target_xyxy[..., :2] + target_xyxy[..., 2:]) / 2
    p_wh = pred_xyxy[..., 2:] - pred_xyxy[..., :2]
    t_wh = target_xyxy[..., 2:] - target_xyxy[..., :2]
    return ((p_c - t_c) ** 2).sum(-1) + ((p_wh - t_wh) ** 2).sum(-1) / 4


def nwd(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor, c: float) -> torch.Tensor:
    """exp(-sqrt(W2^2) / C) of aligned boxes (broadcasting: (N, 1, 4) x (1, M, 4) gives an (N, M) matrix)."""
    w2 = wasserstein_sq(pred_xyxy, target_xyxy)
    distance = torch.where(w2 > SQRT_FLOOR, w2.clamp(min=SQRT_FLOOR).sqrt(), torch.zeros_like(w2))
    return torch.exp(-distance / c)


def nwd_loss(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor, c: float) -> torch.Tensor:
    """1 - NWD per aligned pair."""
    return 1.0 - nwd(pred_xyxy, target_xyxy, c)

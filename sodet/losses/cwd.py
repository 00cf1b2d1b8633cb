"""Channel-wise distillation loss (Shu et al. 2021), equal to MMRazor's ``ChannelWiseDivergence``.

Each channel of a feature map becomes a distribution over its H*W positions (softmax of the activations / tau);
the loss is KL(teacher || student) per channel, summed over positions, times tau^2, averaged over the N*C channel
maps, times ``loss_weight``. It is not divided by H*W: a map's weight does not depend on its size. Student and
teacher maps must have the same shape (a connector maps student channels to the teacher's first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelWiseDivergence(nn.Module):
    """CWD between a student and a teacher feature map of the same (N, C, H, W) shape; the teacher is detached."""

    def __init__(self, tau: float = 1.0, loss_weight: float = 1.0):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        self.tau = float(tau)
        self.loss_weight = float(loss_weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} maps differ in shape")
        n, c, h, w = student.shape
        s = student.reshape(n * c, h * w) / self.tau
        t = teacher.detach().reshape(n * c, h * w) / self.tau
        log_p_t = F.log_softmax(t, dim=1)
        kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=1))).sum()
        return self.loss_weight * kl * self.tau**2 / (n * c)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, loss_weight={self.loss_weight}"

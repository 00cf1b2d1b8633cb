"""Un-folding BatchNorm: give identity BatchNorm layers (folded into the convolutions, as in the shipped
YOLOX-Nano) the statistics of the activations they see, without changing what the network computes.

Training-mode BatchNorm normalises by batch statistics; on a folded network that rescales every layer (and the
0-255 input of YOLOX makes the first gradients explode). With each conv output channel rescaled by ``a`` to a
He-init weight norm, and its measured mean mu and variance var, the layer gets ``running_mean = a*mu``,
``running_var = a^2*var``, ``weight = sqrt(a^2*var + eps)/a`` and its bias shifted by mu: in eval mode it computes
what it did before, and in training mode batch statistics are close to those, so fine-tuning starts where the
checkpoint is.
"""

from __future__ import annotations

import torch
from torch import nn


def batchnorm_folded(model: nn.Module) -> bool:
    """True when no BatchNorm has statistics: zero running mean, unit weight, one constant running variance."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return bool(bns) and all(
        bool((m.running_mean == 0).all())
        and bool((m.weight == 1).all())
        and float((m.running_var - m.running_var[0]).abs().max()) == 0
        for m in bns
    )


@torch.no_grad()
def unfold_batchnorm(model: nn.Module, images: list[torch.Tensor]) -> int:
    """Measure each conv + BatchNorm pair's activation statistics on ``images`` (eval mode: the BatchNorms are
    identities, so each sees the real activations) and restore the unfolded form. Returns the pairs set."""
    pairs = [
        m for m in model.modules()
        if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
        and m.conv.bias is None
    ]
    sums = {id(p.bn): [0.0, 0.0, 0] for p in pairs}

    def record(bn, inputs, _):
        x = inputs[0].detach().double()
        s = sums[id(bn)]
        s[0] = s[0] + x.sum((0, 2, 3))
        s[1] = s[1] + (x * x).sum((0, 2, 3))
        s[2] += x.numel() // x.shape[1]

    hooks = [p.bn.register_forward_hook(record) for p in pairs]
    was = model.training
    model.eval()
    try:
        for im in images:
            model(im)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    for p in pairs:
        bn, conv = p.bn, p.conv
        s1, s2, n = sums[id(bn)]
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp(min=0)
        w = conv.weight.double()
        # rescale each output channel to a He-init norm (sqrt 2): BatchNorm makes the scale free, and it sets the
        # size of the gradient steps relative to the weights, like in a network trained with BatchNorm
        a = 2**0.5 / w.flatten(1).norm(dim=1).clamp(min=1e-12)
        scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()  # what the identity BN multiplies by
        bias = bn.bias.double() - bn.running_mean.double() * scale
        conv.weight.copy_((w * a.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        bn.running_mean.copy_((a * mean).to(bn.running_mean.dtype))
        bn.running_var.copy_((a * a * var).to(bn.running_var.dtype))
        bn.weight.copy_((scale * (a * a * var + bn.eps).sqrt() / a).to(bn.weight.dtype))
        bn.bias.copy_((bias + scale * mean).to(bn.bias.dtype))
    return len(pairs)

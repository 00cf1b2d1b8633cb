"""BatchNorm for fine-tuning: un-folding folded weights, freezing (``--freeze-bn``) and fp16-safe statistics.

Why this exists (measured on the shipped YOLOX-Nano, whose BatchNorm was folded into its convolutions):

- A folded network is ``conv(W') + b`` per layer: the conv weights carry the BatchNorm scale ``gamma/sigma``,
  different for every channel, so the same learning rate moves some channels hundreds of times faster than the
  original network's parametrization did. The first convolution sees 0-255 pixels with nothing normalising it
  (its gradient/weight ratio is ~5,400 against a median of 0.17): SGD blows up at once.
- Training-mode BatchNorm started from folded values (mean 0, var 1) re-scales every layer on the first batch.
- The engine stores checkpoints in fp16 (``.half()``; the standalone validator's ``half`` does the same), where
  values above 65,504 become inf; the statistics of a convolution fed 0-255 pixels can exceed that.

``unfold_batchnorm`` restores the standard ``conv -> BatchNorm`` parametrization without changing what the network
computes: each output channel of ``W'`` is rescaled to a He-init norm (``sqrt(2)``, what a BatchNorm network trained
with weight decay keeps) and the BatchNorm gets the measured mean and variance of that channel, so that eval-mode
outputs are unchanged and the per-channel step sizes are those of a BatchNorm network again.
``fp16_safe_batchnorm`` rescales any pair whose running statistics would overflow fp16 (same function).
"""

from __future__ import annotations

import torch
from torch import nn

FP16_SAFE_VAR = 1e4  # running variances above this are brought down (fp16 max 65,504; margin for var*scale^2)
HE_NORM = 2**0.5  # per-output-channel weight norm of He initialisation (std sqrt(2/fan_in) over fan_in inputs)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every module holding a bias-free ``conv`` followed by its ``bn`` (YOLOX's BaseConv, Ultralytics' Conv)."""
    return [
        (m.conv, m.bn)
        for m in model.modules()
        if isinstance(getattr(m, "conv", None), nn.Conv2d)
        and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
        and m.conv.bias is None
        and m.bn.track_running_stats
    ]


def batchnorm_folded(model: nn.Module) -> bool:
    """True when no BatchNorm has statistics (zero running mean, unit weight, one constant running variance) but
    the biases carry the folded ones. A freshly initialised network has the same statistics with zero biases."""
    bns = batchnorms(model)
    return (
        bool(bns)
        and all(
            bool((m.running_mean == 0).all())
            and bool((m.weight == 1).all())
            and float((m.running_var - m.running_var[0]).abs().max()) == 0
            for m in bns
        )
        and any(bool((m.bias != 0).any()) for m in bns)
    )


@torch.no_grad()
def rescale_channels(conv: nn.Conv2d, bn: nn.BatchNorm2d, a: torch.Tensor, mean=None, var=None) -> None:
    """Multiply each output channel of ``conv`` by ``a`` (> 0) and give ``bn`` the statistics ``a*mean``,
    ``a^2*var`` (default: its own), with weight and bias set so that eval-mode outputs stay exactly the same."""
    a = a.double()
    rm, rv = bn.running_mean.double(), bn.running_var.double()
    mean = rm if mean is None else mean.double()
    var = rv if var is None else var.double()
    scale = bn.weight.double() / (rv + bn.eps).sqrt()  # what eval-mode BN multiplies the conv output by
    shift = bn.bias.double() - rm * scale
    new_var = a * a * var
    conv.weight.copy_((conv.weight.double() * a.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    bn.running_mean.copy_((a * mean).to(bn.running_mean.dtype))
    bn.running_var.copy_(new_var.to(bn.running_var.dtype))
    bn.weight.copy_((scale * (new_var + bn.eps).sqrt() / a).to(bn.weight.dtype))
    bn.bias.copy_((shift + scale * mean).to(bn.bias.dtype))


@torch.no_grad()
def unfold_batchnorm(model: nn.Module, images: list[torch.Tensor]) -> int:
    """Measure each conv + BatchNorm pair's activation statistics on ``images`` (eval mode: a folded BatchNorm is
    an affine map, so each sees the real activations) and restore the unfolded form with He-norm weights.
    Returns the number of pairs set."""
    pairs = conv_bn_pairs(model)
    sums = {id(bn): [0.0, 0.0, 0] for _, bn in pairs}

    def record(bn, inputs):
        x = inputs[0].detach().double()
        s = sums[id(bn)]
        s[0] = s[0] + x.sum((0, 2, 3))
        s[1] = s[1] + (x * x).sum((0, 2, 3))
        s[2] += x.numel() // x.shape[1]

    hooks = [bn.register_forward_pre_hook(record) for _, bn in pairs]
    was = model.training
    model.eval()
    try:
        for im in images:
            model(im)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    for conv, bn in pairs:
        s1, s2, n = sums[id(bn)]
        if not n:
            continue
        # the measured statistics are those of the conv output as it is now (before BN)
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp(min=0)
        a = HE_NORM / conv.weight.double().flatten(1).norm(dim=1).clamp(min=1e-12)
        rescale_channels(conv, bn, a, mean, var)
    return len(pairs)


@torch.no_grad()
def fp16_safe_batchnorm(model: nn.Module, limit: float = FP16_SAFE_VAR) -> int:
    """Rescale conv + BatchNorm pairs whose running variance exceeds ``limit``, so that fp16 copies (the engine's
    checkpoints, half-precision validation) keep them finite. Same eval-mode function; returns the pairs changed."""
    changed = 0
    for conv, bn in conv_bn_pairs(model):
        var = bn.running_var.double()
        big = var > limit
        if bool(big.any()):
            rescale_channels(conv, bn, torch.where(big, (limit / var).sqrt() / 4, torch.ones_like(var)))
            changed += 1
    return changed


def freeze_batchnorm(model: nn.Module) -> None:
    """MMDetection's ``norm_eval``: every BatchNorm in eval mode (running statistics fixed) with its affine
    parameters frozen. Called from the models' ``train()`` so it holds through the engine's per-epoch ``train()``."""
    for bn in batchnorms(model):
        bn.eval()
        for p in (bn.weight, bn.bias):
            if p is not None:
                p.requires_grad_(False)


def batchnorm_frozen(model: nn.Module) -> bool:
    """Whether the model's options ask for frozen BatchNorm (``model.sodet.freeze_bn``)."""
    opts = getattr(model, "sodet", None)
    return bool(getattr(opts, "freeze_bn", False))


class FrozenBatchNormTraining:
    """Mixin for sodet's models: ``train()`` keeps BatchNorm frozen when the run asks for it (``--freeze-bn``),
    which holds through the engine's ``model.train()`` at every epoch."""

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and batchnorm_frozen(self):
            freeze_batchnorm(self)
        return self

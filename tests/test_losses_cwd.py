"""Channel-wise distillation loss against MMRazor's own ChannelWiseDivergence (../shared/fixtures/cwd-mmrazor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sodet.losses.cwd import ChannelWiseDivergence

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "cwd-mmrazor"


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures/cwd-mmrazor not present (CI has it)")
@pytest.mark.parametrize("name", ["tau1_w1", "tau2_w5"])
def test_equals_mmrazor_loss_and_gradient(name):
    inputs = torch.load(FIXTURES / "inputs.pt", weights_only=True)
    ref = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
    loss_fn = ChannelWiseDivergence(tau=float(ref["tau"]), loss_weight=float(ref["loss_weight"]))
    # computed in float64; the reference is float32, so values near 45 carry ~4e-6 of its rounding: 1e-6 relative
    students = [s.clone().double().requires_grad_(True) for s in inputs["preds_S"]]
    losses = [loss_fn(s, t.double()) for s, t in zip(students, inputs["preds_T"])]
    torch.testing.assert_close(torch.stack(losses).float(), torch.stack(list(ref["loss"])).float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sum(losses).float(), torch.as_tensor(ref["loss_sum"]).float(), rtol=1e-6, atol=1e-6)
    losses[0].backward()
    torch.testing.assert_close(students[0].grad.float(), ref["grad_S"].float(), rtol=1e-6, atol=1e-6)


def test_zero_when_student_equals_teacher_and_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 8, 6, 7, generator=g, requires_grad=True)
    s = t.detach().clone().requires_grad_(True)
    loss = ChannelWiseDivergence(tau=2.0, loss_weight=3.0)(s, t)
    assert abs(float(loss)) < 1e-6
    other = torch.randn(2, 8, 6, 7, generator=g, requires_grad=True)
    ChannelWiseDivergence()(other, t).backward()
    assert t.grad is None and other.grad is not None and other.grad.abs().sum() > 0


def test_hand_computed_value():
    """One channel, two positions: KL of softmax([0, ln 3]) = (1/4, 3/4) from softmax([0, 0]) = (1/2, 1/2)."""
    import math

    teacher = torch.tensor([[[[0.0, math.log(3.0)]]]])
    student = torch.zeros(1, 1, 1, 2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(ChannelWiseDivergence()(student, teacher)) == pytest.approx(expected, abs=1e-7)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in shape"):
        ChannelWiseDivergence()(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))

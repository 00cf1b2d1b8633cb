"""Fine-tuning from pretrained weights: a parametrization that trains like the original network, fp16-safe
checkpoints, frozen BatchNorm, and evaluation numbers that re-score identically."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
import torch
from torch import nn

import sodet  # noqa: F401  (offline switches first)
from sodet.assets import COCO_MINI, embedded_data, shipped_weights
from sodet.eval.cocoeval import METRIC_KEYS

MINI = embedded_data(COCO_MINI)
TINY = dict(data=str(MINI), imgsz=160, batch=16, device="cpu", workers=0, plots=False, seed=0)


def shipped_nano(nc: int = 2):
    from sodet.models.weights import load_weights
    from sodet.models.yolox import YoloxDetector

    m = YoloxDetector("yolox-nano", nc, {0: "person", 1: "car"} if nc == 2 else None)
    load_weights(m, shipped_weights("yolox_nano_coco_fusedbn.pth"))
    return m.eval()


def test_reconditioned_folded_weights_keep_outputs_and_survive_fp16():
    """Stem fed 0-1 pixels + He-norm unfolding: same eval outputs, every BatchNorm statistic fp16-safe, and an
    fp16 round trip of the statistics stays finite (the unfolded stem's variance was 1.6e5 > fp16's 65,504)."""
    from sodet.models.batchnorm import FP16_SAFE_VAR, HE_NORM, batchnorm_folded, batchnorm_frozen, conv_bn_pairs, unfold_batchnorm

    m = shipped_nano()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 160, 160, generator=g)
    with torch.no_grad():
        before = m(x)
    assert batchnorm_folded(m) and not batchnorm_frozen(m)
    from sodet.models.yolox import YoloxDetector

    assert not batchnorm_folded(YoloxDetector("yolox-nano", 2))  # fresh init: same statistics, zero biases
    m.pixels_in_unit_range()
    assert m.input_scale == 1.0
    unfold_batchnorm(m, [x[:2], x[2:]])
    assert not batchnorm_folded(m)
    with torch.no_grad():
        after = m(x)
    torch.testing.assert_close(after[:, 4:], before[:, 4:], rtol=0, atol=1e-4)
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=1e-4, atol=0.05)
    for conv, bn in conv_bn_pairs(m):
        norms = conv.weight.flatten(1).norm(dim=1)
        torch.testing.assert_close(norms, torch.full_like(norms, HE_NORM), rtol=1e-4, atol=0)
        assert float(bn.running_var.max()) < FP16_SAFE_VAR
        assert torch.isfinite(bn.running_var.half()).all()


def test_fp16_safe_rescale_keeps_the_function():
    """A conv + BatchNorm pair whose running variance would overflow fp16 is rescaled with the same outputs."""
    from sodet.models.batchnorm import FP16_SAFE_VAR, fp16_safe_batchnorm

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    torch.manual_seed(0)
    p = Pair().eval()
    with torch.no_grad():
        p.bn.running_var.copy_(torch.tensor([1e6, 3e5, 2.0, 0.5]))
        p.bn.running_mean.copy_(torch.tensor([300.0, -50.0, 1.0, 0.0]))
        p.bn.weight.copy_(torch.tensor([1.5, 0.5, 1.0, 2.0]))
        p.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    x = torch.rand(2, 3, 8, 8) * 255
    with torch.no_grad():
        before = p(x)
    assert fp16_safe_batchnorm(p) == 1
    with torch.no_grad():
        after = p(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert float(p.bn.running_var.max()) <= FP16_SAFE_VAR
    assert p.bn.running_var[2:].tolist() == [2.0, 0.5]  # the pairs that fit are untouched


@pytest.mark.parametrize("family, name", [("yolox", "yolox-nano"), ("yolo", "yolov8n")])
def test_freeze_bn_holds_through_training_steps(family, name):
    """--freeze-bn: BatchNorm in eval mode after the engine's model.train(), statistics and affine unchanged by a
    training step, the convolutions still learn."""
    from sodet.models.batchnorm import batchnorms, freeze_batchnorm
    from sodet.models.registry import get_entry
    from sodet.options import RunOptions

    m = get_entry(name).build(2, {0: "person", 1: "car"})
    m.sodet = RunOptions(model=name, freeze_bn=True)
    freeze_batchnorm(m)
    m.train()
    bns = batchnorms(m)
    assert bns and all(not b.training for b in bns)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    if family == "yolo":
        from ultralytics.cfg import get_cfg

        m.args = get_cfg()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    batch = {
        "img": torch.rand(2, 3, 64, 64), "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.6, 0.2, 0.4]]),
    }
    loss, _ = m.loss(batch)
    loss.sum().backward()
    opt.step()
    after = m.state_dict()
    bn_keys = [k for k in after if any(k.startswith(n + ".") for n, mod in m.named_modules() if mod in bns)]
    assert bn_keys and all(torch.equal(before[k], after[k]) for k in bn_keys)
    conv_keys = [k for k in after if k.endswith("conv.weight")]
    assert any(not torch.equal(before[k], after[k]) for k in conv_keys)


@pytest.fixture(scope="module")
def lr0_run(tmp_path_factory):
    """The shipped folded yolox-nano, one epoch at learning rate 0 on coco-pc-mini."""
    from sodet.api import train

    project = tmp_path_factory.mktemp("lr0")
    return train(model="yolox-nano", epochs=1, lr0=0.0, warmup_bias_lr=0.0, project=str(project), name="lr0", **TINY)


def test_learning_rate_zero_leaves_every_number_unchanged(lr0_run):
    """What the run measured before training equals what its best.pt scores after (every one of the 12 numbers,
    within 0.002): re-parametrization, frozen BatchNorm, EMA and the checkpoint round trip change nothing."""
    start = json.loads((lr0_run / "start" / "metrics.json").read_text())
    end = json.loads((lr0_run / "metrics.json").read_text())
    assert start["AP"] > 0.05  # a real detector, not an empty one
    for k in METRIC_KEYS:
        if start[k] is None:
            assert end[k] is None
        else:
            assert end[k] == pytest.approx(start[k], abs=0.002), k
    assert (lr0_run / "sodet.yaml").is_file()
    ckpt = torch.load(lr0_run / "weights" / "best.pt", map_location="cpu", weights_only=False)
    model = ckpt.get("ema") or ckpt["model"]
    assert model.sodet.freeze_bn is True  # auto for folded weights, recorded on the model
    assert next(model.parameters()).dtype == torch.float32  # YOLOX checkpoints keep fp32 weights


def test_fine_tuning_a_sodet_checkpoint_starts_from_its_weights(lr0_run, tmp_path):
    """`sodet train --model best.pt` starts where that run ended (same start numbers), keeps its BatchNorm mode."""
    from sodet.api import train

    run = train(model=str(lr0_run / "weights" / "best.pt"), epochs=1, lr0=0.0, warmup_bias_lr=0.0,
                project=str(tmp_path), name="again", **TINY)
    before = json.loads((lr0_run / "metrics.json").read_text())
    start = json.loads((run / "start" / "metrics.json").read_text())
    assert start["AP"] == pytest.approx(before["AP"], abs=1e-6) and start["AP"] > 0.05
    ckpt = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)
    assert (ckpt.get("ema") or ckpt["model"]).sodet.freeze_bn is True


def test_predictions_json_rescores_to_metrics_json(tmp_path):
    """pycocotools on predictions.json against the ground truth gives all 12 numbers of metrics.json (1e-6):
    predictions.json holds exactly the detections scored (at most 100 per image, though NMS keeps up to 300)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from sodet.api import val

    out, _ = val(model="yolox-nano", data=str(MINI), imgsz=416, out=str(tmp_path / "v"), device="cpu")
    saved = json.loads((out / "metrics.json").read_text())
    preds = json.loads((out / "predictions.json").read_text())
    per_image: dict = {}
    for p in preds:
        per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
    assert max(per_image.values()) <= 100 and any(v == 100 for v in per_image.values())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(saved["dataset"]["gt"])
        cats = [c["id"] for c in gt.dataset["categories"] if c["name"] in saved["dataset"]["classes"]]
        E = COCOeval(gt, gt.loadRes(preds), "bbox")
        E.params.catIds = cats
        E.evaluate()
        E.accumulate()
        E.summarize()
    for k, v in zip(METRIC_KEYS, E.stats):
        assert (saved[k] if saved[k] is not None else -1.0) == pytest.approx(float(v), abs=1e-6), k


def test_best_checkpoint_is_the_best_coco_ap(tmp_path):
    """best.pt's fitness is the highest COCO AP of the epochs (the number sodet reports), logged per epoch."""
    from sodet.api import train

    run = train(model="yolox-nano", epochs=3, lr0=0.02, project=str(tmp_path), name="best", **TINY)
    rows = list(csv.DictReader((run / "results.csv").open()))
    aps = [float(r["metrics/AP_coco(B)"]) for r in rows]
    best = torch.load(run / "weights" / "best.pt", map_location="cpu", weights_only=False)
    assert best["train_metrics"]["fitness"] == pytest.approx(max(aps), abs=1e-5)  # saved when fitness peaked
    assert json.loads((run / "metrics.json").read_text())["AP"] == pytest.approx(max(aps), abs=1e-4)

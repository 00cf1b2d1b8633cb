"""Small-object weighted box loss (--weighted-loss W): the shared rule and its YOLOX / Ultralytics / GFL users."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
from torchvision.ops import generalized_box_iou_loss
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.loss import BboxLoss, E2ELoss, v8DetectionLoss
from yolox.config import YoloxConfig
from yolox.models.losses import IouLoss

from sodet.errors import SodetError
from sodet.losses import BoxRule, RuleBboxLoss, RuleGIoULoss, RuleIouLoss, install_rule, is_small, small_target_loss
from sodet.models.registry import get_family
from sodet.options import check_train_options

YOLOX = get_family("yolox")


# ---------------------------------------------------------------- the shared rule


def test_rule_study_and_scale_forms_by_hand():
    s = torch.tensor([0.25, 0.25, 0.64])  # similarities
    area = torch.tensor([400.0, 1600.0, 100.0])  # small, large, small
    study = small_target_loss(1 - s, area, weight=0.95)
    assert torch.allclose(study, torch.tensor([1 - 0.95 * 0.25, 0.75, 1 - 0.95 * 0.64]), atol=1e-7)
    scale = small_target_loss(1 - s, area, weight=2.0, form="scale")
    assert torch.allclose(scale, torch.tensor([2 * 0.75, 0.75, 2 * 0.36]), atol=1e-7)


def test_rule_area_boundary_is_strict():
    area = torch.tensor([1023.0, 1023.999, 1024.0, 1024.001, 1025.0])
    assert is_small(area).tolist() == [True, True, False, False, False]
    assert is_small(torch.tensor([99.0, 100.0]), small_area=100).tolist() == [True, False]
    loss = torch.full((5,), 0.5)
    out = small_target_loss(loss, area, weight=3.0, form="scale")
    assert out.tolist() == [1.5, 1.5, 0.5, 0.5, 0.5]


def test_rule_weight_one_is_identity_and_bad_settings_are_refused_where_given():
    loss = torch.rand(100)
    area = torch.rand(100) * 3000
    for form in ("study", "scale"):
        assert torch.equal(small_target_loss(loss, area, 1.0, form=form), loss)
    for bad, message in [(dict(weight_form="squared"), "--weight-form must be one of"),
                         (dict(weighted_loss=0.0), "--weighted-loss must be a number above 0"),
                         (dict(weighted_loss=float("nan")), "--weighted-loss must be a number above 0"),
                         (dict(small_area=0), "--small-area must be a number above 0")]:
        with pytest.raises(SodetError, match=message):
            check_train_options(**bad)


def test_box_rule_from_options_and_boxes_in_pixels():
    from sodet.options import RunOptions

    assert BoxRule.from_options(RunOptions()) is None  # nothing asked: the family's loss stays as it is
    rule = BoxRule.from_options(RunOptions(weighted_loss=2.0, weight_form="scale", small_area=100.0))
    assert rule == BoxRule(2.0, 100.0, "scale")
    target = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 10.0, 10.0]])  # areas 81 (small) and 100 (not)
    assert rule(torch.tensor([0.5, 0.5]), target, target).tolist() == [1.0, 0.5]


# ---------------------------------------------------------------- YOLOX IouLoss


def _cxcywh_pairs(n: int, seed: int = 0):
    """Random overlapping pred/target pairs in input pixels, half of them small targets."""
    g = torch.Generator().manual_seed(seed)
    target = torch.cat([torch.rand(n, 2, generator=g) * 300 + 50, torch.rand(n, 2, generator=g) * 60 + 4], 1)
    pred = target + torch.randn(n, 4, generator=g) * torch.cat([target[:, 2:], target[:, 2:]], 1) * 0.15
    pred[:, 2:] = pred[:, 2:].abs() + 1
    return pred, target


def test_yolox_weight_one_equals_stock_values_and_gradients():
    pred, target = _cxcywh_pairs(256)
    for loss_type in ("iou", "giou"):
        p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
        stock = IouLoss(reduction="none", loss_type=loss_type)(p1, target)
        ours = RuleIouLoss(BoxRule(1.0), loss_type=loss_type)(p2, target)
        assert torch.equal(stock, ours)
        stock.sum().backward()
        ours.sum().backward()
        assert torch.equal(p1.grad, p2.grad)


def test_yolox_hand_values():
    # pred has the target's centre and half its height: IoU = 1/2, stock loss 1 - 1/4
    target = torch.tensor([[10.0, 10.0, 20.0, 20.0], [100.0, 100.0, 40.0, 40.0]])  # areas 400 (small), 1600
    pred = torch.tensor([[10.0, 10.0, 20.0, 10.0], [100.0, 100.0, 40.0, 20.0]])
    assert torch.allclose(IouLoss()(pred, target), torch.tensor([0.75, 0.75]))
    study = RuleIouLoss(BoxRule(0.95))(pred, target)
    assert torch.allclose(study, torch.tensor([1 - 0.95 * 0.25, 0.75]))
    scale = RuleIouLoss(BoxRule(2.0, form="scale"))(pred, target)
    assert torch.allclose(scale, torch.tensor([1.5, 0.75]))


def test_yolox_area_boundary():
    target = torch.tensor([[50.0, 50.0, 32.0, 31.99], [50.0, 50.0, 32.0, 32.0], [50.0, 50.0, 32.0, 32.01]])
    pred = target.clone()
    pred[:, 2] = 16.0  # IoU about 1/2 on all three
    stock = IouLoss()(pred, target)
    ours = RuleIouLoss(BoxRule(2.0, form="scale"))(pred, target)
    assert torch.equal(ours, torch.stack([2 * stock[0], stock[1], stock[2]]))


@pytest.mark.parametrize("weight", [0.5, 0.95, 2.0])
def test_yolox_gradient_is_w_times_stock_on_small_targets_only(weight):
    pred, target = _cxcywh_pairs(256, seed=1)
    small = target[:, 2] * target[:, 3] < 1024
    assert 20 < small.sum() < 236
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    IouLoss()(p1, target).sum().backward()
    RuleIouLoss(BoxRule(weight))(p2, target).sum().backward()
    assert torch.equal(p2.grad[~small], p1.grad[~small])
    if weight in (0.5, 2.0):  # powers of two scale floats exactly
        assert torch.equal(p2.grad[small], weight * p1.grad[small])
    else:
        assert torch.allclose(p2.grad[small], weight * p1.grad[small], rtol=1e-5, atol=1e-7)  # backward sums round differently


# ---------------------------------------------------------------- Ultralytics BboxLoss


def _bbox_loss_inputs(reg_max: int, seed: int = 0):
    """BboxLoss inputs as v8DetectionLoss builds them: grid units, stride per anchor, pixels = grid * stride."""
    g = torch.Generator().manual_seed(seed)
    b, a, nc = 2, 96, 3
    stride = torch.tensor([8.0] * 64 + [16.0] * 24 + [32.0] * 8).view(a, 1)
    anchor_points = torch.rand(a, 2, generator=g) * 8 + 2
    wh = torch.rand(b, a, 2, generator=g) * 5 + 0.5  # grid units: 4..44 px at stride 8
    target = torch.cat([anchor_points - wh / 2, anchor_points + wh / 2], -1)
    pred = target + torch.randn(b, a, 4, generator=g) * 0.3
    pred_dist = torch.randn(b, a, 4 * reg_max, generator=g) if reg_max > 1 else torch.rand(b, a, 4, generator=g) * 3
    target_scores = torch.rand(b, a, nc, generator=g) * 0.5
    fg_mask = torch.rand(b, a, generator=g) > 0.4
    target_scores[~fg_mask] = 0
    imgsz = torch.tensor([96.0, 128.0])
    return pred_dist, pred, anchor_points, target, target_scores, target_scores.sum().clamp(min=1), fg_mask, imgsz, stride


def _target_area_px(args):
    target, fg_mask, stride = args[3], args[6], args[8]
    px = target * stride
    return ((px[..., 2] - px[..., 0]) * (px[..., 3] - px[..., 1]))[fg_mask]


def _run_bbox_loss(loss_module, args):
    """Both terms and the gradients w.r.t. the predicted boxes and distributions."""
    pred_dist = args[0].clone().requires_grad_()
    pred = args[1].clone().requires_grad_()
    loss_iou, loss_dfl = loss_module(pred_dist, pred, *args[2:])
    (g_box,) = torch.autograd.grad(loss_iou, pred, retain_graph=True)
    (g_dist,) = torch.autograd.grad(loss_dfl, pred_dist)
    return loss_iou, loss_dfl, g_box, g_dist


@pytest.mark.parametrize("reg_max", [16, 1])  # DFL (YOLO11) and L1 (YOLO26) branches
def test_ultralytics_weight_one_equals_stock(reg_max):
    args = _bbox_loss_inputs(reg_max)
    assert is_small(_target_area_px(args)).any() and (~is_small(_target_area_px(args))).any()
    stock = _run_bbox_loss(BboxLoss(reg_max), args)
    for form in ("study", "scale"):
        ours = _run_bbox_loss(RuleBboxLoss(reg_max, BoxRule(1.0, form=form)), args)
        for a, b in zip(stock, ours):
            assert torch.equal(a, b)


@pytest.mark.parametrize("reg_max", [16, 1])
def test_ultralytics_dfl_term_untouched_and_box_gradient_scaled(reg_max):
    args = _bbox_loss_inputs(reg_max, seed=3)
    small = is_small(_target_area_px(args))
    fg = args[6]
    stock = _run_bbox_loss(BboxLoss(reg_max), args)
    for weight in (0.5, 0.95):
        ours = _run_bbox_loss(RuleBboxLoss(reg_max, BoxRule(weight)), args)
        assert torch.equal(ours[1], stock[1]) and torch.equal(ours[3], stock[3])
        g_ours, g_stock = ours[2][fg], stock[2][fg]
        assert torch.equal(g_ours[~small], g_stock[~small])
        if weight == 0.5:
            assert torch.equal(g_ours[small], 0.5 * g_stock[small])
        else:
            assert torch.allclose(g_ours[small], weight * g_stock[small], rtol=1e-5, atol=1e-7)  # backward sums round differently
        assert torch.equal(ours[2][~fg], torch.zeros_like(ours[2][~fg]))


def test_ultralytics_hand_values_and_area_in_pixels():
    # concentric boxes of equal aspect ratio: CIoU == IoU; pred half the target's side gives IoU 1/4
    side_grid = torch.tensor([4.0, 4.0, 3.875, 4.125, 2.0])  # grid units
    stride = torch.tensor([8.0, 16.0, 8.0, 8.0, 32.0]).view(5, 1)  # px sides 32, 64, 31, 33, 64
    centre = torch.full((5, 2), 10.0)
    half = side_grid.view(5, 1) / 2
    target = torch.cat([centre - half, centre + half], -1).unsqueeze(0)
    pred = torch.cat([centre - half / 2, centre + half / 2], -1).unsqueeze(0)
    target_scores = torch.tensor([0.5, 1.0, 0.25, 0.75, 1.0]).view(1, 5, 1)
    tss = target_scores.sum()
    fg = torch.ones(1, 5, dtype=torch.bool)
    args = (torch.zeros(1, 5, 64), pred, centre, target, target_scores, tss, fg, torch.tensor([160.0, 160.0]), stride)
    loss_iou, _ = RuleBboxLoss(16, BoxRule(0.8))(*args)
    # only the 31 px box (area 961) is small; the 32 px box (area 1024) is not
    per_target = torch.tensor([0.75, 0.75, 1 - 0.8 * 0.25, 0.75, 0.75])
    expected = (per_target * target_scores.view(-1)).sum() / tss
    assert torch.allclose(loss_iou, expected, atol=1e-6)
    stock_iou, _ = BboxLoss(16)(*args)
    assert torch.allclose(stock_iou, torch.tensor(0.75), atol=1e-6)


# ---------------------------------------------------------------- GFL's GIoU


def test_giou_hand_values():
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 40.0, 40.0]])
    pred = torch.tensor([[5.0, 5.0, 15.0, 15.0], [15.0, 5.0, 25.0, 15.0], [20.0, 20.0, 60.0, 60.0]])
    # overlap 25 of union 175 in a 15x15 hull; disjoint, union 200 in a 25x15 hull; overlap 400 of 2800 in 60x60
    giou = torch.tensor([25 / 175 - (225 - 175) / 225, 0 - (375 - 200) / 375, 400 / 2800 - (3600 - 2800) / 3600])
    assert torch.allclose(RuleGIoULoss(BoxRule(1.0))(pred, target), 1 - giou, atol=1e-6)
    assert torch.equal(RuleGIoULoss(BoxRule(1.0))(pred, target), generalized_box_iou_loss(pred, target))
    expected = torch.stack([1 - 0.95 * giou[0], 1 - 0.95 * giou[1], 1 - giou[2]])
    assert torch.allclose(RuleGIoULoss(BoxRule(0.95))(pred, target), expected, atol=1e-6)
    scale = RuleGIoULoss(BoxRule(2.0, form="scale"))(pred, target)
    assert torch.allclose(scale, torch.stack([2 * (1 - giou[0]), 2 * (1 - giou[1]), 1 - giou[2]]), atol=1e-6)


# ---------------------------------------------------------------- through the real heads


def _yolox_nano():
    config = YoloxConfig.get_named_config("yolox_nano")
    config.num_classes = 2
    return config.get_model().train()


def _yolox_batch():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 128, 128, generator=g) * 255
    labels = torch.zeros(2, 4, 5)  # cls, cx, cy, w, h in pixels; zero rows are padding
    labels[0, :3] = torch.tensor([[0, 30, 30, 14, 18], [1, 80, 70, 60, 50], [0, 100, 30, 24, 20]])
    labels[1, :2] = torch.tensor([[1, 64, 64, 90, 100], [0, 20, 100, 12, 10]])
    return images, labels


def _yolox_losses(model, images, labels):
    model.zero_grad()
    out = model(images, labels)
    out["total_loss"].backward()
    return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_yolox_head_weight_one_same_as_stock_and_weighted_differs():
    torch.manual_seed(0)
    model = _yolox_nano()
    images, labels = _yolox_batch()
    stock, stock_grads = _yolox_losses(model, images, labels)

    YOLOX.install_box_rule(model, BoxRule(1.0))
    assert isinstance(model.head.iou_loss, RuleIouLoss)
    same, same_grads = _yolox_losses(model, images, labels)
    assert torch.equal(same["total_loss"], stock["total_loss"])
    assert all(torch.equal(a, b) for a, b in zip(stock_grads, same_grads))

    YOLOX.install_box_rule(model, BoxRule(2.0, form="scale"))  # installing again replaces
    weighted, _ = _yolox_losses(model, images, labels)
    assert weighted["iou_loss"] > stock["iou_loss"]
    for key in ("conf_loss", "cls_loss", "num_fg"):
        assert weighted[key] == stock[key]


def _ultralytics_batch():
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    boxes_px = torch.tensor([[30, 30, 14, 18], [80, 70, 60, 50], [100, 30, 24, 20], [64, 64, 90, 100], [20, 100, 12, 10]])
    return {
        "img": images,
        "batch_idx": torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0]]),
        "bboxes": boxes_px.float() / 128,  # normalised xywh
    }


@pytest.mark.parametrize("cfg, criterion_type", [("yolo11n.yaml", v8DetectionLoss), ("yolo26n.yaml", E2ELoss)])
def test_ultralytics_criterion_weight_one_same_as_stock_and_weighted_differs(cfg, criterion_type):
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=2, verbose=False)
    model.args = get_cfg()
    batch = _ultralytics_batch()
    preds = model(batch["img"])
    criterion = model.init_criterion()
    assert type(criterion) is criterion_type
    stock, stock_items = criterion(preds, batch)

    assert install_rule(criterion, BoxRule(1.0)) is criterion
    same, _ = criterion(preds, batch)
    assert torch.equal(same, stock)

    install_rule(criterion, BoxRule(0.5, form="scale"))
    weighted, items = criterion(preds, batch)
    assert weighted[0] < stock[0]  # box term: small targets' part halved
    assert torch.equal(weighted[1:], stock[1:])  # cls and dfl/l1 untouched
    losses = [criterion.one2many, criterion.one2one] if criterion_type is E2ELoss else [criterion]
    reg_max = model.model[-1].reg_max
    for loss in losses:
        assert isinstance(loss.bbox_loss, RuleBboxLoss)
        assert loss.bbox_loss.reg_max == reg_max and loss.bbox_loss.rule.weight == 0.5
        assert (loss.bbox_loss.dfl_loss is None) == (reg_max == 1)


def test_installed_losses_deepcopy_and_pickle():
    model = _yolox_nano()
    YOLOX.install_box_rule(model, BoxRule(0.95))
    clone = pickle.loads(pickle.dumps(copy.deepcopy(model)))
    assert isinstance(clone.head.iou_loss, RuleIouLoss) and clone.head.iou_loss.rule.weight == 0.95

    detector = DetectionModel("yolo26n.yaml", nc=2, verbose=False)
    detector.args = get_cfg()
    detector.criterion = install_rule(detector.init_criterion(), BoxRule(2.0, small_area=256, form="scale"))
    clone = pickle.loads(pickle.dumps(copy.deepcopy(detector)))
    bbox_loss = clone.criterion.one2one.bbox_loss
    assert isinstance(bbox_loss, RuleBboxLoss)
    assert bbox_loss.rule == BoxRule(2.0, 256.0, "scale")


def test_install_rejects_other_objects():
    with pytest.raises(TypeError):
        install_rule(object(), BoxRule(0.95))


def test_losses_pickled_by_sodet_0_3_load_with_their_weighting():
    """Checkpoints of sodet 0.3 hold the old class names with weight / small_area / form attributes."""
    from sodet.losses.yolox_iou import SmallWeightedIouLoss

    old = RuleIouLoss()
    state = {k: v for k, v in old.__dict__.items() if k != "rule"}
    state.update(weight=0.95, small_area=1024.0, form="study")
    restored = SmallWeightedIouLoss.__new__(SmallWeightedIouLoss)
    restored.__setstate__(state)
    pred, target = _cxcywh_pairs(16)
    assert restored.rule == BoxRule(0.95) and torch.equal(restored(pred, target), RuleIouLoss(BoxRule(0.95))(pred, target))


# ---------------------------------------------------------------- a short training run with the option on


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "model_name",
    ["yolox-nano", "yolo11n", "yolo26n"],
)
def test_short_training_run_uses_weighted_loss(model_name, tmp_path, monkeypatch):
    """One epoch on coco-pc-mini at 128 px with --weighted-loss 0.95: the weighted loss runs and is saved."""
    from sodet import api

    calls = []
    for cls in (RuleIouLoss, RuleBboxLoss):
        monkeypatch.setattr(cls, "forward", _counting(cls.forward, calls))
    run = api.train(
        model=model_name, weights="none" if model_name != "yolox-nano" else None,
        data=str(ROOT / "datasets" / "coco-pc-mini"), weighted_loss=0.95, epochs=1, imgsz=128,
        batch=8, workers=0, device="cpu", project=str(tmp_path), name="run", plots=False, val=False,
    )
    assert len(calls) >= 4  # 32 images, batch 8: one weighted box loss per training step at least
    ckpt = torch.load(Path(run) / "weights" / "last.pt", map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt["model"]).float()
    assert model.sodet.weighted_loss == 0.95 and model.sodet.weight_form == "study"
    if model_name == "yolox-nano":
        assert isinstance(model.head.iou_loss, RuleIouLoss) and model.head.iou_loss.rule.weight == 0.95
    else:
        criterion = model.init_criterion()
        for loss in [criterion.one2many, criterion.one2one] if isinstance(criterion, E2ELoss) else [criterion]:
            assert isinstance(loss.bbox_loss, RuleBboxLoss) and loss.bbox_loss.rule.weight == 0.95


def _counting(forward, calls: list):
    def counted(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return forward(self, *args, **kwargs)

    return counted

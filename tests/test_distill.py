"""Channel-wise distillation (``sodet distill``): the teacher frozen and outside everything saved, gradients only
into the student and its connectors, pairing refused before training, the divergence guard, and short runs per
family (the loss itself is checked against MMRazor in test_losses_cwd.py)."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch

from sodet.assets import COCO_MINI, embedded_data, shipped_weights
from sodet.engine.build import build_model
from sodet.engine.distill import GUARD_STEPS, CwdDistiller, DivergenceGuard, build_distiller
from sodet.errors import SodetError
from sodet.options import DistillOptions, RunOptions

MINI = embedded_data(COCO_MINI)
NAMES = {0: "person", 1: "car"}
NANO = str(shipped_weights("yolox_nano_coco_fusedbn.pth"))


def teacher_file(tmp_path: Path, arch: str = "yolox-tiny", names: dict = NAMES, seed: int = 0) -> str:
    """A checkpoint holding a model object (as sodet and Ultralytics write them), random weights."""
    torch.manual_seed(seed)
    if arch.startswith(("yolox", "gfl")):
        from sodet.models.registry import get_entry

        model = get_entry(arch).build(len(names), names)
    else:  # the engine's own class: what an Ultralytics .pt holds
        from ultralytics.nn.tasks import DetectionModel

        model = DetectionModel(f"{arch}.yaml", nc=len(names), verbose=False)
        model.names = names
    path = tmp_path / f"{arch}-teacher.pt"
    torch.save({"model": model}, path)
    return str(path)


def student(teacher: str, model: str = "yolox-nano", weights: str | None = NANO, on: str = "neck", **kw) -> torch.nn.Module:
    opts = RunOptions(model=model, weights=weights, freeze_bn=True, distill=DistillOptions(teacher=teacher, on=on, **kw))
    return build_model(opts, 2, NAMES)


def batch(n: int = 2, size: int = 160) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "img": torch.rand(n, 3, size, size, generator=g),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]]),
    }


def test_self_distillation_starts_at_zero_and_teacher_is_not_in_the_module():
    """Student == teacher (the shipped nano both): every level's CWD is 0; the teacher is held outside the
    module tree: not in state_dict, parameters, train(), a deep copy (EMA) or a pickle (checkpoint, DDP)."""
    model = build_distiller(student("yolox-nano"), imgsz=160).train()
    loss, items = model.loss(batch())
    assert abs(float(items["cwd_loss"])) < 1e-6 and float(items["det_loss"]) > 0
    teacher = model.teacher
    assert not teacher.training  # model.train() did not reach it
    assert all(not k.startswith("_teacher") and "teacher." not in k for k in model.state_dict())
    assert {id(p) for p in model.parameters()}.isdisjoint({id(p) for p in teacher.parameters()})
    assert copy.deepcopy(model).__dict__["_teacher"] is None
    assert all(isinstance(c.student, torch.nn.Identity) for c in model.projector)  # same widths: no connector


def test_gradients_reach_student_and_connectors_only_and_teacher_never_changes(tmp_path):
    """nano (64/128/256 channels) from a tiny teacher (96/192/384): connectors map the widths; SGD steps move the
    student and the connectors, the teacher's weights stay bit-identical."""
    model = build_distiller(student(teacher_file(tmp_path)), imgsz=160).train()
    widths = [(c.student[0].in_channels, c.student[0].out_channels) for c in model.projector]
    assert widths == [(64, 96), (128, 192), (256, 384)]
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    connector0 = model.projector[0].student[0].weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    for _ in range(2):
        opt.zero_grad()
        loss, items = model.loss(batch())
        assert float(items["cwd_loss"]) > 0
        loss.backward()
        assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
        assert model.projector[0].student[0].weight.grad.abs().sum() > 0
        assert model.student_model.backbone.backbone.stem.conv.conv.weight.grad.abs().sum() > 0
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.teacher.state_dict().items())
    assert not torch.equal(model.projector[0].student[0].weight, connector0)


def test_connectors_restored_on_resume(tmp_path):
    t = teacher_file(tmp_path)
    model = build_distiller(student(t), imgsz=160)
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(1.0)
    again = build_distiller(student(t), imgsz=160, projector_state=model.projector.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.projector.state_dict().values(), again.projector.state_dict().values()))


def test_guard_stops_on_nan_and_on_a_runaway_ratio():
    model = build_distiller(student("yolox-nano"), imgsz=160).train()
    with torch.no_grad():
        model.teacher.backbone.backbone.stem.conv.conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(SodetError, match="CWD loss is nan"):
        model.loss(batch())
    guard = DivergenceGuard(max_ratio=10)
    for _ in range(GUARD_STEPS - 1):
        guard(cwd=50.0, det=1.0)
    guard(cwd=1.0, det=1.0)  # a normal step resets the count
    for _ in range(GUARD_STEPS - 1):
        guard(cwd=50.0, det=1.0)
    with pytest.raises(SodetError, match="stayed above 10 x the detection loss"):
        guard(cwd=50.0, det=1.0)
    DivergenceGuard(max_ratio=0)(cwd=1e9, det=1.0)  # 0: off


def test_pairing_refused_before_training(tmp_path):
    other = teacher_file(tmp_path, "yolox-tiny", names={0: "person", 1: "bicycle"})
    with pytest.raises(SodetError, match="--distill-on head: the teacher has no class car"):
        build_distiller(student(other, on="head"), imgsz=160)
    build_distiller(student(other, on="neck"), imgsz=160)  # the neck does not care about classes
    with pytest.raises(SodetError, match="no weights"):
        build_distiller(student("yolox-s", teacher_weights="none"), imgsz=160)  # a random teacher teaches nothing
    with pytest.raises(SodetError, match="yolox_s.pth are not cached and downloads are off"):
        build_distiller(student("yolox-s"), imgsz=160)  # its table weights, offline: what to fetch, where
    s = student(teacher_file(tmp_path))
    teacher = build_distiller(s, imgsz=160).teacher
    teacher.stride = torch.tensor([64.0, 128.0, 256.0])
    with pytest.raises(SodetError, match="share none"):
        CwdDistiller(s, teacher, imgsz=160)
    teacher.stride = torch.tensor([16.0, 32.0, 64.0])  # claims strides its maps do not have
    with pytest.raises(SodetError, match="stride-16 map is"):
        CwdDistiller(s, teacher, imgsz=160)


def test_head_distillation_takes_the_teachers_rows_of_the_students_classes(tmp_path):
    """An 80-class COCO teacher onto a (person, car) student: the teacher's logits of rows 0 and 2, by name."""
    from sodet.models.weights import coco80_names

    coco = teacher_file(tmp_path, "yolox-tiny", names=dict(enumerate(coco80_names())))
    model = build_distiller(student(coco, on="head"), imgsz=160).train()
    assert model.teacher_rows == [0, 2]
    maps = model.teacher_maps(batch()["img"])
    assert [m.shape[1] for m in maps] == [2, 2, 2]
    from sodet.models.features import FeatureTap, feature_modules

    with torch.no_grad(), FeatureTap(feature_modules(model.teacher, "head")) as tap:
        model.teacher(batch()["img"])
    assert all(torch.equal(m, full[:, [0, 2]]) for m, full in zip(maps, tap.maps))
    loss, items = model.loss(batch())
    assert torch.isfinite(loss) and float(items["cwd_loss"]) > 0


def test_across_families_yolox_teacher_ultralytics_student(tmp_path):
    """YOLOX and Ultralytics YOLO share strides 8/16/32: a YOLOX teacher distils a yolov8n student's neck."""
    model = build_distiller(student(teacher_file(tmp_path), model="yolov8n", weights=None), imgsz=128).train()
    model.args = __import__("ultralytics").cfg.get_cfg()  # the engine sets the student's hyperparameters
    loss, items = model.loss(batch(size=128))
    assert model.strides == [8, 16, 32] and float(items["cwd_loss"]) > 0 and torch.isfinite(loss)


def test_across_families_gfl_teacher_yolox_student(tmp_path):
    """GFL's FPN (strides 8..128, 256 channels) teaches YOLOX's PAFPN (8/16/32, 64/128/256): the three common
    strides are paired and connectors map the widths."""
    model = build_distiller(student(teacher_file(tmp_path, "gfl-r18")), imgsz=128).train()
    assert model.strides == [8, 16, 32]
    assert [c.student[0].in_channels if len(c.student._modules) else None for c in model.projector] == [64, 128, None]
    loss, items = model.loss(batch(size=128))
    assert float(items["cwd_loss"]) > 0 and torch.isfinite(loss)


def read_results(run: Path) -> list[dict]:
    with open(run / "results.csv") as f:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]


def test_distill_run_yolox_saves_a_plain_student_and_resumes(tmp_path):
    """A short run: det and cwd loss in results.csv; best.pt holds the student only and validates like a plain
    run; an interrupted run (last.pt of epoch 1) resumes with its teacher, connectors and CWD options."""
    from sodet.api import distill, train, val

    common = dict(data=str(MINI), imgsz=160, batch=8, device="cpu", workers=0, plots=False, project=str(tmp_path), seed=0)
    run = distill(teacher=teacher_file(tmp_path), model="yolox-nano", epochs=3, name="d", save_period=1, stop_distill=0.5, copy_paste=True, weighted_loss=2.0, weight_form="scale", **common)
    rows = read_results(run)
    assert [float(r["train/cwd_loss"]) > 0 for r in rows] == [True, True, False]  # off for the last half
    assert all(float(r["train/det_loss"]) > 0 for r in rows)
    for name in ("best.pt", "last.pt"):
        ck = torch.load(run / "weights" / name, weights_only=False)
        saved = ck.get("ema") or ck["model"]
        assert type(saved).__name__ == "YoloxDetector"
        assert not any("projector" in k or "teacher" in k for k in saved.state_dict())
    m_train = json.loads((run / "metrics.json").read_text())
    _, m_val = val(model=str(run / "weights" / "best.pt"), out=str(tmp_path / "v"), device="cpu", batch=16)
    assert m_val["AP"] == pytest.approx(m_train["AP"], abs=1e-6)

    epoch0 = torch.load(run / "weights" / "epoch0.pt", weights_only=False)
    assert isinstance(epoch0["ema"], CwdDistiller) and epoch0["ema"].__dict__["_teacher"] is None
    torch.save(epoch0, run / "weights" / "last.pt")
    assert train(resume=str(run / "weights" / "last.pt"), device="cpu") == run
    rows = read_results(run)
    assert [r["epoch"] for r in rows][-2:] == ["2", "3"] and float(rows[-2]["train/cwd_loss"]) > 0


def test_distill_run_ultralytics_head(tmp_path):
    """Ultralytics YOLO pair, class logits distilled, from an Ultralytics .pt teacher."""
    from sodet.api import distill

    run = distill(
        teacher=teacher_file(tmp_path, "yolov8n"), model="yolov8n", weights="none", distill_on="head", data=str(MINI), imgsz=128,
        batch=8, device="cpu", workers=0, plots=False, project=str(tmp_path), epochs=1, name="u",
    )
    row = read_results(run)[0]
    assert float(row["train/cwd_loss"]) > 0 and float(row["train/det_loss"]) > 0
    ck = torch.load(run / "weights" / "best.pt", weights_only=False)
    assert type(ck["model"]).__name__ == "SodetDetectionModel"


def test_distill_run_gfl(tmp_path):
    """GFL pair (r34 teacher -> r18 student), class logits of the 5 levels through the shared gfl_cls."""
    from sodet.api import distill

    run = distill(
        teacher=teacher_file(tmp_path, "gfl-r34"), model="gfl-r18", weights="none", distill_on="head", data=str(MINI), imgsz=128,
        batch=4, device="cpu", workers=0, plots=False, project=str(tmp_path), epochs=1, name="g", fraction=0.25,
    )
    row = read_results(run)[0]
    assert float(row["train/cwd_loss"]) > 0 and float(row["train/det_loss"]) > 0
    ck = torch.load(run / "weights" / "best.pt", weights_only=False)
    assert type(ck["model"]).__name__ == "GflDetector"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--teacher", "missing.pt"], "weights file not found"),
        (["--teacher", "yolox-huge"], "unknown model"),
        (["--teacher", "yolox-nano", "--tau", "0"], "--tau must be a number above 0"),
        (["--teacher", "yolox-nano", "--stop-distill", "1.5"], "--stop-distill must be in (0, 1]"),
        (["--teacher", "yolox-nano", "--distill-on", "backbone"], "--distill-on must be one of"),
        ([], "needs --teacher"),
    ],
)
def test_cli_refuses_bad_distill_options_in_one_line(args, message):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sodet.cli", "distill", *args, "--epochs", "1"], capture_output=True, text=True)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

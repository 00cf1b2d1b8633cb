"""Channel-wise distillation (CWD) from a frozen teacher: the model the trainer trains when ``options.distill`` is set.

``CwdDistiller`` wraps the student. Its ``loss`` runs the teacher on the same (augmented, preprocessed) batch under
the student's autocast, reads both networks' maps at the same strides (``sodet.models.features``), maps the student's
through a connector where widths differ (mmyolo's RTMDet-KD recipe: 1x1 conv + non-affine BatchNorm on the student,
the same non-affine BatchNorm on the teacher) and adds ``weight * CWD`` per level to the student's detection loss.

Where the teacher lives: not in the module tree. It is held outside ``_modules`` and dropped whenever the wrapper is
pickled or deep-copied, so it is in no optimizer, no EMA, no checkpoint and no state dict, and its parameters can
never change; any process that lacks it (a resumed run, a multi-GPU worker) rebuilds it from ``DistillOptions``.
The connectors are ``projector`` (the name the engine's own DistillationModel uses, so the engine's NaN recovery
restores them with the student); they train with the student, are saved in ``last.pt`` for resume, and are dropped
with the wrapper from the final checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from ultralytics.utils import LOGGER, colorstr

from sodet.errors import SodetError
from sodet.losses.cwd import ChannelWiseDivergence
from sodet.models.features import FeatureTap, feature_modules, level_strides
from sodet.models.registry import family_of
from sodet.models.weights import model_names as class_names
from sodet.options import DistillOptions, RunOptions

GUARD_STEPS = 10  # consecutive steps above the ratio bound before a run is stopped


class Connector(nn.Module):
    """Maps a student map to the teacher's width: identity when the widths agree, else a 1x1 conv (no bias) +
    non-affine BatchNorm on the student and the same non-affine BatchNorm on the teacher."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        if student_channels == teacher_channels:
            self.student, self.teacher = nn.Identity(), nn.Identity()
        else:
            self.student = nn.Sequential(
                nn.Conv2d(student_channels, teacher_channels, 1, bias=False), nn.BatchNorm2d(teacher_channels, affine=False)
            )
            self.teacher = nn.BatchNorm2d(teacher_channels, affine=False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            teacher = self.teacher(teacher)
        return self.student(student), teacher


class DivergenceGuard:
    """Stops a run whose distillation term is NaN/inf, or above ``max_ratio`` x the detection loss for
    ``GUARD_STEPS`` steps in a row (the reference study's YOLOX collapse must not pass silently)."""

    def __init__(self, max_ratio: float):
        self.max_ratio = max_ratio
        self.streak = 0

    def __call__(self, cwd: float, det: float) -> None:
        if not math.isfinite(cwd):
            raise SodetError(f"distillation stopped: the CWD loss is {cwd} (detection loss {det:.4g}); last.pt holds the last good epoch")
        if self.max_ratio > 0 and cwd > self.max_ratio * abs(det):
            self.streak += 1
            if self.streak >= GUARD_STEPS:
                raise SodetError(
                    f"distillation stopped: CWD loss {cwd:.4g} stayed above {self.max_ratio:g} x the detection loss "
                    f"({det:.4g}) for {GUARD_STEPS} steps; lower --cwd-weight (or --cwd-max-ratio 0 to allow it)"
                )
        else:
            self.streak = 0


def load_teacher(opts: DistillOptions, names: dict) -> nn.Module:
    """The frozen teacher: a sodet or Ultralytics checkpoint, or a registry name with its weights (``--teacher-weights``
    or the weights table's, fetched on first use), built with the student's class names (a COCO head cut to them by
    name, as for fine-tuning)."""
    from sodet.engine.build import build_model
    from sodet.models.resolve import resolve_model

    resolved = resolve_model(opts.teacher, opts.teacher_weights)
    if resolved.kind == "checkpoint":
        teacher = resolved.module
    elif resolved.kind == "registry":
        if resolved.weights is None:
            raise SodetError(f"teacher {opts.teacher} has no weights: pass --teacher-weights FILE (a random teacher teaches nothing)")
        teacher = build_model(RunOptions(model=resolved.entry.name, weights=str(resolved.weights)), len(names), names)
    else:
        raise SodetError(f"teacher {opts.teacher}: an exported model cannot teach (its features are not reachable); pass its .pt")
    teacher = teacher.float().eval()
    if hasattr(teacher, "pixels_in_unit_range"):
        teacher.pixels_in_unit_range()  # same function; keeps a folded teacher's activations fp16-safe under AMP
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def student_attribute(name: str) -> property:
    """An attribute of the wrapper that reads and writes the student's."""
    return property(lambda self: getattr(self.student_model, name), lambda self, v: setattr(self.student_model, name, v))


class CwdDistiller(nn.Module):
    """The student plus what distillation adds; to the engine it looks like the student (attributes pass through)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, imgsz: int):
        super().__init__()
        self.student_model = student
        opts = self.distill_options
        object.__setattr__(self, "_teacher", teacher)  # outside the module tree: no train(), optimizer, EMA, state dict
        s_strides, t_strides = level_strides(student), level_strides(teacher)
        self.strides = [s for s in s_strides if s in t_strides]
        if not self.strides:
            raise SodetError(f"teacher strides {t_strides} share none with the student's {s_strides}: cannot pair their maps")
        self.teacher_rows = None  # head maps: the teacher's class rows of the student's class names
        if opts.on == "head" and class_names(teacher) != class_names(student):
            t_names = class_names(teacher)
            absent = [n for n in class_names(student) if n not in t_names]
            if absent:
                raise SodetError(f"--distill-on head: the teacher has no class {', '.join(absent)} (its classes: "
                                 f"{', '.join(t_names[:10])}{' ...' if len(t_names) > 10 else ''})")
            self.teacher_rows = [t_names.index(n) for n in class_names(student)]
        self.student_levels = [s_strides.index(s) for s in self.strides]
        self.teacher_levels = [t_strides.index(s) for s in self.strides]
        s_maps, t_maps = self._probe(imgsz)
        self.projector = nn.ModuleList(Connector(s.shape[1], t.shape[1]) for s, t in zip(s_maps, t_maps))
        self.cwd = ChannelWiseDivergence(opts.tau, opts.weight)
        self.active = True  # switched off for the last epochs by ``distill_schedule``
        self._guard = DivergenceGuard(opts.max_ratio)

    # what the engine sees ----------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            student = self.__dict__.get("_modules", {}).get("student_model")
            if student is None or name.startswith("__"):
                raise
            return getattr(student, name)

    # attributes the engine sets on its model belong to the student
    args = student_attribute("args")
    nc = student_attribute("nc")
    names = student_attribute("names")
    sodet = student_attribute("sodet")
    class_weights = student_attribute("class_weights")

    @property
    def distill_options(self) -> DistillOptions:
        return self.student_model.sodet.distill

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_teacher"] = None  # never pickled, deep-copied (EMA) or saved: rebuilt where needed
        return state

    def half(self):
        """The engine halves checkpoints: the student decides what that means for it (YOLOX stays fp32)."""
        self.student_model.half()
        return self

    def fuse(self, *args, **kwargs):
        return self.student_model.fuse(*args, **kwargs)

    @property
    def teacher(self) -> nn.Module:
        if self._teacher is None:
            object.__setattr__(self, "_teacher", load_teacher(self.distill_options, self.student_model.names))
        return self._teacher

    # maps ------------------------------------------------------------------------------------------------
    def _select(self, maps: list, levels: list[int], who: str, n_levels: int) -> list:
        if len(maps) != n_levels:
            raise SodetError(f"{who}'s {self.distill_options.on} gave {len(maps)} maps for {n_levels} levels")
        return [maps[i] for i in levels]

    def teacher_maps(self, img: torch.Tensor) -> list[torch.Tensor]:
        teacher = self.teacher
        if next(teacher.parameters()).device != img.device:
            teacher.to(img.device)
        n = len(level_strides(teacher))
        with torch.no_grad(), FeatureTap(feature_modules(teacher, self.distill_options.on), n, stop=True) as tap:
            teacher(img)
        maps = self._select(tap.maps, self.teacher_levels, "the teacher", n)
        rows = getattr(self, "teacher_rows", None)
        return maps if rows is None else [m[:, rows] for m in maps]

    @torch.no_grad()
    def _probe(self, imgsz: int) -> tuple[list, list]:
        """One image at the run's size through both: the widths for the connectors, and a refusal before any
        training where the maps of a stride differ in size."""
        student, teacher = self.student_model, self._teacher
        img = torch.zeros(1, 3, imgsz, imgsz, device=next(student.parameters()).device)
        teacher.to(img.device)
        was = student.training
        student.eval()
        try:
            with FeatureTap(feature_modules(student, self.distill_options.on)) as tap:
                student(img)
        finally:
            student.train(was)
        s_maps = self._select(tap.maps, self.student_levels, "the student", len(level_strides(student)))
        t_maps = self.teacher_maps(img)
        for stride, s, t in zip(self.strides, s_maps, t_maps):
            if s.shape[-2:] != t.shape[-2:]:
                raise SodetError(
                    f"at {imgsz} px the teacher's stride-{stride} map is {tuple(t.shape[-2:])}, the student's "
                    f"{tuple(s.shape[-2:])}: pick an --imgsz divisible by {max(level_strides(teacher) + level_strides(student))}"
                )
        return s_maps, t_maps

    # training --------------------------------------------------------------------------------------------
    def forward(self, x, *args, **kwargs):
        if isinstance(x, dict):
            return self.loss(x, *args, **kwargs)
        return self.student_model(x, *args, **kwargs)

    def loss(self, batch: dict, preds=None):
        """Detection loss + weight x CWD per level (training), or the student's loss alone (validation, or
        after ``--stop-distill``); ``det_loss`` and ``cwd_loss`` items are batch means."""
        student = self.student_model
        scale = student.mean_loss_scale(batch["img"].shape[0])
        if not (self.training and self.active):
            loss, items = student.loss(batch) if preds is None else student.loss(batch, preds)
            zero = loss.new_zeros(())
            return loss, {**items, "det_loss": loss.detach().sum() / scale, "cwd_loss": zero}
        t_maps = self.teacher_maps(batch["img"])
        with FeatureTap(feature_modules(student, self.distill_options.on)) as tap:
            loss, items = student.loss(batch)
        s_maps = self._select(tap.maps, self.student_levels, "the student", len(level_strides(student)))
        cwd = loss.new_zeros(())
        for stride, connector, s, t in zip(self.strides, self.projector, s_maps, t_maps):
            if s.shape[-2:] != t.shape[-2:]:
                raise SodetError(f"teacher and student stride-{stride} maps differ: {tuple(t.shape)} vs {tuple(s.shape)}")
            s, t = connector(s.float(), t.float())
            cwd = cwd + self.cwd(s, t)
        det = loss.detach().sum() / scale
        self._guard(float(cwd.detach()), float(det))
        return loss.sum() + cwd * scale, {**items, "det_loss": det, "cwd_loss": cwd.detach()}


def distill_schedule(trainer) -> None:
    """``on_train_epoch_start``: distillation is on for the first ``stop`` fraction of the epochs (``--stop-distill``)."""
    from ultralytics.utils.torch_utils import unwrap_model

    model = unwrap_model(trainer.model)
    if not isinstance(model, CwdDistiller):
        return
    last = math.ceil(model.distill_options.stop * trainer.epochs - 1e-9)  # epochs [0, last) distil
    active = trainer.epoch < last
    if model.active and not active:
        LOGGER.info(f"{colorstr('sodet:')} distillation off from epoch {trainer.epoch + 1} (--stop-distill {model.distill_options.stop:g})")
    model.active = active


def build_distiller(student: nn.Module, imgsz: int, projector_state: dict | None = None) -> CwdDistiller:
    """Wrap ``student`` (whose options carry ``distill``) with its teacher; ``projector_state`` from a resumed run."""
    opts = student.sodet.distill
    teacher = load_teacher(opts, student.names)
    model = CwdDistiller(student, teacher, imgsz)
    if projector_state is not None:
        model.projector.load_state_dict(projector_state)
    return model


def keep_student(path) -> None:
    """Rewrite a checkpoint of a distillation run with the student alone (no-op for other checkpoints)."""
    from pathlib import Path

    if not Path(path).is_file():
        return
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    changed = False
    for key in ("ema", "model"):
        if isinstance(ckpt.get(key), CwdDistiller):
            ckpt[key], changed = ckpt[key].student_model, True
    if changed:
        torch.save(ckpt, path)


def describe(model: CwdDistiller) -> str:
    o = model.distill_options
    widths = ", ".join("same width" if isinstance(c.student, nn.Identity) else f"{c.student[0].in_channels}->{c.student[0].out_channels}" for c in model.projector)
    return (
        f"CWD from {o.teacher} ({family_of(model.teacher).display}), {o.on} at strides {model.strides} ({widths}), "
        f"tau {o.tau:g}, weight {o.weight:g} per level, on for {o.stop:.0%} of the epochs"
    )

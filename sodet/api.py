"""sodet's Python API: what the CLI calls. ``train`` and ``val`` return the run folder.

Every command resolves its model once (``sodet.models.resolve.resolve_model``) and asks the model's family for
whatever differs between families; option values are checked once, here, before any work (``sodet.options``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from ultralytics.utils import LOGGER, YAML

from sodet.assets import DEFAULT_DATA_IMGSZ
from sodet.errors import SodetError
from sodet.runlock import run_lock
from sodet.options import (
    SMALL_AREA, DistillOptions, RunOptions, check_distill_options, check_engine_values, check_train_options, parse_crop,
)


def pick_device(device: str | None) -> str:
    """CUDA when present, else CPU with a one-line notice; ``device`` overrides."""
    if device not in (None, ""):
        return str(device)
    if torch.cuda.is_available():
        return "0"
    LOGGER.info("sodet: no CUDA device found, running on CPU")
    return "cpu"


def run_dir(command: str, name: str | None, project: str | None) -> tuple[str, str]:
    project = Path(project) if project else Path("runs") / command
    return str(project.resolve()), name or "exp"


def train(
    model: str = "yolox-nano",
    data: str | None = None,
    weights: str | None = None,
    classes: list[str] | None = None,
    resume: str | bool | None = None,
    small_area: float = SMALL_AREA,
    weighted_loss: float | None = None,
    weight_form: str = "study",
    copy_paste: bool = False,
    oversample: float = 1.0,
    paste_copies: int = 1,
    paste_jitter: bool = False,
    oversample_pool: str = "small",
    box_loss: str = "iou",
    nwd_ratio: float = 0.5,
    nwd_c: float | None = None,
    nwd_assign: bool = False,
    crop_train: str | list[float] | None = None,
    crop_p: float = 2 / 3,
    crop_min_visible: float = 0.1,
    protocol: str | None = None,
    size_edges: list[float] | None = None,
    size_names: list[str] | None = None,
    freeze_bn: bool | None = None,
    distill: DistillOptions | None = None,
    **engine: Any,
) -> Path:
    """Train (or fine-tune) a detector with sodet's methods; ``engine`` holds the engine's own options.
    ``distill`` (see ``distill()``) adds channel-wise distillation from a frozen teacher."""
    from sodet.data.spec import resolve_data
    from sodet.engine.trainer import SodetTrainer
    from sodet.models.resolve import resolve_model
    from sodet.offline import quiet_engine

    check_train_options(
        small_area=small_area, weighted_loss=weighted_loss, weight_form=weight_form, oversample=oversample,
        paste_copies=paste_copies, oversample_pool=oversample_pool, box_loss=box_loss, nwd_ratio=nwd_ratio,
        nwd_c=nwd_c, crop_train=crop_train, crop_p=crop_p, crop_min_visible=crop_min_visible, **engine,
    )
    from sodet.eval.protocols import get_protocols

    get_protocols(protocol, size_edges, size_names)  # refused now, not at the first validation
    quiet_engine()
    engine["device"] = pick_device(engine.get("device"))
    if resume:
        last = resume_checkpoint(resume, engine.pop("project", None), engine.pop("name", None))
        overrides = {"resume": str(last), "model": str(last), "device": engine["device"]}
        overrides.update({k: v for k, v in engine.items() if v is not None and k in {"batch", "workers", "imgsz"}})
        with run_lock(last.parent.parent, LOGGER.warning):
            trainer = SodetTrainer(overrides=overrides)
            trainer.train()
        return Path(trainer.save_dir)

    named = resolve_model(model, weights, fetch=False)  # options refused before any weights are fetched
    if named.kind == "registry":
        named.family.refuse_options(engine)
    resolved = resolve_model(model, weights)
    if resolved.kind == "export":
        raise SodetError(f"{model} is an exported model: train from its .pt checkpoint or a registry name")
    if resolved.kind == "checkpoint" and resolved.options is None:
        raise SodetError(f"{model} is not a sodet checkpoint (train it with sodet, or pass --model NAME --weights FILE)")
    from_checkpoint = resolved.kind == "checkpoint"
    saved = resolved.options
    entry, family = resolved.entry, resolved.family
    family.refuse_options(engine)
    data_yaml = resolve_data(data, classes or (saved.classes if from_checkpoint else None))
    pretrained = from_checkpoint or resolved.weights is not None
    options = RunOptions(
        model=entry.name,
        weights=str(resolved.weights) if resolved.weights else None,
        small_area=small_area,
        weighted_loss=weighted_loss,
        weight_form=weight_form,
        copy_paste=copy_paste,
        oversample=oversample,
        paste_copies=paste_copies,
        paste_jitter=paste_jitter,
        oversample_pool=oversample_pool,
        box_loss=box_loss,
        nwd_ratio=nwd_ratio,
        nwd_c=nwd_c,
        nwd_assign=nwd_assign,
        crop_train=parse_crop(crop_train) if crop_train is not None else None,
        crop_p=crop_p,
        crop_min_visible=crop_min_visible,
        protocol=protocol or (saved.protocol if from_checkpoint else "coco"),
        size_edges=size_edges if size_edges else (saved.size_edges if from_checkpoint else None),
        size_names=size_names if size_names else (saved.size_names if from_checkpoint else None),
        classes=YAML.load(data_yaml)["sodet_classes"],
        data=str(Path(data).resolve()) if data else None,
        freeze_bn=freeze_bn if freeze_bn is not None or not from_checkpoint else saved.freeze_bn,
        distill=distill,
        # evaluated as the weights were trained: pretrained weights in their family's own pipeline, a network
        # trained from scratch by sodet in the engine's (centred, rect batches)
        letterbox=saved.letterbox if from_checkpoint else family.pretrained_letterbox if pretrained else "center",
    )
    project, name = run_dir("distill" if distill else "train", engine.pop("name", None), engine.pop("project", None))
    defaults = family.engine_defaults(finetune=pretrained)
    overrides = {
        "model": resolved.source if from_checkpoint else family.engine_model_arg(entry),
        "data": str(data_yaml),
        "imgsz": engine.pop("imgsz", None) or (DEFAULT_DATA_IMGSZ if data is None else entry.imgsz),
        "project": project,
        "name": name,
        "pretrained": from_checkpoint,  # the engine drops a .pt model's weights when this is False
        **defaults,
        **{k: v for k, v in engine.items() if v is not None},
    }
    tuned = defaults.items() - family.engine_defaults().items()  # what the fine-tuning block changed
    if tuned:
        LOGGER.info(
            "sodet: fine-tuning pretrained weights with " + ", ".join(f"{k} {overrides[k]}" for k, _ in sorted(tuned))
            + " (cfg/defaults.yaml 'finetune'; -o KEY=VALUE overrides)"
        )
    # a run into a folder that may exist (--exist-ok) holds its lock: two such runs would write into each other
    lock = run_lock(Path(project) / name, LOGGER.warning) if overrides.get("exist_ok") else contextlib.nullcontext()
    with lock:
        trainer = SodetTrainer(overrides=overrides, options=options)
        save_run_options(Path(trainer.save_dir), options)  # beside args.yaml from the start (kept if interrupted)
        trainer.train()
        save_run_options(Path(trainer.save_dir), options)  # again: a multi-GPU launch clears the folder first
    return Path(trainer.save_dir)


def distill(
    teacher: str | None = None,
    model: str = "yolox-nano",
    teacher_weights: str | None = None,
    distill_on: str | None = None,
    tau: float | None = None,
    cwd_weight: float | None = None,
    stop_distill: float | None = None,
    cwd_max_ratio: float = 100.0,
    **train_options: Any,
) -> Path:
    """``train`` with channel-wise distillation from a frozen ``teacher``: a registry name (with ``teacher_weights``,
    or the weights table's), or a sodet / Ultralytics checkpoint. Unset options take the student family's
    defaults (``cfg/defaults.yaml`` 'distill')."""
    from sodet.models.resolve import resolve_model

    if train_options.get("resume"):
        return train(**train_options)  # the checkpoint carries the teacher, the connectors and the options
    if not teacher:
        raise SodetError("sodet distill needs --teacher (a registry name, a sodet run's best.pt or an Ultralytics .pt)")
    on = distill_on or "neck"
    opts = DistillOptions(teacher=str(teacher), on=on, tau=1.0 if tau is None else tau,
                          weight=1.0 if cwd_weight is None else cwd_weight,
                          stop=1.0 if stop_distill is None else stop_distill, max_ratio=cwd_max_ratio)
    check_distill_options(opts)  # the values given; the family defaults below are known to be valid
    student = resolve_model(model, train_options.get("weights"), fetch=False)
    family = student.family if student.kind == "registry" else resolve_model(model).family
    defaults = family.distill_defaults()
    level = defaults.get(on) or {}
    opts.tau = tau if tau is not None else level.get("tau", 1.0)
    opts.weight = cwd_weight if cwd_weight is not None else level.get("weight", 1.0)
    opts.stop = stop_distill if stop_distill is not None else defaults.get("stop", 1.0)
    resolved = resolve_model(teacher, teacher_weights)  # a missing file or a failed download: one line, now
    if resolved.kind == "export":
        raise SodetError(f"teacher {teacher}: an exported model cannot teach (its features are not reachable); pass its .pt")
    if resolved.kind == "registry" and resolved.weights is None:
        raise SodetError(f"teacher {teacher} has no weights: pass --teacher-weights FILE (a random teacher teaches nothing)")
    opts.teacher = resolved.source  # a checkpoint's absolute path (rebuilt from there on resume and in DDP workers)
    opts.teacher_weights = str(resolved.weights) if resolved.weights else None
    return train(model=model, distill=opts, **train_options)


def save_run_options(save_dir: Path, options: RunOptions) -> None:
    """``sodet.yaml`` beside the engine's ``args.yaml``: the sodet options the run used (written whole)."""
    if save_dir.is_dir():
        import yaml

        from sodet.files import write_text_atomic

        write_text_atomic(save_dir / "sodet.yaml", yaml.safe_dump(options.to_dict(), sort_keys=False))


def resume_checkpoint(resume: str | bool, project: str | None, name: str | None) -> Path:
    """``--resume``: a last.pt, a run folder, or the named run (default runs/train/exp); read now, so that an
    unreadable file is named as such (the engine would call it 'not found')."""
    from sodet.models.weights import read_checkpoint

    if isinstance(resume, str) and resume not in {"True", "true", "1"}:
        p = Path(resume)
    else:
        p = Path(project or "runs/train") / (name or "exp")
    last = p / "weights" / "last.pt" if p.is_dir() else p
    if not last.is_file():
        raise SodetError(f"nothing to resume: {last} not found (pass --resume path/to/last.pt)")
    read_checkpoint(last)
    return last.resolve()


def val(
    model: str = "yolox-nano",
    data: str | None = None,
    weights: str | None = None,
    classes: list[str] | None = None,
    split: str = "val",
    out: str | None = None,
    size_buckets: bool = True,
    slice: str | int | None = None,
    slice_overlap: float = 0.2,
    slice_merge: str = "nms",  # val keeps conf 0.001 detections: greedy NMM would merge them into unions
    slice_match: str = "IOS",
    slice_threshold: float = 0.5,
    protocol: str | None = None,
    size_edges: list[float] | None = None,
    size_names: list[str] | None = None,
    max_det: int | None = None,
    **engine: Any,
) -> tuple[Path, dict]:
    """Validate a checkpoint, an exported model or a registered model; returns (output folder, the COCO metrics).
    A model of more classes than the data is scored on the data's classes, picked by name. With ``slice``, every
    image is also run as SAHI tiles and merged (sodet.engine.slicing)."""
    from sodet.data.spec import resolve_data
    from sodet.engine.slicing import Slicer
    from sodet.engine.validator import SodetValidator
    from sodet.offline import quiet_engine

    slicer = Slicer.from_options(slice, slice_overlap, slice_merge, slice_match, slice_threshold)
    check_engine_values(engine)
    quiet_engine()
    device = pick_device(engine.pop("device", None))
    net, resolved = inference_model(model, weights)
    options = resolved.options
    names = resolved.names if resolved.kind != "registry" else None
    source = data or (options.data if options else None)
    try:
        data_yaml = resolve_data(source, classes or names, splits=(split,))
    except SodetError:
        if classes or names is None:
            raise
        data_yaml = resolve_data(source, None, splits=(split,))  # the data's own classes, picked from the model's
    data_names = YAML.load(data_yaml)["sodet_classes"]
    class_rows = None
    if resolved.kind == "registry":
        d = YAML.load(data_yaml)
        options = RunOptions(model=resolved.entry.name, weights=str(resolved.weights) if resolved.weights else None,
                             classes=data_names, data=data, letterbox=resolved.family.pretrained_letterbox)
        net = build_registry_model(options, d["names"])
    elif data_names != names:
        absent = [n for n in data_names if n not in names]
        if absent:
            what = "checkpoint" if resolved.kind == "checkpoint" else "model"
            raise SodetError(f"{what} classes {names} do not hold the data classes {absent} (it has: {', '.join(names[:10])}"
                             f"{' ...' if len(names) > 10 else ''})")
        class_rows = [names.index(n) for n in data_names]
    family = resolved.family if resolved.kind != "export" else family_named(options.model if options else None)
    options = options or RunOptions()
    if protocol or size_edges:  # this scoring's protocols (else the run's own)
        import dataclasses

        from sodet.eval.protocols import get_protocols

        get_protocols(protocol, size_edges, size_names)
        options = dataclasses.replace(options, protocol=protocol or "coco", size_edges=size_edges, size_names=size_names)
    if max_det is not None:
        engine["max_det"] = max_det
    if out:
        save_dir = Path(out)
    else:
        from ultralytics.utils.files import increment_path

        project, name = run_dir("val", engine.pop("name", None), engine.pop("project", None))
        save_dir = increment_path(Path(project) / name)
    save_dir.mkdir(parents=True, exist_ok=True)
    args = {
        "model": resolved.source,
        "data": str(data_yaml),
        "split": split,
        "imgsz": engine.pop("imgsz", None) or resolved.default_imgsz,
        "device": device,
        "conf": 0.001,
        "iou": (family.engine_defaults() if family else {}).get("iou", 0.7),
        "plots": False,
        "save_json": True,
        "mode": "val",
        **{k: v for k, v in engine.items() if v is not None},
    }
    validator = SodetValidator(save_dir=save_dir, args=args, options=options, size_buckets=size_buckets,
                               slicer=slicer, class_rows=class_rows)
    if resolved.kind == "export":  # rect batches only when it takes any input size
        validator.fixed_size = not (resolved.metadata.get("args") or {}).get("dynamic", False)
    validator(model=net if isinstance(net, torch.nn.Module) else None)
    return save_dir, validator.coco_metrics or {}


def family_named(arch: str | None):
    """The family of a registry architecture name (an exported model's metadata names it), or None."""
    from sodet.models.registry import get_entry, get_family

    try:
        return get_family(get_entry(arch).family) if arch else None
    except SodetError:
        return None


def build_registry_model(options: RunOptions, names: dict):
    from sodet.engine.build import build_model

    return build_model(options, len(names), dict(names)).float().eval()


# inference: predict, export ------------------------------------------------------------------------------------
def inference_model(model: str, weights: str | None = None):
    """What the engine's AutoBackend runs for ``--model``: (an nn.Module, or the exported file's path for the
    engine to load, and what the model resolved to). A registry model is built with its weights' classes."""
    from sodet.models.resolve import resolve_model

    resolved = resolve_model(model, weights)
    if resolved.kind == "checkpoint":
        if resolved.options is None and resolved.family is None:
            raise SodetError(f"{model} is not a sodet or Ultralytics checkpoint")
        return resolved.module.float().eval(), resolved
    if resolved.kind == "export":
        return resolved.source, resolved
    names = resolved.names
    options = RunOptions(model=resolved.entry.name, weights=str(resolved.weights) if resolved.weights else None,
                         classes=names, letterbox=resolved.family.pretrained_letterbox)
    return build_registry_model(options, dict(enumerate(names))), resolved


def class_indices(classes: list[str] | None, names: dict) -> list[int] | None:
    """``--classes`` of predict: names (or indices) of the model's classes to keep."""
    if not classes:
        return None
    by_name = {v: k for k, v in names.items()}
    out = []
    for c in classes:
        if c in by_name:
            out.append(int(by_name[c]))
        elif str(c).isdigit() and int(c) in names:
            out.append(int(c))
        else:
            raise SodetError(f"class '{c}' is not one of the model's classes ({', '.join(list(names.values())[:10])} ...)")
    return out


def predict(
    model: str = "yolox-nano",
    source: str | None = None,
    weights: str | None = None,
    classes: list[str] | None = None,
    slice: str | int | None = None,
    slice_overlap: float = 0.2,
    slice_merge: str = "greedynmm",
    slice_match: str = "IOS",
    slice_threshold: float = 0.5,
    stream: bool = False,
    progress: bool = True,
    save_json: bool = True,
    **engine: Any,
):
    """Run a detector on images, folders, globs, videos or a webcam; returns (output folder, results: the
    engine's Results objects, or a generator of them with ``stream``). ``predictions.json`` (COCO results of the
    whole run) is written unless ``save_json`` is False."""
    from sodet.engine.predictor import SodetPredictor
    from sodet.engine.slicing import Slicer
    from sodet.offline import quiet_engine

    if source is None or str(source).strip() == "":
        raise SodetError("no source given: pass --source IMAGE|FOLDER|GLOB|VIDEO|WEBCAM-INDEX")
    slicer = Slicer.from_options(slice, slice_overlap, slice_merge, slice_match, slice_threshold)
    check_engine_values(engine)
    quiet_engine()
    net, resolved = inference_model(model, weights)
    names = dict(enumerate(resolved.names))
    family = resolved.family if resolved.kind != "export" else family_named(resolved.options.model if resolved.options else None)
    project, name = run_dir("predict", engine.pop("name", None), engine.pop("project", None))
    overrides = {
        "mode": "predict",
        "model": resolved.source if not isinstance(net, torch.nn.Module) else None,
        "imgsz": engine.pop("imgsz", None) or resolved.default_imgsz or 640,
        "device": pick_device(engine.pop("device", None)),
        "conf": 0.25,
        "iou": (family.engine_defaults() if family else {}).get("iou", 0.7),
        "classes": class_indices(classes, names),
        "project": project,
        "name": name,
        "save": True,
        "verbose": False,
        "batch": 1,
        **{k: v for k, v in engine.items() if v is not None},
    }
    predictor = SodetPredictor(overrides=overrides, slicer=slicer, progress=progress, save_json=save_json)
    results = predictor(source=source, model=net, stream=stream)
    return Path(predictor.save_dir), results


def export(
    model: str = "yolox-nano",
    format: str = "onnx",
    weights: str | None = None,
    imgsz: int | None = None,
    dynamic: bool = True,
    out: str | None = None,
    **engine: Any,
) -> Path:
    """Export through the engine's Exporter; sodet's RunOptions (letterbox, classes) travel in the metadata
    (``sodet`` key) beside the engine's names/imgsz/stride. Returns the exported file."""
    import copy

    from ultralytics.engine.exporter import Exporter, export_formats

    from sodet.offline import quiet_engine

    formats = {a: f for a, f in zip(export_formats()["Argument"], export_formats()["Format"]) if a != "-"}
    if format not in formats:
        raise SodetError(f"--format must be one of {', '.join(formats)}, not '{format}'")
    check_engine_values({"imgsz": imgsz})
    quiet_engine()
    net, resolved = inference_model(model, weights)
    if not isinstance(net, torch.nn.Module):
        raise SodetError(f"{model} is already an exported model: export its .pt checkpoint")
    family = resolved.family
    options = resolved.options or getattr(net, "sodet", None) or RunOptions()
    net = copy.deepcopy(net)
    if resolved.kind == "checkpoint":
        target = Path(out) if out else Path(resolved.source)
    else:
        target = Path(out) if out else Path(run_dir("export", None, None)[0]) / f"{resolved.entry.name}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    net.pt_path = str(target.with_suffix(".pt"))  # the engine names its output after this file
    if isinstance(getattr(net, "args", None), dict):  # the exporter's description reads args["data"]
        net.args = {**net.args, "data": net.args.get("data") or options.data or ""}
    args = {
        "format": format, "imgsz": imgsz or resolved.default_imgsz or 640, "device": pick_device(engine.pop("device", None)),
        "dynamic": dynamic if format in {"onnx", "openvino", "engine"} else engine.pop("dynamic", False), **engine,
    }
    exporter = Exporter(overrides=args)
    exporter.add_callback("on_export_start", lambda e: e.metadata.update(sodet=options.to_dict(), family=family.name))
    try:
        f = exporter(model=net)
    except (ImportError, ModuleNotFoundError) as e:
        raise SodetError(f"format {format} needs a package that is not installed ({e}); sodet does not download it") from None
    except SodetError:
        raise
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SodetError(f"format {format} does not work for {family.display} models: {type(e).__name__}: {msg}") from None
    if not f:
        raise SodetError(f"format {format} does not work for {family.display} models (the engine's exporter produced nothing)")
    return Path(f)

"""sodet's Python API: what the CLI calls. ``train`` and ``val`` return the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ultralytics.utils import LOGGER, YAML

from sodet.assets import DEFAULT_DATA_IMGSZ
from sodet.errors import SodetError
from sodet.models.registry import family_defaults, model_family
from sodet.options import SMALL_AREA, DistillOptions, RunOptions


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
    freeze_bn: bool | None = None,
    distill: DistillOptions | None = None,
    **engine: Any,
) -> Path:
    """Train (or fine-tune) a detector with sodet's methods; ``engine`` holds the engine's own options.
    ``distill`` (see ``distill()``) adds channel-wise distillation from a frozen teacher."""
    from sodet.data.spec import resolve_data
    from sodet.engine.trainer import SodetTrainer
    from sodet.models.registry import get_entry
    from sodet.offline import quiet_engine

    check_train_options(
        small_area=small_area, weighted_loss=weighted_loss, weight_form=weight_form, oversample=oversample,
        paste_copies=paste_copies, oversample_pool=oversample_pool, **engine,
    )
    quiet_engine()
    engine["device"] = pick_device(engine.get("device"))
    if resume:
        last = resume_checkpoint(resume, engine.pop("project", None), engine.pop("name", None))
        overrides = {"resume": str(last), "model": str(last), "device": engine["device"]}
        overrides.update({k: v for k, v in engine.items() if v is not None and k in {"batch", "workers", "imgsz"}})
        trainer = SodetTrainer(overrides=overrides)
        trainer.train()
        return Path(trainer.save_dir)

    is_ckpt = str(model).endswith(".pt")
    if is_ckpt:
        saved = sodet_checkpoint(model)[2]
        arch, classes = saved.model, classes or saved.classes
    else:
        arch = get_entry(model).name
    entry = get_entry(arch)
    if weights is None and not is_ckpt and entry.weights:
        from sodet.assets import shipped_weights

        weights = str(shipped_weights(entry.weights))
    elif weights in {"none", "None", ""}:
        weights = None
    if weights:
        from sodet.models.weights import require_weights_file

        require_weights_file(weights)
    check_family_options(entry.family, engine)
    data_yaml = resolve_data(data, classes)
    options = RunOptions(
        model=arch,
        weights=str(Path(weights).resolve()) if weights else None,
        small_area=small_area,
        weighted_loss=weighted_loss,
        weight_form=weight_form,
        copy_paste=copy_paste,
        oversample=oversample,
        paste_copies=paste_copies,
        paste_jitter=paste_jitter,
        oversample_pool=oversample_pool,
        classes=YAML.load(data_yaml)["sodet_classes"],
        data=str(Path(data).resolve()) if data else None,
        freeze_bn=freeze_bn if freeze_bn is not None or not is_ckpt else saved.freeze_bn,
        distill=distill,
        # evaluated as the weights were trained: pretrained YOLOX in its own pipeline, a network trained from
        # scratch by sodet in the engine's (centred, rect batches)
        letterbox=saved.letterbox if is_ckpt else family_letterbox(entry.family) if weights else "center",
    )
    project, name = run_dir("distill" if distill else "train", engine.pop("name", None), engine.pop("project", None))
    defaults = family_defaults(entry.family, finetune=bool(weights) or is_ckpt)
    overrides = {
        # a bare Ultralytics name (yolo11n) would make the engine fetch yolo11n.pt: give it the model file's name
        "model": str(model) if is_ckpt else (f"{arch}.yaml" if entry.family == "yolo" else arch),
        "data": str(data_yaml),
        "imgsz": engine.pop("imgsz", None) or (DEFAULT_DATA_IMGSZ if data is None else entry.imgsz),
        "project": project,
        "name": name,
        "pretrained": is_ckpt,  # the engine drops a .pt model's weights when this is False
        **defaults,
        **{k: v for k, v in engine.items() if v is not None},
    }
    tuned = defaults.items() - family_defaults(entry.family).items()  # what the fine-tuning block changed
    if tuned:
        LOGGER.info(
            "sodet: fine-tuning pretrained weights with " + ", ".join(f"{k} {overrides[k]}" for k, _ in sorted(tuned))
            + " (cfg/defaults.yaml 'finetune'; -o KEY=VALUE overrides)"
        )
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
    """``train`` with channel-wise distillation from a frozen ``teacher``: a registry name (with ``teacher_weights``
    or its shipped weights), or a sodet / Ultralytics checkpoint. Unset options take the student family's
    defaults (``cfg/defaults.yaml`` 'distill')."""
    from sodet.models.registry import get_entry, load_yaml

    if train_options.get("resume"):
        return train(**train_options)  # the checkpoint carries the teacher, the connectors and the options
    if not teacher:
        raise SodetError("sodet distill needs --teacher (a registry name, a sodet run's best.pt or an Ultralytics .pt)")
    student = str(model)
    family = model_family(sodet_checkpoint(student)[1]) if student.endswith(".pt") else get_entry(student).family
    on = distill_on or "neck"
    check_choice("--distill-on", on, {"neck", "head"})
    defaults = (load_yaml("defaults.yaml").get("distill") or {}).get(family) or {}
    level = defaults.get(on) or {}
    opts = DistillOptions(
        teacher=resolve_teacher(teacher),
        teacher_weights=str(Path(teacher_weights).resolve()) if teacher_weights else None,
        on=on,
        tau=tau if tau is not None else level.get("tau", 1.0),
        weight=cwd_weight if cwd_weight is not None else level.get("weight", 1.0),
        stop=stop_distill if stop_distill is not None else defaults.get("stop", 1.0),
        max_ratio=cwd_max_ratio,
    )
    check_distill_options(opts)
    return train(model=model, distill=opts, **train_options)


def resolve_teacher(teacher: str) -> str:
    """A checkpoint path made absolute (it is rebuilt from there on resume and in multi-GPU workers), or a
    registry name, checked now: a missing file is one line before any work."""
    from sodet.models.registry import get_entry
    from sodet.models.weights import require_weights_file

    if str(teacher).endswith(".pt"):
        return str(require_weights_file(teacher).resolve())
    return get_entry(teacher).name


def check_distill_options(opts: DistillOptions) -> None:
    for name, v in {"--tau": opts.tau, "--cwd-weight": opts.weight}.items():
        if not (isinstance(v, (int, float)) and v > 0 and v == v and v != float("inf")):
            raise SodetError(f"{name} must be a number above 0, got {v!r}")
    if not 0 < opts.stop <= 1:
        raise SodetError(f"--stop-distill must be in (0, 1] (the fraction of the epochs with distillation on), got {opts.stop!r}")
    if not opts.max_ratio >= 0:
        raise SodetError(f"--cwd-max-ratio must be 0 (off) or above, got {opts.max_ratio!r}")
    if opts.teacher_weights:
        from sodet.models.weights import require_weights_file

        require_weights_file(opts.teacher_weights)


# engine options that sodet's runs do not honour, and what to use instead (refused rather than silently dropped)
NOT_HONOURED = {
    "model": "--model", "data": "--data", "classes": "--classes (class names)", "pretrained": "--weights",
    "copy_paste": "--copy-paste (sodet's small-object copy-paste)", "single_cls": "a data set with one class",
}
NOT_HONOURED_YOLOX = {  # engine options that act on the engine's own models only
    "box": "its loss weights are YOLOX's own (5 x IoU + obj + cls)", "cls": "its loss weights are YOLOX's own",
    "dfl": "YOLOX has no DFL term", "freeze": "the engine freezes 'model.N' layers, YOLOX has backbone/head",
}


def check_train_options(
    small_area: float, weighted_loss: float | None, weight_form: str, oversample: float, paste_copies: int,
    oversample_pool: str = "small", **engine: Any,
) -> None:
    """One line for any invalid value, before any work is done."""
    positive = {"--small-area": small_area, "--oversample": oversample}
    if not isinstance(paste_copies, (int, float)) or isinstance(paste_copies, bool) or not paste_copies >= 0:
        raise SodetError(f"--paste-copies must be 0 (oversampling without pasting) or more, got {paste_copies!r}")
    check_choice("--oversample-pool", oversample_pool, {"small", "all"})
    if weighted_loss is not None:
        positive["--weighted-loss"] = weighted_loss
    for key in ("epochs", "imgsz", "patience"):
        if engine.get(key) is not None:
            positive[f"--{key}"] = engine[key]
    for name, v in positive.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise SodetError(f"{name} must be a number above 0, got {v!r}")
    if not float(paste_copies).is_integer():
        raise SodetError(f"--paste-copies must be a whole number, got {paste_copies!r}")
    batch = engine.get("batch")
    if batch is not None and not (isinstance(batch, (int, float)) and (batch >= 1 or batch == -1 or 0 < batch < 1)):
        raise SodetError(f"--batch must be at least 1 (or -1 / a GPU-memory fraction for the engine's auto batch), got {batch!r}")
    workers = engine.get("workers")
    if workers is not None and not (isinstance(workers, int) and workers >= 0):
        raise SodetError(f"--workers must be 0 or more, got {workers!r}")
    check_choice("--weight-form", weight_form, {"study", "scale"})
    check_engine_keys(engine)


SODET_OWN = ("weights", "resume", "small_area", "weighted_loss", "copy_paste", "oversample", "freeze_bn")


def refuse_sodet_own(engine: dict) -> None:
    """sodet's own options given as engine options (``-o weights=...``) are refused, naming the flag to use."""
    for key in SODET_OWN:
        if key in engine:
            raise SodetError(f"-o {key}=... is sodet's own option: use --{key.replace('_', '-')}")


def check_engine_keys(engine: dict) -> None:
    """Engine options that sodet's runs would not honour, and sodet's own options given as engine options, are
    refused, naming what to use instead."""
    refuse_sodet_own(engine)
    for key, use in NOT_HONOURED.items():
        if key in engine and engine[key] not in (None, False, 0.0):
            raise SodetError(f"-o {key}=... is not used by sodet runs: use {use}")


NOT_HONOURED_GFL = {  # the same for GFL
    "box": "its loss weights are GFL's own (QFL + 2 x GIoU + 0.25 x DFL)", "cls": "its loss weights are GFL's own",
    "dfl": "its DFL weight is GFL's own (0.25)", "freeze": "GFL freezes its stem and layer1, as MMDetection does",
}


def check_family_options(family: str, engine: dict) -> None:
    """Engine options that only act on the engine's own models are refused for YOLOX and GFL."""
    refused = {"yolox": ("YOLOX", NOT_HONOURED_YOLOX), "gfl": ("GFL", NOT_HONOURED_GFL)}.get(family)
    given = sorted(set(refused[1]) & {k for k, v in engine.items() if v is not None}) if refused else []
    if given:
        raise SodetError(f"-o {given[0]}=... does not apply to {refused[0]}: {refused[1][given[0]]}")


def check_choice(what: str, value: str, allowed: set[str]) -> None:
    if value not in allowed:
        raise SodetError(f"{what} must be one of {sorted(allowed)}, not '{value}'")


def save_run_options(save_dir: Path, options: RunOptions) -> None:
    """``sodet.yaml`` beside the engine's ``args.yaml``: the sodet options the run used."""
    if save_dir.is_dir():
        YAML.save(save_dir / "sodet.yaml", options.to_dict())


def sodet_checkpoint(path: str | Path):
    """(checkpoint dict, its model, the sodet options the model carries), read once."""
    from sodet.models.weights import checkpoint_model, read_checkpoint

    ckpt = read_checkpoint(path)
    model = checkpoint_model(ckpt)
    opts = getattr(model, "sodet", None)
    if opts is None:
        raise SodetError(f"{path} is not a sodet checkpoint (train it with sodet, or pass --model NAME --weights FILE)")
    return ckpt, model, opts


def resume_checkpoint(resume: str | bool, project: str | None, name: str | None) -> Path:
    """``--resume``: a last.pt, a run folder, or the named run (default runs/train/exp)."""
    if isinstance(resume, str) and resume not in {"True", "true", "1"}:
        p = Path(resume)
    else:
        p = Path(project or "runs/train") / (name or "exp")
    last = p / "weights" / "last.pt" if p.is_dir() else p
    if not last.is_file():
        raise SodetError(f"nothing to resume: {last} not found (pass --resume path/to/last.pt)")
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
    **engine: Any,
) -> tuple[Path, dict]:
    """Validate a checkpoint, an exported model or a registered model; returns (output folder, the COCO metrics).
    With ``slice``, every image is also run as SAHI tiles and merged (sodet.engine.slicing)."""
    from sodet.data.spec import resolve_data
    from sodet.engine.build import build_model
    from sodet.engine.slicing import Slicer
    from sodet.engine.validator import SodetValidator
    from sodet.models.registry import get_entry
    from sodet.offline import quiet_engine

    slicer = Slicer.from_options(slice, slice_overlap, slice_merge, slice_match, slice_threshold)
    quiet_engine()
    device = pick_device(engine.pop("device", None))
    imgsz = engine.pop("imgsz", None)
    meta = None  # an exported model's metadata
    if str(model).endswith(".pt") or is_exported(model):
        net, options, default_imgsz = inference_model(model)
        if not isinstance(net, torch.nn.Module):  # an exported model: the engine's AutoBackend loads the file
            meta, net = exported_metadata(model), None
        model_names = net.names if net is not None else meta.get("names") or {}
        names = [model_names[i] for i in range(len(model_names))]
        data_yaml = resolve_data(data or options.data, classes or names, splits=(split,))
        data_names = YAML.load(data_yaml)["sodet_classes"]
        if data_names != names:
            what = "checkpoint" if net is not None else "model"
            raise SodetError(f"{what} classes {names} do not match the data classes {data_names}")
        imgsz = imgsz or default_imgsz
        source = str(Path(model).resolve())
    else:
        entry = get_entry(model)
        if weights is None and entry.weights:
            from sodet.assets import shipped_weights

            weights = str(shipped_weights(entry.weights))
        data_yaml = resolve_data(data, classes, splits=(split,))
        d = YAML.load(data_yaml)
        options = RunOptions(
            model=entry.name, weights=weights, classes=d["sodet_classes"], data=data,
            letterbox=family_letterbox(entry.family),
        )
        net = build_model(options, len(d["names"]), d["names"])
        imgsz = imgsz or entry.imgsz
        source = entry.name
    family = (model_family(net) or "yolo") if net is not None else model_family_name(options.model)
    if out:
        save_dir = Path(out)
    else:
        from ultralytics.utils.files import increment_path

        project, name = run_dir("val", engine.pop("name", None), engine.pop("project", None))
        save_dir = increment_path(Path(project) / name)
    save_dir.mkdir(parents=True, exist_ok=True)
    args = {
        "model": source,
        "data": str(data_yaml),
        "split": split,
        "imgsz": imgsz,
        "device": device,
        "conf": 0.001,
        "iou": family_defaults(family).get("iou", 0.7),
        "plots": False,
        "save_json": True,
        "mode": "val",
        **{k: v for k, v in engine.items() if v is not None},
    }
    validator = SodetValidator(save_dir=save_dir, args=args, options=options, size_buckets=size_buckets, slicer=slicer)
    if meta is not None:  # an exported model: rect batches only when it takes any input size
        validator.fixed_size = not (meta.get("args") or {}).get("dynamic", False)
    validator(model=net)
    return save_dir, validator.coco_metrics or {}


def family_letterbox(family: str) -> str:
    """Evaluation padding of pretrained weights: YOLOX's own pipeline (square, bottom/right: how its weights were
    trained and how its papers evaluate) for YOLOX, the engine's (centred, rect batches) for the others."""
    return "top-left" if family == "yolox" else "center"


# inference: predict, export ------------------------------------------------------------------------------------
EXPORTED_SUFFIXES = {".onnx", ".torchscript", ".engine", ".tflite", ".mlpackage"}


def is_exported(model: str | Path) -> bool:
    p = Path(str(model))
    return p.suffix.lower() in EXPORTED_SUFFIXES or p.name.endswith(("_openvino_model", "_saved_model", "_ncnn_model"))


def exported_metadata(path: str | Path) -> dict:
    """The metadata an exported model carries (class names, imgsz, stride, sodet's letterbox), read without
    loading it."""
    import ast

    from ultralytics.nn.backends.base import BaseBackend

    p = Path(path)
    if not p.exists():
        raise SodetError(f"model file not found: {p}")
    meta = dict(BaseBackend.read_metadata(p) or {})
    for k in ("names", "imgsz", "sodet", "args"):
        if isinstance(meta.get(k), str):
            try:
                meta[k] = ast.literal_eval(meta[k])
            except (ValueError, SyntaxError):
                pass
    return meta


def inference_model(model: str, weights: str | None = None):
    """What the engine's AutoBackend runs for ``--model``: (an nn.Module or an exported file, its RunOptions,
    default imgsz). A sodet checkpoint, an exported model (.onnx, .torchscript ...) or a registry name (with its
    shipped weights, or ``weights``)."""
    from sodet.engine.build import build_model
    from sodet.models.registry import get_entry

    m = str(model)
    if m.endswith(".pt"):
        ckpt, net, options = sodet_checkpoint(m)
        return net.float().eval(), options, (ckpt.get("train_args") or {}).get("imgsz")
    if is_exported(m):
        meta = exported_metadata(m)
        options = RunOptions.from_dict(meta.get("sodet") or {}) if isinstance(meta.get("sodet"), dict) else RunOptions()
        imgsz = meta.get("imgsz")
        return m, options, max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz
    entry = get_entry(m)
    if weights is None and entry.weights:
        from sodet.assets import shipped_weights

        weights = str(shipped_weights(entry.weights))
    names = weights_names(weights)
    options = RunOptions(model=entry.name, weights=weights, classes=names, letterbox=family_letterbox(entry.family))
    net = build_model(options, len(names), dict(enumerate(names)))
    return net.float().eval(), options, entry.imgsz


def weights_names(weights: str | None) -> list[str]:
    """Class names of a weights file: an engine checkpoint's own, else COCO's 80 (official YOLOX weights, and
    the registry's models without weights)."""
    from sodet.models.weights import checkpoint_model, coco80_names, read_checkpoint

    if weights:
        src = checkpoint_model(read_checkpoint(weights))
        names = getattr(src, "names", None)
        if isinstance(src, torch.nn.Module) and names:
            return [names[i] for i in range(len(names))]
    return list(coco80_names())


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
    quiet_engine()
    net, options, imgsz = inference_model(model, weights)
    names = net.names if isinstance(net, torch.nn.Module) else exported_metadata(net).get("names") or {}
    names = dict(enumerate(names)) if isinstance(names, list) else names
    project, name = run_dir("predict", engine.pop("name", None), engine.pop("project", None))
    overrides = {
        "mode": "predict",
        "model": str(model) if not isinstance(net, torch.nn.Module) else None,
        "imgsz": engine.pop("imgsz", None) or imgsz or 640,
        "device": pick_device(engine.pop("device", None)),
        "conf": 0.25,
        "iou": family_defaults(options.model and model_family_name(options.model)).get("iou", 0.7),
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


def model_family_name(arch: str) -> str:
    from sodet.models.registry import get_entry

    try:
        return get_entry(arch).family
    except SodetError:
        return "yolo"


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
    quiet_engine()
    net, options, default_imgsz = inference_model(model, weights)
    if not isinstance(net, torch.nn.Module):
        raise SodetError(f"{model} is already an exported model: export its .pt checkpoint")
    family = model_family(net) or "yolo"
    net = copy.deepcopy(net)
    if str(model).endswith(".pt"):
        target = Path(out) if out else Path(model).resolve()
    else:
        target = Path(out) if out else Path(run_dir("export", None, None)[0]) / f"{options.model}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    net.pt_path = str(target.with_suffix(".pt"))  # the engine names its output after this file
    if isinstance(getattr(net, "args", None), dict):  # the exporter's description reads args["data"]
        net.args = {**net.args, "data": net.args.get("data") or options.data or ""}
    args = {
        "format": format, "imgsz": imgsz or default_imgsz or 640, "device": pick_device(engine.pop("device", None)),
        "dynamic": dynamic if format in {"onnx", "openvino", "engine"} else engine.pop("dynamic", False), **engine,
    }
    exporter = Exporter(overrides=args)
    exporter.add_callback("on_export_start", lambda e: e.metadata.update(sodet=options.to_dict(), family=family))
    try:
        f = exporter(model=net)
    except (ImportError, ModuleNotFoundError) as e:
        raise SodetError(f"format {format} needs a package that is not installed ({e}); sodet does not download it") from None
    except SodetError:
        raise
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SodetError(f"format {format} does not work for {family} models: {type(e).__name__}: {msg}") from None
    if not f:
        raise SodetError(f"format {format} does not work for {family} models (the engine's exporter produced nothing)")
    return Path(f)

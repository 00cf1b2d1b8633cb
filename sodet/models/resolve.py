"""``resolve_model``: what ``--model NAME_OR_PATH`` (with ``--weights``) stands for, decided in one place for
train, val, predict, export, the distillation teacher and the study.

- a registry name -> its family, and its weights: ``--weights FILE`` (a path, or a file of the weights table by
  name, fetched and verified on first use), ``none`` (random init), or the model's default from the table;
- ``*.pt`` -> an engine checkpoint (a sodet run, or an Ultralytics model file);
- ``*.onnx`` / ``*.torchscript`` / other export formats -> an exported model, run by the engine's AutoBackend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sodet.errors import SodetError
from sodet.models.registry import ModelEntry, family_of, get_entry, get_family
from sodet.models.weights import checkpoint_model, read_checkpoint, require_weights_file

EXPORTED_SUFFIXES = {".onnx", ".torchscript", ".engine", ".tflite", ".mlpackage"}
NO_WEIGHTS = {"none", "None", ""}


def is_checkpoint(model: str | Path) -> bool:
    return str(model).endswith(".pt")


def is_exported(model: str | Path) -> bool:
    p = Path(str(model))
    return p.suffix.lower() in EXPORTED_SUFFIXES or p.name.endswith(("_openvino_model", "_saved_model", "_ncnn_model"))


@dataclass
class ResolvedModel:
    """What a model argument resolved to. ``kind``: "registry", "checkpoint" or "export"."""

    kind: str
    source: str  # what the user named (a path made absolute)
    entry: ModelEntry | None = None  # registry: the architecture; checkpoint: the architecture it was trained as
    weights: Path | None = None  # registry: the file to load (None: random init)
    checkpoint: dict | None = None  # checkpoint: the file's contents
    module: Any = None  # checkpoint: its model object
    options: Any = None  # checkpoint / export: the sodet RunOptions it carries (None for a foreign .pt)
    metadata: dict = field(default_factory=dict)  # export: what the file's metadata says

    @property
    def family(self):
        if self.module is not None:
            return family_of(self.module)
        return get_family(self.entry.family) if self.entry else None

    @property
    def names(self) -> list[str]:
        """The class names the model predicts (COCO's 80 for a registry model's table weights)."""
        from sodet.models.weights import coco80_names, model_names

        if self.module is not None:
            return model_names(self.module)
        if self.kind == "export":
            names = self.metadata.get("names") or {}
            if isinstance(names, dict):  # keys are ints, or their strings where the format stores JSON
                return [v for _, v in sorted(names.items(), key=lambda kv: int(kv[0]))]
            return list(names)
        return weights_names(self.weights) if self.weights else list(coco80_names())

    @property
    def default_imgsz(self) -> int | None:
        if self.kind == "checkpoint":
            return (self.checkpoint.get("train_args") or {}).get("imgsz") or (self.entry.imgsz if self.entry else None)
        if self.kind == "export":
            imgsz = self.metadata.get("imgsz")
            return max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz
        return self.entry.imgsz


def resolve_model(model: str | Path, weights: str | Path | None = None, fetch: bool = True) -> ResolvedModel:
    """One model argument resolved; ``fetch=False`` checks names and files without downloading or reading."""
    m = str(model)
    if is_checkpoint(m):
        path = require_weights_file(m).resolve()
        if not fetch:
            return ResolvedModel("checkpoint", str(path))
        ckpt = read_checkpoint(path)
        module = checkpoint_model(ckpt)
        if not hasattr(module, "state_dict"):
            raise SodetError(f"{path} holds no model (a sodet run's weights/best.pt or an Ultralytics .pt)")
        options = getattr(module, "sodet", None)
        entry = get_entry(options.model) if options is not None else None
        return ResolvedModel("checkpoint", str(path), entry=entry, checkpoint=ckpt, module=module, options=options)
    if is_exported(m):
        path = Path(m)
        if not path.exists():
            raise SodetError(f"model file not found: {path}")
        meta = exported_metadata(path) if fetch else {}
        from sodet.options import RunOptions

        options = RunOptions.from_dict(meta["sodet"]) if isinstance(meta.get("sodet"), dict) else None
        return ResolvedModel("export", str(path.resolve()), options=options, metadata=meta)
    entry = get_entry(m)
    return ResolvedModel("registry", entry.name, entry=entry, weights=registry_weights(entry, weights, fetch))


def registry_weights(entry: ModelEntry, weights: str | Path | None, fetch: bool = True) -> Path | None:
    """The weights file of a registry model: a path, a table file by name, ``none``, or the entry's default."""
    from sodet import hub

    if weights is not None and str(weights) in NO_WEIGHTS:
        return None
    if weights is not None and Path(str(weights)).exists():
        return require_weights_file(weights).resolve()
    name = str(weights) if weights is not None else entry.weights
    row = hub.row(name) if name else None
    if row is None:
        if weights is None:
            return None  # no default weights: random init
        require_weights_file(weights)  # a one-line error saying what to put where
    target = get_entry(row.model)
    # a model's own weights, or those its entry names (a P2 model starts from its base model's)
    if (target.family, target.arch) != (entry.family, entry.arch) and row.file != entry.weights:
        raise SodetError(f"weights {row.file} are for {row.model}, not {entry.name}")
    if not fetch:
        return hub.cached_path(row)
    family = get_family(entry.family)
    return hub.fetch(row, verify=lambda path: family.verify_weights(target, path, row.part))


def weights_names(weights: str | Path | None) -> list[str]:
    """Class names of a weights file: an engine checkpoint's own, else COCO's 80 (the official releases)."""
    from sodet.models.weights import coco80_names, model_names

    if weights:
        src = checkpoint_model(read_checkpoint(weights))
        if hasattr(src, "state_dict") and getattr(src, "names", None):
            return model_names(src)
    return list(coco80_names())


def exported_metadata(path: str | Path) -> dict:
    """The metadata an exported model carries (class names, imgsz, stride, sodet's options), read without
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

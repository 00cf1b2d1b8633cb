"""``Family``: everything sodet knows about one detector family, in one object per family module.

A family module (``yolox.py``, ``yolo.py``, ``gfl.py``) defines its model classes and registers one ``Family``
subclass instance; nothing outside the family modules branches on a family name. The base class holds the
defaults a family without special needs keeps (the engine's recipe, no refused options, the centred letterbox).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sodet.assets import load_cfg
from sodet.errors import SodetError


class Family:
    name: str = ""  # the key of cfg/models.yaml's ``family`` and cfg/defaults.yaml's blocks
    display: str = ""  # how tables and messages name it
    # engine options that do not act on this family's models: option -> why (refused in one line)
    refused_options: dict[str, str] = {}
    # evaluation padding of pretrained weights: "center" (the engine's) or "top-left" (YOLOX's own pipeline)
    pretrained_letterbox: str = "center"

    # building and weights ----------------------------------------------------------------------------------
    def build(self, entry: "ModelEntry", nc: int, names: dict | None = None) -> "nn.Module":
        """A randomly initialised model of ``nc`` classes that speaks the engine's model contract."""
        raise NotImplementedError

    def owns(self, model: Any) -> bool:
        """Whether a built model is one of this family's (sodet's own models say so in ``yaml['family']``)."""
        y = getattr(model, "yaml", None)
        return isinstance(y, dict) and y.get("family") == self.name

    def load_state(self, model: "nn.Module", ckpt: Any, origin: str | Path) -> None:
        """Load the contents of a weights file that holds no engine model (an official release's state dict)."""
        raise SodetError(f"{origin}: unsupported checkpoint layout for a {self.display} model")

    def load_module(self, model: "nn.Module", source: "nn.Module", origin: str | Path) -> None:
        """Load the weights of a model object from an engine checkpoint (a sodet run, an Ultralytics .pt)."""
        raise SodetError(f"{origin} cannot be loaded into a {self.display} model")

    def verify_weights(self, entry: "ModelEntry", path: Path, part: str = "all") -> None:
        """A downloaded weights file must load strictly into a fresh (80-class) model of ``entry``."""
        from sodet.models.weights import coco80_names, load_weights

        model = self.build(entry, 80, dict(enumerate(coco80_names())))
        load_weights(model, path, strict=True)

    def engine_model_arg(self, entry: "ModelEntry") -> str:
        """What the engine's ``model`` argument says for a registry model (it never reads it for sodet's models)."""
        return entry.name

    # methods -------------------------------------------------------------------------------------------------
    def install_box_rule(self, model: "nn.Module", rule: "BoxRule") -> None:
        """Put ``rule`` where this family computes its per-target box loss."""
        raise SodetError(f"{self.display} has no place for sodet's box-loss options")

    def feature_modules(self, model: "nn.Module", on: str) -> list["nn.Module"]:
        """For distillation: the modules whose outputs are the ``neck`` maps or the ``head`` class logits, in
        stride order (one module may output several levels, or be called once per level)."""
        raise SodetError(f"distillation does not know where {self.display}'s features are")

    # training recipe (engine hooks; None / nothing: the engine's own) ----------------------------------------
    def scheduler(self, trainer) -> Any | None:
        """A learning-rate factor ``lf(epoch)`` replacing the engine's, or None."""
        return None

    def warmup_iterations(self, trainer, batches_per_epoch: int) -> int | None:
        return None

    def adjust_optimizer(self, trainer, optimizer) -> None:
        pass

    def on_close_mosaic(self, model: "nn.Module") -> None:
        """The engine's last epochs without mosaic began."""

    # defaults (cfg/defaults.yaml) ----------------------------------------------------------------------------
    def engine_defaults(self, finetune: bool = False) -> dict:
        """The engine arguments sodet sets for this family, with the fine-tuning ones on top when the run starts
        from pretrained weights."""
        cfg = load_cfg("defaults.yaml")
        out = dict(cfg.get(self.name) or {})
        if finetune:
            out.update((cfg.get("finetune") or {}).get(self.name) or {})
        return out

    def distill_defaults(self) -> dict:
        return (load_cfg("defaults.yaml").get("distill") or {}).get(self.name) or {}

    def refuse_options(self, engine: dict) -> None:
        """Engine options that do not act on this family's models end in one line."""
        given = sorted(set(self.refused_options) & {k for k, v in engine.items() if v is not None})
        if given:
            raise SodetError(f"-o {given[0]}=... does not apply to {self.display}: {self.refused_options[given[0]]}")

    def __repr__(self) -> str:
        return f"<family {self.name}>"

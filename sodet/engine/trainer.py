"""sodet's trainer: the engine's DetectionTrainer hosting every family and sodet's methods.

Every override of the engine lives here (and in ``validator.py``); the engine's contract is implicit and moves
between patch releases, which is why ultralytics is pinned exactly.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from copy import copy
from pathlib import Path

import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from sodet.engine.build import build_dataset, build_model
from sodet.engine.distill import CwdDistiller, build_distiller, describe, distill_schedule, keep_student
from sodet.engine.validator import COCO_COLUMNS, SodetValidator
from sodet.errors import SodetError
from sodet.files import free_space_note, write_text_atomic
from sodet.models.registry import family_of
from sodet.options import RunOptions


class SodetTrainer(DetectionTrainer):
    """DetectionTrainer whose model, dataset, validator and loss are sodet's.

    sodet's options cannot travel in the engine's ``args`` (``get_cfg`` rejects unknown keys) nor on the trainer
    (multi-GPU workers rebuild it from ``args``): they live on the model (``model.sodet``), which the launcher
    pickles, the EMA copies and every checkpoint stores, so resume and DDP keep them.
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, options: RunOptions | None = None):
        self._options = options
        super().__init__(cfg, overrides, _callbacks)
        self.add_callback("on_train_epoch_start", distill_schedule)

    @property
    def student(self) -> nn.Module:
        """The model being trained (a distillation run: its student)."""
        model = unwrap_model(self.model)
        return getattr(model, "student_model", model)

    @property
    def family(self):
        return family_of(self.student)

    @property
    def options(self) -> RunOptions:
        model = self.model if isinstance(self.model, nn.Module) else None
        opts = getattr(unwrap_model(model), "sodet", None) if model is not None else None
        return opts or self._options or RunOptions()

    # model -------------------------------------------------------------------------------------------------
    def get_model(self, cfg=None, weights=None, verbose=True):
        """Build the registered architecture. ``weights`` is a model from an engine checkpoint (resume, or a sodet
        run given as ``--model best.pt``): its options are kept unless this run brought its own. A distillation run
        (``options.distill``) gets the student wrapped with its teacher (``sodet.engine.distill``); resuming one
        restores the connectors from the checkpoint and rebuilds the teacher from its source."""
        projector = None
        if isinstance(weights, CwdDistiller):
            projector, weights = weights.projector.state_dict(), weights.student_model
        saved = getattr(weights, "sodet", None) if weights is not None else None
        opts = self._options or saved or RunOptions()
        model = build_model(opts, self.data["nc"], self.data["names"], weights=weights)
        if verbose and RANK in {-1, 0}:
            n = sum(p.numel() for p in model.parameters())
            LOGGER.info(f"{colorstr('sodet:')} {opts.model}, {n / 1e6:.2f}M parameters, {self.data['nc']} classes")
        if opts.distill is not None:
            model = build_distiller(model, self.args.imgsz, projector if self.resume else None)
            if verbose and RANK in {-1, 0}:
                LOGGER.info(f"{colorstr('sodet:')} {describe(model)}")
        return model

    def train(self):
        """Multi-GPU: build the model here so the launcher pickles it with its options (workers only get args)."""
        if self.ddp and not self.resume and not isinstance(self.model, nn.Module):
            self.setup_model()
        return super().train()

    def _setup_train(self):
        """The engine's AMP check downloads a YOLO26 model; sodet enables AMP on CUDA without it."""
        amp = self.args.amp
        wants_amp = amp not in {False, "fp32", "bf16"}
        if wants_amp:
            self.args.amp = False
        try:
            super()._setup_train()
        finally:
            self.args.amp = amp
        self.measure_nwd_c()
        self.prepare_batchnorm()
        with preserved_rng():  # the validation loader's transforms draw from Python's generator (BGR flip test)
            self.start_metrics = None if self.resume else self.validate_start()  # every rank: validation is sharded
        if wants_amp and self.device.type == "cuda":
            self.amp = True
            self.scaler = torch.amp.GradScaler("cuda", enabled=True)
            if RANK in {-1, 0}:
                LOGGER.info(f"{colorstr('sodet:')} AMP on ({torch.cuda.get_device_name(self.device)})")

    def measure_nwd_c(self) -> None:
        """NWD's C, when the run uses NWD and gave no --nwd-c: the training set's mean object size (sqrt of box
        area) at the network input, measured once here, logged, kept in the run's options (resume and multi-GPU
        workers reuse it) and installed with the box rule."""
        from sodet.losses.box_rule import BoxRule

        opts = self.options
        rule = BoxRule.from_options(opts)
        if rule is None or not rule.uses_nwd or opts.nwd_c is not None:
            return
        import numpy as np

        imgsz = max(self.args.imgsz) if isinstance(self.args.imgsz, (list, tuple)) else self.args.imgsz
        sizes = []
        for lb in self.train_loader.dataset.labels:
            h, w = lb["shape"]
            b = np.asarray(lb["bboxes"]).reshape(-1, 4)
            sizes.append(np.sqrt(b[:, 2] * w * b[:, 3] * h) * imgsz / max(h, w))
        sizes = np.concatenate(sizes) if sizes else np.zeros(0)
        if not len(sizes):
            raise SodetError("--box-loss nwd: the training set holds no boxes to measure NWD's C on; pass --nwd-c")
        opts.nwd_c = float(sizes.mean())
        self.family.install_box_rule(self.student, BoxRule.from_options(opts))
        if RANK in {-1, 0}:
            LOGGER.info(f"{colorstr('sodet:')} NWD's C = {opts.nwd_c:.2f} px: the mean object size of the {len(sizes)} "
                        f"training boxes at {imgsz} px (--nwd-c overrides)")

    def prepare_batchnorm(self, n_batches: int = 4) -> None:
        """Give fine-tuning a parametrization that trains like the original network (see sodet.models.batchnorm):
        folded weights get measured statistics and He-norm convolutions, statistics that would overflow fp16 are
        rescaled, and ``--freeze-bn`` is resolved (auto: frozen for folded weights, whose statistics are
        estimates; as the original recipe otherwise). The log says what was done."""
        from ultralytics.utils.torch_utils import ModelEMA

        from sodet.models.batchnorm import batchnorm_folded, fp16_safe_batchnorm, freeze_batchnorm, unfold_batchnorm

        wrapper = unwrap_model(self.model)
        model = self.student  # a distillation run: the student, not its teacher
        opts = getattr(model, "sodet", None)
        notes = []
        if not self.resume:
            folded = batchnorm_folded(model)
            if folded:
                if hasattr(model, "pixels_in_unit_range"):
                    model.pixels_in_unit_range()
                images = []
                for i, batch in enumerate(self.train_loader):
                    images.append(self.preprocess_batch(batch)["img"])
                    if i + 1 >= n_batches:
                        break
                n = unfold_batchnorm(model, images)
                notes.append(f"BatchNorm was folded into the weights: statistics of {n} layers measured on {len(images)} batches")
            n = fp16_safe_batchnorm(model)
            if n:
                notes.append(f"{n} BatchNorm layers rescaled to fp16-safe statistics (same outputs)")
            if opts is not None and opts.freeze_bn is None:
                opts.freeze_bn = folded
                why = "auto: folded weights, their statistics are estimates" if folded else "auto: as the original recipe"
            else:
                why = "as --freeze-bn/--no-freeze-bn or the sodet checkpoint it starts from set it"
            if self.world_size > 1:
                import torch.distributed as dist

                for t in model.state_dict().values():
                    dist.broadcast(t, src=0)
            self.ema = ModelEMA(wrapper)  # the EMA copy was taken before: it must hold the new parametrization
        else:
            why = "as the resumed run"
        frozen = bool(opts is not None and opts.freeze_bn)
        if frozen:
            freeze_batchnorm(model)  # affine parameters frozen now, after the engine built its optimizer
        state = "frozen (eval mode, affine fixed)" if frozen else "in training mode"
        if not frozen and getattr(model, "norm_eval", False):
            state = "in eval mode, affine learning (the architecture's norm_eval)"
        notes.append(f"BatchNorm {state} ({why})")
        if RANK in {-1, 0}:
            for note in notes:
                LOGGER.info(f"{colorstr('sodet:')} {note}")

    def validate_start(self) -> dict | None:
        """COCO numbers of the starting weights, in the pipeline the run will report (printed as "before")."""
        if not self.args.val or self.args.epochs < 1:
            return None
        model = unwrap_model(self.model)
        was, plots = model.training, self.validator.args.plots
        model.eval()  # no BatchNorm statistics change while the validator asks for loss items
        try:
            # the loss names come from a VALIDATION batch: a training batch would advance the training stream
            # (every later batch shifted by one against a run that does not validate)
            with torch.no_grad():
                _, self.loss_items = model.loss(self.preprocess_batch(next(iter(self.test_loader))))
            self.epoch = -1  # before the first epoch (no plots)
            self.validator(self)
        finally:
            model.train(was)
            self.loss_items = None
            self.validator.args.plots = plots  # the validator switches plots off for epochs before the last
        metrics = self.validator.coco_metrics if RANK in {-1, 0} else None
        if metrics:
            from sodet.eval.metrics_io import write_metrics

            v = self.validator
            write_metrics(self.save_dir / "start", metrics, options=v.run_record(), dataset=v.dataset_identity(), speed=None, predictions=v.jdict)
            from sodet.eval.tables import format_value

            LOGGER.info(f"{colorstr('sodet:')} before training: AP {format_value(metrics['AP'])}, APs {format_value(metrics.get('APs'))}")
        return metrics

    def save_model(self):
        """The engine's checkpoints, written to temporary files and renamed: a kill or a full disk while saving
        leaves the previous last.pt / best.pt loadable (the engine writes them in place); a failed write is one line
        naming the path and the free space."""
        last, best = self.last, self.best
        self.last, self.best = (p.with_name(f".{p.name}.tmp") for p in (last, best))
        try:
            saved = super().save_model()
            for tmp, final in ((self.last, last), (self.best, best)):
                if tmp.exists():
                    os.replace(tmp, final)
            return saved
        except OSError as e:
            raise SodetError(f"cannot save checkpoint {last}: {e.strerror or e}{free_space_note(last.parent)}; "
                             f"the previous {last.name} and {best.name} are intact") from None
        finally:
            for tmp in (self.last, self.best):
                Path(tmp).unlink(missing_ok=True)
            self.last, self.best = last, best

    def final_eval(self):
        """The engine's final checkpoints and validation of best.pt, then the change from the starting weights. The
        engine rewrites last.pt / best.pt in place (without the optimizer): it works on copies that replace the
        originals only when written whole. A distillation run's final checkpoints keep the student only (no teacher,
        no connectors): they load like a plain run's."""
        import shutil

        if RANK in {-1, 0} and isinstance(unwrap_model(self.model), CwdDistiller):  # plain runs: no extra I/O
            for f in (self.last, self.best):
                keep_student(f)
        last, best = self.last, self.best
        copies = {p: p.with_name(f".final-{p.name}") for p in (last, best) if p.exists()}  # still *.pt: the engine checks
        try:
            if RANK in {-1, 0}:
                for src, tmp in copies.items():
                    shutil.copyfile(src, tmp)
            self.last, self.best = copies.get(last, last), copies.get(best, best)
            super().final_eval()
            if RANK in {-1, 0}:
                for src, tmp in copies.items():
                    os.replace(tmp, src)
        except OSError as e:
            raise SodetError(f"cannot write the final checkpoints in {last.parent}: {e.strerror or e}"
                             f"{free_space_note(last.parent)}; {last.name} and {best.name} are as the last epoch left them") from None
        finally:
            for tmp in copies.values():
                tmp.unlink(missing_ok=True)
            self.last, self.best = last, best
        before, after = getattr(self, "start_metrics", None), self.validator.coco_metrics
        if before and after and RANK in {-1, 0}:
            from sodet.eval.tables import before_after_table

            LOGGER.info(before_after_table(before, after))

    # the family's training recipe (engine overrides: the family returns None / does nothing for the engine's) -----
    def _setup_scheduler(self):
        """Engine override: a family's own learning-rate factor (GFL: MMDetection's steps) where it has one."""
        super()._setup_scheduler()
        lf = self.family.scheduler(self)
        if lf is not None:
            self.lf = lf
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)

    def _get_warmup_iterations(self, num_batches):
        """Engine override: a family's own warm-up length (GFL: 500 recipe iterations) where it has one."""
        n = self.family.warmup_iterations(self, num_batches)
        return super()._get_warmup_iterations(num_batches) if n is None else n

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Engine override: the engine's optimizer, as the family's recipe adjusts it (GFL: MMDetection's SGD)."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        self.family.adjust_optimizer(self, optimizer)
        return optimizer

    # data --------------------------------------------------------------------------------------------------
    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        gs = max(int(unwrap_model(self.model).stride.max()), 32)
        return build_dataset(self.args, img_path, batch, self.data, mode, gs, self.options)

    def _close_dataloader_mosaic(self):
        super()._close_dataloader_mosaic()
        self.family.on_close_mosaic(self.student)  # YOLOX's recipe: L1 box term in the last, unaugmented epochs

    def plot_training_labels(self):
        """The engine's label plots need every label of the set; skipped for sets without boxes."""
        if sum(len(lb["bboxes"]) for lb in self.train_loader.dataset.labels):
            super().plot_training_labels()

    # validation --------------------------------------------------------------------------------------------
    def validate(self):
        """The engine's validation, leaving every random number generator as it found it (see ``preserved_rng``):
        a run trains identically whether or not its epochs are validated."""
        with preserved_rng():
            return super().validate()

    def optimizer_step(self):
        """The engine's step, counted (``training.json``: what a run cost, for compute-matched comparisons)."""
        super().optimizer_step()
        self.optimizer_steps = getattr(self, "optimizer_steps", 0) + 1

    def get_validator(self):
        return SodetValidator(
            self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks, options=self.options
        )

    def save_metrics(self, metrics):
        """The engine's results.csv row with fixed columns, and what copy-paste did in the run record, once per
        epoch. The engine writes the header with the first row and then whatever keys a row has: an epoch that is
        not validated (``val=False``, the study's runs) lacks sodet's COCO columns, so every row is put in the
        columns of the file's header (or, for the first row, the engine's plus sodet's), 0 where an epoch has no
        value, as the engine does for its own metrics of an epoch it did not validate."""
        row = {k: metrics.get(k, 0.0) for k in self.results_columns(metrics)}
        csv, tmp = self.csv, self.csv.with_name(f".{self.csv.name}.tmp")
        try:  # the engine appends its row to a copy, renamed over results.csv: a kill never leaves half a row
            if csv.exists():
                tmp.write_bytes(csv.read_bytes())
            self.csv = tmp
            super().save_metrics(row)
            os.replace(tmp, csv)
        except OSError as e:
            raise SodetError(f"cannot write {csv}: {e.strerror or e}{free_space_note(csv.parent)}") from None
        finally:
            self.csv = csv
            tmp.unlink(missing_ok=True)
        self.save_training_record()
        ds = getattr(self.train_loader, "dataset", None)
        if ds is not None and getattr(ds, "paste_stats", None) and self.options.copy_paste:
            from ultralytics.utils import YAML

            YAML.save(self.save_dir / "copy_paste.yaml", dict(ds.paste_stats))

    def save_training_record(self) -> None:
        """``training.json``: what the run has seen so far (samples per epoch and which, images, batches,
        optimizer steps per epoch), so that a study can show each setting's compute and tell which runs saw the
        same batches. A resumed run keeps the steps of the epochs before its checkpoint."""
        import json

        ds = getattr(self.train_loader, "dataset", None)
        if ds is None or RANK not in {-1, 0}:
            return
        path = self.save_dir / "training.json"
        try:
            earlier = json.loads(path.read_text()).get("steps_per_epoch", []) if path.is_file() else []
        except (OSError, ValueError):
            earlier = []
        start = getattr(self, "start_epoch", 0)
        total = getattr(self, "optimizer_steps", 0)
        counted = getattr(self, "_steps_counted", 0)
        steps = (earlier[:start] + getattr(self, "_steps_per_epoch", []))[: self.epoch]
        steps.append(total - counted)
        self._steps_per_epoch, self._steps_counted = steps[start:], total
        record = {
            "epochs_done": self.epoch + 1,
            "epochs": self.epochs,
            "epoch_samples": len(ds),
            "images_in_split": len(ds.labels),
            "sample_stream": getattr(ds, "sample_stream", str(len(ds))),
            "images_seen": len(ds) * (self.epoch + 1),
            "batches_per_epoch": len(self.train_loader),
            "batch": self.batch_size,
            "optimizer_steps": sum(steps),
            "steps_per_epoch": steps,
            "seed": int(self.args.seed),
        }
        write_text_atomic(path, json.dumps(record, indent=2) + "\n")

    def results_columns(self, metrics: dict) -> list[str]:
        """results.csv's metric columns: its header's (resume appends to it), else ``metrics``' keys with sodet's
        COCO columns after the engine's ``metrics/`` ones."""
        if self.csv.exists():
            with open(self.csv, encoding="utf-8") as f:
                header = [c.strip() for c in f.readline().strip().split(",")]
            if header[:2] == ["epoch", "time"] and len(header) > 2:
                return header[2:]
        keys = list(metrics)
        missing = [k for k in COCO_COLUMNS if k not in keys]
        last = max((i for i, k in enumerate(keys) if k.startswith("metrics/")), default=len(keys) - 1)
        return keys[: last + 1] + missing + keys[last + 1 :]


@contextmanager
def preserved_rng():
    """Python's, NumPy's and torch's (CPU and CUDA) random states restored on exit. Validation draws from them
    (creating a data-loader iterator takes a seed from torch's global generator), and training after it must not
    notice: a validated run and an unvalidated run of the same seed then see the same batches and augmentations
    (checked in tests/test_training_methods.py)."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

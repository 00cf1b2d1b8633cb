"""sodet on the Ultralytics engine (pinned to 8.4.190): every place sodet touches the engine, in one list.

The engine's contract with a foreign model or dataset is implicit and moves between patch releases; when the pin
moves, this list is what to re-read. ``OVERRIDES`` below is the same list as data: ``tests/test_architecture.py``
holds it against the methods each subclass really overrides, so it cannot drift.

Trainer (``trainer.py``, subclass of ``DetectionTrainer``)
  ``get_model`` (the registered family's model; a distillation run's ``CwdDistiller``), ``train`` (builds the
  model before the multi-GPU launcher pickles it), ``build_dataset``, ``get_validator``, ``plot_training_labels``,
  ``save_metrics`` (every results.csv row in the header's columns, the file written whole; ``training.json``),
  ``save_model`` (checkpoints written to temporary files and renamed: a kill or a full disk leaves the previous
  ones), ``final_eval`` (the same for the final checkpoints; a distillation run's rewritten with the student alone), ``validate`` (the random generators restored
  around it: validating an epoch never changes the training that follows), ``optimizer_step`` (counted).
  private: ``_setup_train`` (AMP without the engine's downloading check; BatchNorm preparation; the start
  validation), ``_close_dataloader_mosaic``, ``_setup_scheduler``, ``_get_warmup_iterations``; with
  ``build_optimizer`` these ask the model's family (``Family.on_close_mosaic``, ``scheduler``,
  ``warmup_iterations``, ``adjust_optimizer``: GFL's MMDetection recipe, YOLOX's L1 term), the engine's own
  where the family has none.
  attributes set: ``args.amp`` (restored), ``amp``, ``scaler``, ``ema`` (re-made after re-parametrizing),
  ``loss_items`` and ``epoch`` (only while validating the starting weights, then reset).
  distillation (``distill.py``): the engine's ``setup_model`` hands ``CwdDistiller`` back on resume, so the
  engine's own DistillationModel path is never taken; an ``on_train_epoch_start`` callback (``--stop-distill``);
  the connectors are named ``projector`` for the engine's NaN recovery.
Predictor (``predictor.py``, subclass of ``DetectionPredictor``): ``setup_model``, ``setup_source``,
  ``pre_transform``, ``inference``, ``postprocess``: images prepared and NMS run as the validator does
  (``inference.py``); sliced inference (``slicing.py``) through the ``sahi`` package.
Validator (``validator.py``, subclass of ``DetectionValidator``): ``build_dataset``, ``init_metrics``,
  ``preprocess``, ``postprocess`` (a model's class subset picked by name; slicing), ``pred_to_json``,
  ``eval_json``, ``finalize_metrics``.
  attributes reset: ``is_custom_json``, ``gdict``, ``build_gdict``, ``eval_ids`` (the engine's COCO scoring is
  replaced), ``args.save_json`` (always on), ``jdict`` (capped at 100 per image before scoring).
  keys added to the engine's stats: ``metrics/mAP_small|medium|large(B)``, ``metrics/AP_coco(B)``, ``fitness``
  (COCO AP, so best.pt is the checkpoint with the best COCO AP).
Dataset (``sodet.data.dataset.SodetDataset``, subclass of ``YOLODataset``): ``get_img_files``, ``get_labels``,
  ``get_image_and_label``, ``__len__``, ``build_transforms`` (a bottom/right LetterBox for YOLOX evaluation),
  ``load_image`` (with sliced training only: one decode of a frame serves its crops and its full-image draws).
  attributes used: ``ims``, ``im_hw0``, ``im_hw``, ``buffer``, ``max_buffer_length`` (the engine's store of recent
  loads, which crops enter by the engine's rule).
Models (``sodet.models``): the model contract in ``../shared/notes/engine.md``, written once in
  ``models/adapter.py`` (``EngineAdapter``); Ultralytics YOLO is the engine's own ``DetectionModel`` with
  ``init_criterion`` overridden (``models/yolo.py``).
Losses (``sodet.losses``): ``RuleBboxLoss``, a subclass of the engine's ``BboxLoss`` installed on its
  ``v8DetectionLoss`` (``forward``); ``NwdTaskAlignedAssigner``, its ``TaskAlignedAssigner`` ranking candidates by
  NWD (``iou_calculation``, for ``--nwd-assign``).
Downloads (``sodet.hub``): the engine's ``attempt_download_asset`` / ``safe_download`` for Ultralytics assets.
Environment and files (``sodet.offline``): ``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=false`` unless the user set
  them; a local TTF copied as ``Arial.ttf`` into the engine's config folder (where the engine would download it).
  The user's Ultralytics settings file is never written.
"""

# subclass -> (engine base class, the engine methods it overrides): checked by tests/test_architecture.py
OVERRIDES = {
    "sodet.engine.trainer.SodetTrainer": ("ultralytics.models.yolo.detect.DetectionTrainer", (
        "get_model", "train", "build_dataset", "get_validator", "plot_training_labels", "save_metrics", "save_model", "final_eval",
        "validate", "optimizer_step", "build_optimizer", "_setup_train", "_close_dataloader_mosaic",
        "_setup_scheduler", "_get_warmup_iterations")),
    "sodet.engine.predictor.SodetPredictor": ("ultralytics.models.yolo.detect.DetectionPredictor", (
        "setup_model", "setup_source", "pre_transform", "inference", "postprocess")),
    "sodet.engine.validator.SodetValidator": ("ultralytics.models.yolo.detect.DetectionValidator", (
        "build_dataset", "init_metrics", "preprocess", "postprocess", "pred_to_json", "eval_json", "finalize_metrics")),
    "sodet.data.dataset.SodetDataset": ("ultralytics.data.dataset.YOLODataset", (
        "get_img_files", "get_labels", "get_image_and_label", "__len__", "build_transforms", "load_image")),
    "sodet.models.yolo.SodetDetectionModel": ("ultralytics.nn.tasks.DetectionModel", ("init_criterion",)),
    "sodet.losses.ultralytics_bbox.RuleBboxLoss": ("ultralytics.utils.loss.BboxLoss", ("forward",)),
    "sodet.losses.ultralytics_bbox.NwdTaskAlignedAssigner": ("ultralytics.utils.tal.TaskAlignedAssigner", ("iou_calculation",)),
}

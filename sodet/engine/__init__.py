"""sodet on the Ultralytics engine (pinned to 8.4.190): every place sodet touches the engine, in one list.

The engine's contract with a foreign model or dataset is implicit and moves between patch releases; when the pin
moves, this list is what to re-read.

Trainer (``trainer.py``, subclass of ``DetectionTrainer``)
  public overrides: ``get_model``, ``train`` (builds the model before the multi-GPU launcher pickles it),
  ``build_dataset``, ``get_validator``, ``plot_training_labels``, ``save_metrics``, ``final_eval``.
  private overrides: ``_setup_train`` (AMP without the engine's downloading check; BatchNorm preparation; the
  start validation), ``_close_dataloader_mosaic`` (YOLOX's L1 term in the last epochs); GFL only:
  ``_setup_scheduler`` (step schedule at 8/12 and 11/12 of the epochs), ``_get_warmup_iterations`` (500 recipe
  iterations of 16 images) unless cos_lr/lrf/warmup_epochs are set, and ``build_optimizer`` (plain-momentum SGD,
  weight decay on every group).
  ``save_metrics`` writes every results.csv row in the header's columns (the engine writes a row's own keys: an
  epoch not validated lacks sodet's COCO columns).
  attributes set: ``args.amp`` (restored), ``amp``, ``scaler``, ``ema`` (re-made after re-parametrizing),
  ``loss_items`` and ``epoch`` (only while validating the starting weights, then reset).
  distillation (``distill.py``): ``get_model`` returns ``CwdDistiller`` (the student wrapped; the engine's
  ``setup_model`` hands it back on resume, so the engine's own DistillationModel path is never taken); a
  ``on_train_epoch_start`` callback (``--stop-distill``); ``final_eval`` first rewrites last.pt / best.pt with the
  student alone; the connectors are named ``projector`` for the engine's NaN recovery.
Predictor (``predictor.py``, subclass of ``DetectionPredictor``): images prepared and NMS run as the validator
  does; sliced inference (``slicing.py``) through the ``sahi`` package.
Validator (``validator.py``, subclass of ``DetectionValidator``)
  overrides: ``build_dataset``, ``init_metrics``, ``pred_to_json``, ``eval_json``, ``finalize_metrics``.
  attributes reset: ``is_custom_json``, ``gdict``, ``build_gdict``, ``eval_ids`` (the engine's COCO scoring is
  replaced), ``args.save_json`` (always on), ``jdict`` (capped at 100 per image before scoring).
  keys added to the engine's stats: ``metrics/mAP_small|medium|large(B)``, ``metrics/AP_coco(B)``, ``fitness``
  (COCO AP, so best.pt is the checkpoint with the best COCO AP).
Dataset (``sodet.data.dataset.SodetDataset``, subclass of ``YOLODataset``)
  overrides: ``get_img_files``, ``get_labels``, ``get_image_and_label``, ``__len__``, ``build_transforms``
  (replaces ``transforms[0]`` with a bottom/right LetterBox for YOLOX evaluation).
Models (``sodet.models``)
  the model contract in ``../shared/notes/engine.md`` (``stride``, ``names``, ``yaml``, ``args``, ``criterion``,
  ``set_head_attr``, ``loss``, ``fuse``, indexable ``model``); ``train()`` keeps BatchNorm frozen under
  ``--freeze-bn``; YOLOX's ``half()`` keeps fp32 weights (the engine stores checkpoints after ``.half()``).
Losses (``sodet.losses``): subclasses of the engine's ``BboxLoss`` installed on its ``v8DetectionLoss``.
Environment and files (``sodet.offline``): ``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=false`` unless the user set
  them; a local TTF copied as ``Arial.ttf`` into the engine's config folder (where the engine would download it).
  The user's Ultralytics settings file is never written.
"""

"""metrics.json and predictions.json: what an evaluation leaves in its run directory.

metrics.json holds the 12 COCO numbers at the top level (None/null where a bucket has no ground truth), the same
per class, the options of the run, which data it was scored on and the speed; ``sodet compare`` reads it back and
refuses to set runs side by side that were scored on different data. predictions.json beside it holds the
detections in COCO results format, so the numbers can be recomputed by any COCO tool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sodet.errors import SodetError
from sodet.eval.cocoeval import METRIC_KEYS
from sodet.files import write_text_atomic

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.json"
DATASET_KEYS = ("gt", "split", "classes", "num_images")
SPEED_KEYS = ("preprocess", "inference", "postprocess")


def write_metrics(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    *,
    options: Mapping[str, Any],
    dataset: Mapping[str, Any],
    speed: Mapping[str, float] | None,
    predictions: list[Mapping[str, Any]],
) -> Path:
    """Write ``out_dir/metrics.json`` and ``out_dir/predictions.json``; returns the metrics.json path.

    ``dataset`` = {"gt": path of the ground-truth json, "split", "classes": [names], "num_images"}; the path is
    stored resolved, with the file's sha256 as ``gt_sha256`` so that runs can be matched by content.
    ``speed`` = {"preprocess", "inference", "postprocess"} in ms per image, or None.
    """
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise SodetError(f"metrics lack {', '.join(missing)}; pass what sodet.eval.cocoeval.evaluate returns")
    missing = [k for k in DATASET_KEYS if k not in dataset]
    if missing:
        raise SodetError(f"dataset description lacks {', '.join(missing)} (needs {', '.join(DATASET_KEYS)})")
    if speed is not None and any(k not in speed for k in SPEED_KEYS):
        raise SodetError(f"speed must hold {', '.join(SPEED_KEYS)} in ms per image, got {sorted(speed)}")

    gt_path = Path(dataset["gt"]).resolve()
    dataset_record = {
        **dataset,
        "gt": str(gt_path),
        "split": str(dataset["split"]),
        "classes": [str(c) for c in dataset["classes"]],
        "num_images": int(dataset["num_images"]),
    }
    if gt_path.is_file() and "gt_sha256" not in dataset_record:
        dataset_record["gt_sha256"] = file_sha256(gt_path)
    record = {
        **{k: _number(metrics[k]) for k in METRIC_KEYS},
        "per_class": {
            str(name): {k: _number(values.get(k)) for k in METRIC_KEYS}
            for name, values in metrics.get("per_class", {}).items()
        },
        **({"protocols": {name: {k: (_number(v) if k != "per_class" else {c: {s: _number(x) for s, x in vals.items()}
                                                                          for c, vals in v.items()})
                                 for k, v in block.items()} for name, block in metrics["protocols"].items()}}
           if metrics.get("protocols") else {}),
        "options": dict(options),
        "dataset": dataset_record,
        "speed": None if speed is None else {k: float(speed[k]) for k in SPEED_KEYS},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / METRICS_FILE
    # predictions first: a metrics.json (what marks an evaluation, or a study's cell, as done) always has its
    # detections beside it; each file is written whole or not at all
    write_text_atomic(out_dir / PREDICTIONS_FILE, json.dumps([_prediction(p) for p in predictions], separators=(",", ":")))
    write_text_atomic(metrics_path, json.dumps(record, indent=2, default=_jsonable) + "\n")
    return metrics_path


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics.json written by write_metrics, checked for the keys that reports rely on."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise SodetError(f"metrics file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SodetError(f"cannot read metrics file {path}: {e}") from None
    if not isinstance(record, dict):
        raise SodetError(f"{path} is not a sodet metrics.json (top level is not an object)")
    missing = [k for k in (*METRIC_KEYS, "dataset") if k not in record]
    if missing:
        raise SodetError(f"{path} is not a sodet metrics.json: missing {', '.join(missing)}")
    return record


def metric_value(metrics: Mapping[str, Any], key: str, protocol: str | None = None) -> float | None:
    """A number of a metrics.json: one of COCO's 12 (``AP``), a protocol's (``aitod.APvt``, or ``APvt`` with
    ``protocol``, or the first protocol holding ``APvt``); None where it has no value."""
    blocks = metrics.get("protocols") or {}
    if "." in key:
        protocol, key = key.split(".", 1)
    if protocol and protocol != "coco":
        value = (blocks.get(protocol) or {}).get(key)
    elif key in metrics and not isinstance(metrics[key], Mapping):
        value = metrics[key]
    else:
        value = next((b[key] for b in blocks.values() if key in b), None)
    return None if value is None or value == -1 else float(value)


def protocol_keys(metrics: Mapping[str, Any], protocol: str) -> list[str]:
    """The numbers a protocol's block holds, in its order (empty when the run was not scored with it)."""
    return [k for k in ((metrics.get("protocols") or {}).get(protocol) or {}) if k != "per_class"]


def file_sha256(path: str | Path) -> str:
    """Content hash of a file, read in chunks (ground-truth files can be tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _number(value: Any) -> float | None:
    """A metric as JSON: COCO's -1 ('no ground truth in this bucket') and None become null, never 0."""
    if value is None:
        return None
    value = float(value)
    return None if value == -1 else value


def _prediction(p: Mapping[str, Any]) -> dict[str, Any]:
    """One COCO result with plain Python numbers (detections often carry numpy scalars)."""
    return {
        "image_id": int(p["image_id"]),
        "category_id": int(p["category_id"]),
        "bbox": [float(v) for v in p["bbox"]],
        "score": float(p["score"]),
    }


def _jsonable(value: Any) -> Any:
    """json.dump fallback for the values options hold: paths, numpy scalars and arrays, sets."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)

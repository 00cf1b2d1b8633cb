#!/usr/bin/env bash
# Issue 9.7: does CWD self-distillation hurt a fine-tuned YOLOX-Nano? Student: the shipped COCO yolox-nano,
# fine-tuned on HIT-UAV (half of its train split, 416 px, 3 epochs). Teacher: the seed-0 plain fine-tune.
# Plain and distilled students with the same seeds (same data order). Usage: bash docs/evidence/self_distill.sh [OUT]
set -euo pipefail
OUT=${1:-runs/evidence/self_distill}
DATA=${DATA:-../shared/data/hit-uav}
COMMON=(--data "$DATA" --imgsz 416 --epochs 3 --batch 16 --workers 2 -o fraction=0.5 --project "$OUT" --exist-ok)
for seed in 0 1; do
  [ -f "$OUT/plain-s$seed/metrics.json" ] || sodet train "${COMMON[@]}" --seed $seed --name plain-s$seed
done
for seed in 0 1; do
  [ -f "$OUT/cwd-s$seed/metrics.json" ] || sodet distill --teacher "$OUT/plain-s0/weights/best.pt" "${COMMON[@]}" --seed $seed --name cwd-s$seed
done

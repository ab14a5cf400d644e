#!/usr/bin/env bash
# The main job on the embedded default: synthetic dermoscopy data in the ISIC 2018 layout -> train the
# medsegdiff_isic2018 bundle briefly with `python -m monai.bundle run` -> ensemble inference -> masks, overlays, metrics.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_output}
EPOCHS=${DEMO_EPOCHS:-30}
SIZE=${DEMO_SIZE:-64}
BUNDLE=bundles/medsegdiff_isic2018
COMMON=(--meta_file "$BUNDLE/configs/metadata.json" --logging_file "$BUNDLE/configs/logging.conf"
        --bundle_root "$BUNDLE" --dataset_dir "$OUT/data" --ckpt_dir "$OUT/models"
        --image_size "[$SIZE, $SIZE]" --num_workers 0)

echo "== 1/3 synthetic ISIC 2018-style dataset -> $OUT/data"
"$PY" -m monai_diffseg.data.synthetic --output_dir "$OUT/data" --num_train 96 --num_val 8 --num_test 16 --seed 0

echo "== 2/3 training ($EPOCHS epochs at ${SIZE}x${SIZE}) -> $OUT/models"
"$PY" -m monai.bundle run --config_file "$BUNDLE/configs/train.json" "${COMMON[@]}" \
    --output_dir "$OUT/train_logs" --num_epochs "$EPOCHS" --val_interval 10 --batch_size 8 \
    --learning_rate 0.002 --resume false 2>&1 | grep -v -E "Warning|warn\(" | grep -E "val_mean_dice|Epoch: [0-9]+/[0-9]+, Iter: 1/|Error|error" || true
test -f "$OUT/models/model.pt" || { echo "training did not produce $OUT/models/model.pt" >&2; exit 1; }

echo "== 3/3 ensemble inference (5 members from the anchor head, 3 of the 20 DDIM grid steps each) on the test split -> $OUT/predictions"
"$PY" -m monai.bundle run --config_file "$BUNDLE/configs/inference.json" "${COMMON[@]}" \
    --output_dir "$OUT/predictions" --num_samples 5 --num_inference_steps 20 2>&1 | grep -E "mean Dice|Error|error" || true

"$PY" - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
path = os.path.join(out, "predictions", "metrics.json")
if not os.path.exists(path):
    sys.exit(f"inference did not write {path}")
m = json.load(open(path))
print(f"\nmean Dice on {m['num_labelled']} synthetic test cases: {m['mean_dice']:.4f} (IoU {m['mean_iou']:.4f})")
print(f"masks, probability maps and overlays: {os.path.join(out, 'predictions')}/*_{{mask,prob,overlay}}.png")
print(f"per-case metrics: {path}")
print(f"model checkpoint: {os.path.join(out, 'models', 'model.pt')}; TensorBoard logs: {os.path.join(out, 'train_logs')}")
PYEOF

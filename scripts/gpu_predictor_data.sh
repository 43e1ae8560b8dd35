#!/usr/bin/env bash
# Records the predictor's CNN/ViT training runs on a GPU (see smartfrz/predictor_training/freeze_dataset.py, preset gpu).
# Usage: bash scripts/gpu_predictor_data.sh DATA_DIR OUT_DIR [BUDGET_S]
# Each finished run is appended to OUT_DIR/runs.tar at once, so a time-out keeps what was done.
set -uo pipefail
data=${1:?data dir}; out=${2:?out dir}; budget=${3:-420}
export PYTHONUNBUFFERED=1
mkdir -p "$out" /tmp/freeze_runs
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt" 2>/dev/null || true
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" >> "$out/device.txt"
start=$(date +%s)
for run in $(python3 -c "from smartfrz.predictor_training.freeze_dataset import preset; print(' '.join(s.name for s in preset('gpu')))"); do
  if (( $(date +%s) - start > budget )); then echo "budget spent: skipping $run" | tee -a "$out/log.txt"; continue; fi
  python3 -m smartfrz.predictor_training.freeze_dataset --preset gpu --only "$run" --data-dir "$data" --out /tmp/freeze_runs 2>&1 \
    | grep -v "it/s" | tee -a "$out/log.txt"
  tar -cf "$out/runs.tar" -C /tmp freeze_runs
done
echo "total $(( $(date +%s) - start ))s" | tee -a "$out/log.txt"

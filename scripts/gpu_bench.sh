#!/usr/bin/env bash
# The `gpu` bench suite on one GPU, one part per device call (each about 5 minutes), resumable:
# finished runs are tarred into OUT after every part, and a later call that carries that tar back in
# .gpu_bench/runs.tar trains only what is missing.
#
# Here:      python scripts/gpu_bench_prepare.py ../shared/data      # .gpu_bench/{vision,text}, git-ignored
# Device:    bash scripts/gpu_bench.sh vision "$OUT" 500   (carry .gpu_bench/vision)
#            bash scripts/gpu_bench.sh text "$OUT" 500     (carry .gpu_bench/text, and .gpu_bench/runs.tar)
# BUDGET (seconds) bounds each part; the first task of a part gets up to FIRST_SHARE of it (vision: ResNet-18
# first, DeiT-tiny with what is left).
# Keep OUT/runs.tar as .gpu_bench/runs.tar between the calls. The text part ends by reading every run back
# into one OUT/gpu.json and OUT/gpu.md (all three tasks): copy those two to reports/bench/.
set -uo pipefail
part=${1:?vision or text}; out=${2:?out dir}; budget=${3:-500}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out" /tmp/gpu_bench
[ -f .gpu_bench/runs.tar ] && tar -xf .gpu_bench/runs.tar -C /tmp/gpu_bench
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt" 2>/dev/null || true
case $part in
  vision) tasks="cifar10_resnet18 cifar10_deit_tiny"; data=.gpu_bench/vision ;;
  text) tasks="sst2_minilm_full"; data=.gpu_bench/text; export SMARTFRZ_MINILM_DIR=$PWD/.gpu_bench/text/minilm ;;
  *) echo "unknown part $part; allowed: vision, text"; exit 2 ;;
esac
end=$(( $(date +%s) + budget ))
for task in $tasks; do  # one task after another: the first finishes whole before the next starts
  left=$(( end - $(date +%s) )); [ "$left" -gt 30 ] || break
  timeout -s INT -k 20 "$left" python3 -m smartfrz.lab.bench --suite gpu --device cuda --tasks $task --jobs 4 \
    --data-dir "$data" --out /tmp/gpu_bench/gpu.json 2>&1 | grep -v "it/s" | tail -25
done
if [ "$part" = text ]; then  # the whole suite, read back and rendered (nothing trained: what is missing stays missing)
  python3 -m smartfrz.lab.bench --suite gpu --device cuda --jobs 1 --data-dir .gpu_bench/vision --no-train \
    --out /tmp/gpu_bench/gpu.json 2>&1 | grep -v "it/s" | tail -30
fi
tar -cf "$out/runs.tar" -C /tmp/gpu_bench gpu.runs
cp /tmp/gpu_bench/gpu.json /tmp/gpu_bench/gpu.md "$out/" 2>/dev/null || true

#!/usr/bin/env bash
# The GPU checks, in one prepared run on a CUDA machine (no TensorRT needed; skipped tests say why):
#   1. the tests marked gpu/trt (exact BN calibration on CUDA, CUDA training, TensorRT where installed);
#   2. calibration of the shipped mixed-size model on CUDA and on the CPU: BN statistics compared;
#   3. eval of the CUDA-calibrated bundle (torch on CUDA vs ONNX Runtime) on the shipped images;
#   4. torch-on-CUDA latency (fp32, fp16) beside ONNX Runtime, batch 1 and 32, in one interleaved bench;
#   5. training throughput on CUDA of the CIFAR model-card recipe (D+ and fixed-32, 300 steps each, one at a time).
# Usage, from the repository root: bash benchmarks/device_checks.sh  (writes a copy of its output to $OUT/ if set)
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 COLUMNS=200
LOG=${OUT:-/tmp}/device_checks.log
exec > >(tee "$LOG") 2>&1
log() { echo "== $(date +%T) $*"; }
log start
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, onnxruntime, onnx; print('torch', torch.__version__, torch.cuda.get_device_name(0), '| onnx', onnx.__version__, '| ort', onnxruntime.__version__, onnxruntime.get_available_providers())"

log "1. tests marked gpu or trt"
python3 -m pytest -q -m "gpu or trt" tests/ -p no:cacheprovider -rs 2>&1 | tail -12

log "2. calibration on CUDA vs CPU (shipped D+ model, calib/train)"
M=models/cifar_resnet20_mixsize_dplus.pth
for dev in cuda cpu; do
  python3 -m mmdeploy calibrate $M --size 16 --size 24 --size 32 --size 48 --data calib/train --out /tmp/b_$dev --device $dev 2>&1 | tail -1
done
python3 - <<'EOF'
from safetensors.torch import load_file
for s in (16, 24, 32, 48):
    a = load_file(f"/tmp/b_cuda/sizes/{s}/weights.safetensors")
    b = load_file(f"/tmp/b_cpu/sizes/{s}/weights.safetensors")
    keys = [k for k in a if "running" in k]
    d = max(((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max().clamp_min(1e-12)).item() for k in keys)
    print(f"size {s}: {len(keys)} BN tensors, CUDA vs CPU max relative difference {d:.2e}")
EOF

log "3. eval: torch on CUDA vs ONNX Runtime (CPU provider), shipped validation images"
python3 -m mmdeploy export /tmp/b_cuda --engine ort --precision fp32 --precision fp16 2>&1 | tail -1
python3 -m mmdeploy eval /tmp/b_cuda --data calib/val --engine torch --engine ort --precision fp32 --device cuda 2>&1 | tail -14

log "4. latency: torch on CUDA fp32/fp16 beside ONNX Runtime (CPU), one interleaved run"
python3 -m mmdeploy bench /tmp/b_cuda --engine torch --engine ort --precision fp32 --precision fp16 --size 16 --size 32 \
  --batch 1 --batch 32 --iters 50 --warmup 10 --noise-budget 10 2>&1 | tail -24

log "5. training throughput on CUDA (CIFAR model-card recipe, batch 64, 300 steps each)"
for regime in D+ fixed; do
  python3 -m mmdeploy train --data calib/train --arch cifar_resnet20 --regime $regime --steps 300 --lr 0.1 --schedule cosine \
    --warmup-steps 50 --device cuda --seed 0 --out /tmp/probe_$regime.pth --overwrite --json > /tmp/probe_$regime.json 2>/tmp/probe_$regime.log \
    || tail -5 /tmp/probe_$regime.log
  python3 -c "import json; s=json.load(open('/tmp/probe_$regime.json')); print('$regime', {k: s.get(k) for k in ('steps', 'images_per_s', 'wall_s', 'precision')})"
done
log done

#!/usr/bin/env bash
# Train the model zoo on one CUDA GPU and run the GPU checks, in one prepared run.
# Expects the CIFAR-10 train folder zipped at .devcarry/cifar10-train.zip (made from
# ../shared/data/cifar10/train) and $OUT for results. TRAIN_S: seconds both trainings may take.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
TRAIN_S=${TRAIN_S:-330}
DATA=../shared/data/cifar10/train
log() { echo "== $(date +%T) $*"; }
log start; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, onnxruntime; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'ort', onnxruntime.__version__, onnxruntime.get_available_providers())"
mkdir -p ../shared/data/cifar10
python3 -c "import zipfile; zipfile.ZipFile('.devcarry/cifar10-train.zip').extractall('../shared/data/cifar10')"
log "data: $(find $DATA -name '*.jpg' | wc -l) images"

# 1. Throughput probe: steps/s of the D+ regime on this GPU (conservative: includes warm-up).
python3 -m mmdeploy train --data $DATA --arch cifar_resnet20 --regime D+ --steps 400 --device cuda --out /tmp/probe.pth --overwrite --json > /tmp/probe.json 2>/tmp/probe.log || { tail -20 /tmp/probe.log; exit 1; }
STEPS=$(python3 -c "
import torch; c = torch.load('/tmp/probe.pth', weights_only=True)['mmdeploy']
rate = c['steps'] / c['wall_s']; steps = int(rate * 0.6 * $TRAIN_S) // 100 * 100
print(min(steps, 120000))")
log "probe: $(python3 -c "import torch; c=torch.load('/tmp/probe.pth', weights_only=True)['mmdeploy']; print(c['steps'], 'steps in', c['wall_s'], 's,', c['images_per_s'], 'images/s')"); both models get $STEPS steps"

# 2. The zoo: D+ mixed-size and the fixed-32 baseline, same architecture, same optimizer steps, concurrently.
MAXMIN=$(python3 -c "print(round($TRAIN_S * 1.15 / 60, 2))")
python3 -m mmdeploy train --data $DATA --arch cifar_resnet20 --regime D+ --steps $STEPS --lr 0.1 --schedule cosine --warmup-steps 500 \
  --device cuda --seed 0 --max-minutes $MAXMIN --out $OUT/cifar_resnet20_mixsize_dplus.pth --json > /tmp/mix.json 2> /tmp/mix.log &
python3 -m mmdeploy train --data $DATA --arch cifar_resnet20 --regime fixed --size 32 --steps $STEPS --lr 0.1 --schedule cosine --warmup-steps 500 \
  --device cuda --seed 0 --max-minutes $MAXMIN --out $OUT/cifar_resnet20_fixed32.pth --json > /tmp/fixed.json 2> /tmp/fixed.log &
wait
log "trained"; tail -3 /tmp/mix.log /tmp/fixed.log
python3 -c "
import json
for n in ('mix', 'fixed'):
    s = json.load(open(f'/tmp/{n}.json')); print(n, {k: s[k] for k in ('steps', 'epochs', 'images_per_s', 'wall_s', 'loss', 'train_acc', 'stopped_early')})"

# 3. GPU checks: CUDA tests, CUDA calibration equals CPU calibration, torch-on-GPU latency vs ONNX Runtime.
log "pytest gpu/trt"; python3 -m pytest -q -m "gpu or trt" tests/ -p no:cacheprovider 2>&1 | tail -4
M=$OUT/cifar_resnet20_mixsize_dplus.pth
for dev in cuda cpu; do python3 -m mmdeploy calibrate $M --size 16 --size 24 --size 32 --size 48 --data calib/train --out /tmp/b_$dev --device $dev --batches 16; done
python3 -c "
from safetensors.torch import load_file
for s in (16, 24, 32, 48):
    a, b = load_file(f'/tmp/b_cuda/sizes/{s}/weights.safetensors'), load_file(f'/tmp/b_cpu/sizes/{s}/weights.safetensors')
    d = max(((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max().clamp_min(1e-12)).item() for k in a if 'running' in k)
    print(f'size {s}: CUDA vs CPU calibration, max relative difference of BN stats {d:.2e}')"
python3 -m mmdeploy export /tmp/b_cuda --engine ort --precision fp32 --precision fp16 2>&1 | tail -2
python3 -m mmdeploy eval /tmp/b_cuda --data calib/val --engine torch --engine ort 2>&1
python3 -m mmdeploy bench /tmp/b_cuda --engine torch --engine ort --precision fp32 --precision fp16 --batch 1 --batch 32 --iters 50 2>&1
log done
cp /tmp/mix.log $OUT/mix.log; cp /tmp/fixed.log $OUT/fixed.log

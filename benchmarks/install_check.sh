#!/usr/bin/env bash
# The README's install commands, from scratch, in fresh virtual environments (a mixed onnxruntime/onnxruntime-gpu
# install, a missing extra). Not part of CI: it
# downloads and installs torch, onnxruntime and onnxruntime-gpu (several minutes on 2 cores).
#   bash benchmarks/install_check.sh [WORKDIR]     (default: a temp dir, removed at the end)
# 1. CPU: `pip install torch==2.13.0 && pip install -e .` -> onnxruntime only, CPU provider, `mmdeploy archs` works.
# 2. GPU route on a machine without CUDA: swap to onnxruntime-gpu; its CUDA provider cannot load here, and
#    `mmdeploy run` must still work, saying so in exactly one warning line.
# 3. The mixed install the swap avoids (onnxruntime installed again on top): named with its fix in one line.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1
fail() { echo "FAIL: $*"; exit 1; }
probe='from mmdeploy.engines.onnxruntime import choose_providers; print(choose_providers())'

echo "== 1. CPU install"
python3 -m venv "$work/cpu"
"$work/cpu/bin/pip" install -q torch==2.13.0
"$work/cpu/bin/pip" install -q -e "$repo"
"$work/cpu/bin/pip" list 2>/dev/null | grep -i '^onnxruntime ' || fail "onnxruntime missing from the base install"
"$work/cpu/bin/pip" list 2>/dev/null | grep -qi '^onnxruntime-gpu ' && fail "onnxruntime-gpu installed by the base install"
"$work/cpu/bin/python" -c "$probe" 2>&1 | tee "$work/cpu.txt"
grep -q "\['CPUExecutionProvider'\]" "$work/cpu.txt" || fail "CPU install does not run on the CPU provider"
"$work/cpu/bin/python" -m mmdeploy archs > /dev/null

echo "== 2. GPU route (swap), on this machine"
python3 -m venv "$work/gpu"
"$work/gpu/bin/pip" install -q torch==2.13.0
"$work/gpu/bin/pip" install -q -e "$repo"
"$work/gpu/bin/pip" uninstall -q -y onnxruntime
"$work/gpu/bin/pip" install -q onnxruntime-gpu
"$work/gpu/bin/pip" list 2>/dev/null | grep -i '^onnxruntime'
"$work/gpu/bin/python" -c "import onnxruntime as o; print('listed providers:', o.get_available_providers())"
(cd "$work" && "$work/gpu/bin/python" -m mmdeploy run > "$work/run.txt" 2> "$work/run.err") || { cat "$work/run.err"; fail "mmdeploy run failed"; }
tr -d '\n' < "$work/run.err" | grep -o "warning: ONNX Runtime runs on [^)]*)" || true
warnings=$(grep -c "^warning:" "$work/run.err" || true)
grep -q "ONNX Runtime runs on CPUExecutionProvider" "$work/run.err" || fail "no line saying ONNX Runtime fell back to the CPU"
grep -q "provider_bridge_ort\|Failed to create CUDAExecutionProvider" "$work/run.err" && fail "ONNX Runtime's native errors leaked"
[ "$warnings" -eq 1 ] || fail "expected one warning line, got $warnings"

echo "== 3. mixed install"
"$work/gpu/bin/pip" install -q onnxruntime
"$work/gpu/bin/python" -c "$probe" 2>&1 | tee "$work/mixed.txt"
grep -q "both installed" "$work/mixed.txt" || fail "mixed install not named"
echo "ALL OK"

#!/usr/bin/env bash
# Regenerate the recorded TensorRT Python API (tensorrt-<version>.json) that tests/test_tensorrt_api.py checks
# the fake `tensorrt` module against. Needs pip, gcc and network access to PyPI; no GPU, no TensorRT libraries:
# the bindings' native dependencies (libnvinfer & co.) are replaced by stand-ins whose 9 exported C entry points
# return NULL, enough for the pybind11 module to import and show its names, enum values and signatures.
#   bash tests/data/tensorrt_api/regenerate.sh [10.16.1.11 11.4.0.106]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
versions=("${@:-10.16.1.11 11.4.0.106}")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/stub.c" <<'C'
void *createInferBuilder_INTERNAL(void *a, int b) { return 0; }
void *createInferRefitter_INTERNAL(void *a, void *b, int c) { return 0; }
void *createInferRuntime_INTERNAL(void *a, int b) { return 0; }
void *getBuilderPluginRegistry(int a) { return 0; }
void *getPluginRegistry(void) { return 0; }
void *createNvOnnxParser_INTERNAL(void *a, void *b, int c) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *a, void *b, int c) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
int initLibNvInferPlugins(void *a, const char *b) { return 0; }
C
for version in ${versions[@]}; do
  major="${version%%.*}"
  cuda=$([ "$major" -ge 11 ] && echo cu13 || echo cu12)  # TensorRT 11 wheels are CUDA 13 only
  pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
      "tensorrt-${cuda}-bindings==${version}" -d "$work/$version"
  (cd "$work/$version" && python3 -m zipfile -e ./*.whl pkg)
  mkdir -p "$work/$version/lib"
  for lib in nvinfer nvonnxparser nvinfer_plugin; do
    gcc -shared -fPIC -o "$work/$version/lib/lib${lib}.so.${major}" "$work/stub.c"
  done
  LD_LIBRARY_PATH="$work/$version/lib" python3 "$here/record_tensorrt_api.py" "$work/$version/pkg" "$here/tensorrt-${version}.json"
  echo "wrote $here/tensorrt-${version}.json"
done

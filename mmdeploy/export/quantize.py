"""Per-size INT8: a QDQ ONNX from a size's fp32 ONNX, its activation ranges calibrated at that size.

Activation ranges move with the input size just as BN statistics do, so each size is
calibrated on its own, with the images that calibrated its BN: the same files, the same
seeded batches, the same decoding, normalization and (seeded) augmentation, at that size.
ONNX Runtime's own tools do the work (``quant_pre_process``, then ``quantize_static`` with
QDQ format, per-channel symmetric int8 weights). Activations depend on who runs the file:
TensorRT's explicit quantization takes only signed symmetric scales (zero point 0), so a
``trt`` export writes int8 symmetric activations; for ONNX Runtime (and OpenVINO) activations are
uint8 with a zero point, which lets the quantizer fold each ReLU into its range and puts convs on
ONNX Runtime's fast u8s8 kernels (signed symmetric QDQ ran slower than fp32 on this project's
CPU: benchmarks/bench_int8.py).

The dynamic ONNX has no INT8 form: one set of ranges cannot fit every size (that is the point
of calibrating per size), so an INT8 dynamic graph would be wrong at every size but one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmdeploy.bundle import temp_path_for
from mmdeploy.config import INT8_METHODS
from mmdeploy.data import Preprocess, decode_for_sizes, scan_image_folder, to_input
from mmdeploy.errors import MMDeployError
from mmdeploy.export.ranges import collect_ranges

# Chosen by measurement (benchmarks/bench_int8.py, both shipped models, sizes 16-48, 10,000 test images):
# see the README's INT8 section for the figures that picked it.
DEFAULT_METHOD = "percentile"
METHODS = INT8_METHODS  # named with the config schema, which offers them
DEFAULT_IMAGES = 256
INT8_PARITY_IMAGES = 64
INT8_HINT = ("this model loses too much in INT8 at that size: try --int8-method entropy or percentile, more --int8-images, "
             "or deploy it in fp32/fp16 (the gate's bounds: --min-agreement, --atol, --rtol)")


def int8_settings(method: str = DEFAULT_METHOD, images: int = DEFAULT_IMAGES, symmetric: bool = False) -> dict:
    """The recorded INT8 settings (and part of the artifact's reuse key); refuses bad values."""
    if method not in METHODS:
        raise MMDeployError(f"unknown INT8 calibration method {method!r}", f"use --int8-method {', '.join(METHODS)}")
    if images < 1:
        raise MMDeployError("--int8-images must be >= 1", f"e.g. --int8-images {DEFAULT_IMAGES}")
    import onnxruntime

    return {"method": method, "images": int(images), "format": "QDQ", "weights": "int8 per-channel symmetric",
            "activations": "int8 per-tensor symmetric" if symmetric else "uint8 per-tensor asymmetric", "onnxruntime": onnxruntime.__version__}


def calibration_batches(calibration: dict, preprocess: Preprocess, size: int, count: int) -> CalibrationBatches:
    """The first ``count`` images (rounded up to whole batches) of BN calibration at ``size``, as BN saw them.

    ``calibration`` is the size's calibration record in the manifest: folder, fingerprint,
    batch plan settings and augmentation. A folder that changed since is refused: its ranges
    would not belong to the BN statistics they sit next to. The batches are decoded when read,
    one at a time: memory does not grow with ``count``.
    """
    from mmdeploy.calib.bn import plan_batches

    root = calibration.get("data")
    if not root or not Path(root).is_dir():
        raise MMDeployError(f"the calibration images of size {size} ({root}) are gone; INT8 ranges are calibrated on them",
                            "restore the folder, or recalibrate the bundle (`mmdeploy calibrate ... --data DIR`)")
    folder = scan_image_folder(root)
    if calibration.get("data_fingerprint") and folder.fingerprint() != calibration["data_fingerprint"]:
        raise MMDeployError(f"the calibration images in {root} changed since size {size} was calibrated",
                            "recalibrate the bundle (`mmdeploy calibrate`) so BN statistics and INT8 ranges come from the same images")
    seed = int(calibration.get("seed", 0))
    plan = plan_batches(len(folder), int(calibration.get("batch_size", 64)), int(calibration.get("batches", 200)), seed)
    chosen, total = [], 0
    for index, files in enumerate(plan):
        if total >= count:
            break
        chosen.append((index, list(files)))
        total += len(files)
    return CalibrationBatches(folder, chosen, preprocess, size, seed, bool(calibration.get("augment", False)))


class CalibrationBatches(Sequence):
    """BN calibration batches at one size, decoded on each read (each file alone, so a batch is the
    same whether read alone or with the others): range collection reads them twice, holding one."""

    def __init__(self, folder, chosen: list[tuple[int, list[int]]], preprocess: Preprocess, size: int, seed: int, augment: bool):
        self.folder, self.chosen, self.preprocess, self.size, self.seed, self.augment = folder, chosen, preprocess, size, seed, augment

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def images(self) -> int:
        return sum(len(files) for _, files in self.chosen)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        from mmdeploy.calib.bn import augment_generator

        index, files = self.chosen[i]
        picks = sorted(set(files))
        images = decode_for_sizes(self.folder, picks, self.preprocess.kind, [self.size]).at(self.size)
        row = {f: r for r, f in enumerate(picks)}
        batch = images[torch.tensor([row[f] for f in files])]
        gen = augment_generator(self.seed, self.size, index) if self.augment else None
        return to_input(batch, self.size, self.preprocess, gen).numpy().astype(np.float32)


def quantize_int8(fp32_onnx: Path, dst: Path, batches: Sequence[np.ndarray], method: str = DEFAULT_METHOD, symmetric: bool = False) -> dict:
    """QDQ INT8 ONNX at ``dst`` from ``fp32_onnx``; returns the graph record (with what stayed in fp32).

    The activation ranges are collected streaming (:func:`mmdeploy.export.ranges.collect_ranges`), and handed to
    ``quantize_static`` as a calibration cache, so ONNX Runtime writes the Q/DQ graph without
    running its own calibrator (which holds every activation of every image at once).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mmdeploy.export.onnx import save_onnx, set_metadata

    prepared, quantized = temp_path_for(dst.with_suffix(".pre.onnx")), temp_path_for(dst.with_suffix(".q.onnx"))
    augmented, cache = temp_path_for(dst.with_suffix(".aug.onnx")), temp_path_for(dst.with_suffix(".ranges.json"))
    try:
        # ONNX Runtime's quantization tools print their settings to stdout: keep the CLI's output (and --json) clean.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
            ranges, collection = collect_ranges(prepared, batches, method, augmented)
            save_tensors_data(ranges, cache)
            del ranges
            quantize_static(str(prepared), str(quantized), None, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, _ORT_METHODS[method]), calibration_cache_path=str(cache),
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        proto = onnx.load(str(quantized))
        set_metadata(proto, {"mmdeploy.precision": "int8", "mmdeploy.int8_method": method, "mmdeploy.int8_symmetric": str(symmetric)})
        record = save_onnx(proto, dst)
    finally:
        for f in (prepared, quantized, augmented, cache):
            f.unlink(missing_ok=True)
            Path(str(f) + ".data").unlink(missing_ok=True)
    return {**record, **fp32_nodes(proto), "range_collection": collection}


_ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

def fp32_nodes(proto) -> dict:
    """Compute nodes that do not take a dequantized input: they run in float (the limit on INT8 speed)."""
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    compute = [n for n in proto.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    float_ops = sorted({n.op_type for n in compute if not any(produced_by.get(i) == "DequantizeLinear" for i in n.input)})
    quantized = sum(1 for n in compute if any(produced_by.get(i) == "DequantizeLinear" for i in n.input))
    return {"quantized_nodes": quantized, "float_nodes": len(compute) - quantized, "float_ops": float_ops}


def activation_scales(onnx_path: Path) -> dict[str, float]:
    """QuantizeLinear input tensor -> its scale (per-tensor activations only): what calibration chose."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    scales = {}
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1 and n.input[0] not in inits:
            scales[n.input[0]] = float(inits[n.input[1]].reshape(()))
    return scales


def int8_key_extra(calibration: dict, settings: dict) -> str:
    """What an INT8 artifact depends on besides the weights: the calibration images and the settings."""
    blob = json.dumps([calibration.get("key"), calibration.get("data_fingerprint"), settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

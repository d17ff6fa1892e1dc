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
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmdeploy.bundle import temp_path_for
from mmdeploy.config import INT8_METHODS
from mmdeploy.data import Preprocess, decode_for_sizes, scan_image_folder, to_input
from mmdeploy.errors import MMDeployError

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

    The activation ranges are collected here, streaming (``collect_ranges``), and handed to
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
# Bytes of activations one calibration run may return at once (ONNX Runtime's buffers and their numpy
# copies together): a few images at ImageNet sizes, whole batches at CIFAR sizes.
ACTIVATION_BUDGET = 1 << 30
# What else the INT8 step holds: copies of the model's bytes (session weights, the quantizer's graphs) and
# the interpreter and libraries. On the safe side: for resnet50 at 224 px RangePlan.need() says 2.1 GB where
# benchmarks/bench_int8_memory.py measured a 1.6 GB peak for the whole INT8 export.
MODEL_COPIES = 4
BASE_BYTES = 600 << 20


@dataclass(frozen=True)
class RangePlan:
    """How the activations of one INT8 calibration are collected: images per run, and the memory that takes."""

    size: int
    activation_bytes: int  # per image, every calibrated tensor (all are session outputs)
    model_bytes: int
    batch_bytes: int  # one BN calibration batch of inputs
    images_per_run: int
    available: int | None

    def need(self, images: int | None = None) -> int:
        n = self.images_per_run if images is None else images
        return BASE_BYTES + MODEL_COPIES * self.model_bytes + self.batch_bytes + 2 * n * self.activation_bytes


def plan_ranges(size: int, activation_bytes: int, model_bytes: int, batch_bytes: int, batch: int,
                available: int | None, budget: int | None = None) -> RangePlan:
    """Images per calibration run within ``budget`` and what memory allows; refuses, before any run, what cannot fit with one image."""
    from mmdeploy.models.fit import _gib

    budget = ACTIVATION_BUDGET if budget is None else budget
    fixed = RangePlan(size, activation_bytes, model_bytes, batch_bytes, 0, None).need(0)
    room = budget if available is None else min(budget, max(0, available - fixed) // 2)  # half of what is free: others need some too
    per_run = max(1, min(batch, room // max(1, 2 * activation_bytes)))
    plan = RangePlan(size, activation_bytes, model_bytes, batch_bytes, per_run, available)
    if available is not None and plan.need(1) > available:
        raise MMDeployError(
            f"INT8 calibration at size {size} needs about {_gib(plan.need(1))} of memory, one image at a time "
            f"({activation_bytes / 2**20:,.0f} MiB of activations per image, twice while ONNX Runtime hands them over, "
            f"a {model_bytes / 2**20:,.0f} MiB model), more than the {_gib(available)} free",
            "free memory (other programs), or export this size without int8; activations grow with the image area, so smaller sizes need less")
    return plan


def collect_ranges(prepared: Path, batches: Sequence[np.ndarray], method: str, augmented: Path, budget: int | None = None):
    """The activation ranges ONNX Runtime's calibrator would compute on ``batches``, collected streaming,
    and how (images per run, most images held at once, activation bytes per image).

    The model runs with every tensor to calibrate as an output (the same tensors and session
    settings as ONNX Runtime's calibrator), a few images at a time (``plan_ranges``); only
    running statistics are kept. ``minmax``: running min/max over every image (quantize_static's
    ``CalibMaxIntermediateOutputs``, which this module set to 16 before, drops each 16 runs' outputs
    unmerged in ONNX Runtime 1.32: equal below 16 BN batches, all images counted from there). ``entropy``
    and ``percentile`` need a histogram whose range is that of *all* the data (ONNX Runtime's
    chunked collection re-bins as ranges grow, so its result depends on the chunking): a first
    pass takes each tensor's range, a second fills fixed-range histograms, and ONNX Runtime's
    own code picks the thresholds from them. The counts are those of one histogram of all the
    data, so the ranges equal a single ``collect_data`` over every batch.
    """
    import onnxruntime
    from onnxruntime.quantization.calibrate import EntropyCalibrater, HistogramCalibrater, HistogramCollector, PercentileCalibrater
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from mmdeploy.models.fit import available_memory

    op_types = list(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static calibrates by default
    # The settings quantize_static's calibrator gets from an empty set of calibration options.
    calibrator = {"minmax": lambda: HistogramCalibrater(prepared, op_types, str(augmented)),
                  "entropy": lambda: EntropyCalibrater(prepared, op_types, str(augmented), symmetric=False, num_bins=128, num_quantized_bins=128),
                  "percentile": lambda: PercentileCalibrater(prepared, op_types, str(augmented), symmetric=True, num_bins=2048, percentile=99.999),
                  }[method]()
    calibrator.augment_graph()  # every tensor to calibrate becomes an output
    tensors = set(calibrator.tensors_to_calibrate)
    calibrator.model = None
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # as the calibrator runs it
    options.enable_cpu_mem_arena = False  # outputs are freed after each run, not kept in an arena
    session = onnxruntime.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs() if o.name in tensors]
    first = batches[0]
    per_image = _activation_bytes(session, outputs) or sum(a.nbytes for a in session.run(outputs, {input_name: first[:1]}))
    model_bytes = sum(f.stat().st_size for f in (Path(prepared), Path(str(prepared) + ".data")) if f.exists())
    plan = plan_ranges(int(first.shape[-1]), per_image, model_bytes, first.nbytes, len(first), available_memory("cpu"), budget)
    del first
    stats = _RangeStats(method, calibrator.symmetric if method != "minmax" else False)
    for phase in stats.phases:  # the same runs (images, order, run size) in both passes: the same activations
        for i in range(len(batches)):
            batch = batches[i]
            for start in range(0, len(batch), plan.images_per_run):
                run = batch[start:start + plan.images_per_run]
                values = session.run(outputs, {input_name: run})
                stats.held = max(stats.held, len(run))
                for name, value in zip(outputs, values):
                    stats.add(phase, name, value)
                del values
    record = {"images_per_run": plan.images_per_run, "images_held_at_most": stats.held, "activation_bytes_per_image": int(per_image)}
    if method == "minmax":
        return stats.minmax(), record
    calibrator.collector = HistogramCollector(calibrator.method, calibrator.symmetric, calibrator.num_bins, calibrator.num_quantized_bins,
                                              calibrator.percentile, calibrator.scenario)
    calibrator.collector.histogram_dict = stats.histograms()
    return calibrator.compute_data(), record


def _activation_bytes(session, names: list[str]) -> int | None:
    """Bytes per image of the named outputs, from their static shapes (None if a dimension past the batch is unknown)."""
    itemsize = {"tensor(float)": 4, "tensor(float16)": 2}
    total = 0
    for o in session.get_outputs():
        if o.name in names:
            dims = o.shape[1:]
            if o.type not in itemsize or not all(isinstance(d, int) for d in dims):
                return None
            total += itemsize[o.type] * math.prod(dims)
    return total


class _RangeStats:
    """Running per-tensor statistics, one run's outputs at a time (``held``: most images seen in one run)."""

    def __init__(self, method: str, absolute: bool):
        self.method, self.absolute, self.held = method, absolute, 0
        self.phases = ("range",) if method == "minmax" else ("range", "histogram")
        self.low, self.high, self.abs_low, self.abs_high = {}, {}, {}, {}
        self.counts, self.edges = {}, {}

    def add(self, phase: str, name: str, value: np.ndarray) -> None:
        flat = value.reshape(-1)
        if phase == "range":
            if flat.size:
                self.low[name] = _fold(np.minimum, self.low.get(name), np.nanmin(flat))
                self.high[name] = _fold(np.maximum, self.high.get(name), np.nanmax(flat))
                if self.absolute:
                    magnitude = np.absolute(flat)
                    self.abs_low[name] = _fold(np.minimum, self.abs_low.get(name), magnitude.min())
                    self.abs_high[name] = _fold(np.maximum, self.abs_high.get(name), magnitude.max())
            return
        data = np.absolute(flat) if self.absolute else flat
        counts, edges = np.histogram(data, len(self.counts[name]) if name in self.counts else self._bins(), range=self._range(name))
        if counts.sum() != data.size:  # a value outside the first pass's range (NaN, or a run that did not repeat itself) would be lost
            raise MMDeployError(f"activation {name!r} came out non-finite or different on a second identical run; its INT8 range cannot be calibrated",
                                "check the checkpoint for NaN/Inf weights, or export this size without int8")
        if name in self.counts:
            self.counts[name] += counts
        else:
            self.counts[name], self.edges[name] = counts, edges

    def _bins(self) -> int:
        return 2048 if self.method == "percentile" else 128

    def _range(self, name: str):
        """The histogram range ONNX Runtime takes from all the data at once."""
        if self.absolute:  # percentile, symmetric: |x| over [min |x|, max |x|] (numpy's (0, 1) for no values)
            return (self.abs_low[name], self.abs_high[name]) if name in self.low else (0, 1)
        threshold = self._threshold(name)
        return (-threshold, threshold)

    def _threshold(self, name: str) -> np.ndarray:
        if name not in self.low:
            return np.array(0, dtype=np.float32)
        low, high = self.low[name], self.high[name]
        return np.array(max(abs(low), abs(high)), dtype=low.dtype)

    def minmax(self):
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

        # ONNX Runtime's MinMax ranges are 1-element arrays (a reduced, reshaped tensor).
        return TensorsData(CalibrationMethod.MinMax, {n: (np.array([self.low[n]]), np.array([self.high[n]])) for n in self.low})

    def histograms(self) -> dict:
        out = {}
        for name, counts in self.counts.items():
            edges = self.edges[name]
            if name not in self.low:
                low = high = np.array(0, dtype=np.float32)
            else:
                low, high = self.low[name], self.high[name]
            out[name] = (counts, edges, low, high) if self.absolute else (counts, edges, low, high, self._threshold(name))
        return out


def _fold(op, old, new):
    return new if old is None else op(old, new)


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

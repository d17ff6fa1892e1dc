"""Streaming collection of INT8 activation ranges: what ONNX Runtime's calibrator computes, a few images at a time.

ONNX Runtime's own calibrator holds every activation of every calibration image at once (about 110 MB per image for
a ResNet-50 at 160 px); here the model runs with every tensor to calibrate as an output, a planned number of images per
run (:func:`plan_ranges`: within a budget and what memory allows, refused before any run when one image cannot fit),
and only running statistics are kept (:class:`RangeStats`). :mod:`mmdeploy.export.quantize` hands the result to
``quantize_static`` as a calibration cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmdeploy.errors import MMDeployError

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
    from mmdeploy.models.fit import gib

    budget = ACTIVATION_BUDGET if budget is None else budget
    fixed = RangePlan(size, activation_bytes, model_bytes, batch_bytes, 0, None).need(0)
    room = budget if available is None else min(budget, max(0, available - fixed) // 2)  # half of what is free: others need some too
    per_run = max(1, min(batch, room // max(1, 2 * activation_bytes)))
    plan = RangePlan(size, activation_bytes, model_bytes, batch_bytes, per_run, available)
    if available is not None and plan.need(1) > available:
        raise MMDeployError(
            f"INT8 calibration at size {size} needs about {gib(plan.need(1))} of memory, one image at a time "
            f"({activation_bytes / 2**20:,.0f} MiB of activations per image, twice while ONNX Runtime hands them over, "
            f"a {model_bytes / 2**20:,.0f} MiB model), more than the {gib(available)} free",
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
    stats = RangeStats(method, calibrator.symmetric if method != "minmax" else False)
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


class RangeStats:
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

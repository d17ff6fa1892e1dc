"""torch -> ONNX with the dynamo exporter: one dynamic (N, H, W) file, and one per size.

The per-size file has that size's calibrated BN statistics, folded into the convolutions by
the exporter's optimizer (the graph has no BatchNormalization left; checked and recorded),
and fixed H/W. Each file is self-contained (no external-data sidecar), passes
``onnx.checker`` with ``full_check``, and carries metadata: size, calibration record,
source checkpoint hash, mmdeploy version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path

import torch

from mmdeploy.bundle import temp_path_for
from mmdeploy.engines.tensor_names import BATCH_DIM, HEIGHT_DIM, INPUT_NAME, OUTPUT_NAME, WIDTH_DIM
from mmdeploy.errors import MMDeployError

OPSET = 20
_BAKE_HINT = ("operations that turn a tensor's size into a constant at export time (pooling whose kernel comes from x.size(), "
              "fixed-size adaptive pooling) bake the example's size into the graph; use x.mean((2, 3)) or AdaptiveAvgPool2d(1)")
# The size-baked export is refused; the per-size files (each fixed at its own size) do not need the dynamic one.
NO_DYNAMIC_HINT = "or pass --no-dynamic to export only the per-size files (each at its own fixed size)"
_STATIC_CAUSE = ("the forward likely turns the input's size into a Python int (int(x.shape[3]), x.size()[2:] used as a pooling kernel, "
                 "an adaptive pooling size computed from the shape), which the exporter bakes in")


def export_onnx(
    model: torch.nn.Module,
    path: Path,
    size: int,
    dynamic_hw: bool,
    dynamic_batch: bool = True,
    example_batch: int = 2,
    metadata: dict | None = None,
    min_size: int = 4,
) -> dict:
    """Export ``model`` (eval mode) to ``path`` atomically; returns a record of the graph."""
    from torch.export import Dim

    model = model.eval()
    example = torch.randn(example_batch, 3, size, size)
    dims = {}
    if dynamic_batch:
        dims[0] = Dim(BATCH_DIM, min=1, max=65536)
    if dynamic_hw:
        dims[2] = Dim(HEIGHT_DIM, min=min_size, max=8192)
        dims[3] = Dim(WIDTH_DIM, min=min_size, max=8192)
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, dynamic_shapes=(dims,), input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], opset_version=OPSET, optimize=True, verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; all mean "this model does not export"
            root = exc
            while root.__cause__ is not None:
                root = root.__cause__
            text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(root).split()))[:240]
            hint = f"{_BAKE_HINT}; {NO_DYNAMIC_HINT}" if dynamic_hw else _BAKE_HINT
            raise MMDeployError(f"torch.onnx.export failed at size {size} (dynamic H/W: {dynamic_hw}): {type(root).__name__}: {text}", hint) from None
    proto = program.model_proto
    check_input_dims(proto, size, dynamic_batch=dynamic_batch, dynamic_hw=dynamic_hw)
    set_metadata(proto, metadata or {})
    return save_onnx(proto, path)


def check_input_dims(proto, size: int, dynamic_batch: bool, dynamic_hw: bool) -> None:
    """Refuse a graph whose input dims asked to be dynamic came out fixed (the exporter specialized them silently).

    The dynamo exporter may fall back to a static trace when the model's code reads a size as a Python
    int; the file then only runs at the example's size, which the parity gate would find later, and only as an
    ONNX Runtime crash. Checked here, before anything is written.
    """
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    wanted = ([0] if dynamic_batch else []) + ([2, 3] if dynamic_hw else [])
    fixed = [i for i in wanted if i >= len(dims) or not dims[i].dim_param]
    if not fixed:
        return
    shown = "x".join(str(d.dim_param or d.dim_value) for d in dims)
    names = ", ".join({0: "batch", 2: "height", 3: "width"}[i] for i in fixed)
    cause = _STATIC_CAUSE if (2 in fixed or 3 in fixed) else "the forward likely reads the batch size as a Python int"
    raise MMDeployError(f"the dynamic ONNX export came out static: input {INPUT_NAME!r} is {shown} (fixed {names}) after exporting at size {size}; {cause}",
                        "read sizes as tensors (x.mean((2, 3)), AdaptiveAvgPool2d(1), F.adaptive_avg_pool2d(x, 1)) instead of Python ints"
                        + (f", {NO_DYNAMIC_HINT}" if dynamic_hw and (2 in fixed or 3 in fixed) else ""))


def save_onnx(proto, path: Path) -> dict:
    """Check fully and write one self-contained file atomically."""
    import onnx

    tmp = temp_path_for(path)
    try:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return graph_record(path, proto)


def graph_record(path: Path, proto=None) -> dict:
    """What the manifest records of a graph: node count, BN nodes left (0 = folded), size on disk."""
    import onnx

    proto = proto if proto is not None else onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    return {"nodes": len(ops), "batchnorm_nodes": ops.count("BatchNormalization"), "opset": OPSET, "bytes": path.stat().st_size}


def convert_fp16(src: Path, dst: Path) -> dict:
    """fp16 graph with fp32 inputs/outputs, by ONNX Runtime's maintained converter."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
    _topological_sort(half.graph)  # the converter appends its input casts after their consumers
    set_metadata(half, {"mmdeploy.precision": "fp16"})
    return save_onnx(half, dst)


def _topological_sort(graph) -> None:
    """Reorder nodes so each comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    remaining = list(graph.node)
    ordered = []
    while remaining:
        ready = [n for n in remaining if all(i in available for i in n.input)]
        if not ready:
            raise MMDeployError("the fp16 graph has a cycle or a dangling input", "report this model; export fp32 meanwhile")
        for n in ready:
            available.update(n.output)
        ready_ids = {id(n) for n in ready}
        ordered += ready
        remaining = [n for n in remaining if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def set_metadata(proto, metadata: dict) -> None:
    """Set (or replace) metadata_props entries; values that are not strings are stored as JSON."""
    values = {p.key: p.value for p in proto.metadata_props}
    values.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()})
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


class _quiet_exporter:
    """The exporter logs warnings (e.g. about torchvision ops) at import and export; keep the CLI quiet."""

    def __enter__(self):
        names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript", "torch._guards", "torch._dynamo",
                 "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes", "torch._subclasses")
        self.loggers = [logging.getLogger(n) for n in names]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
        return False

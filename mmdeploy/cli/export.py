"""``mmdeploy export``: ONNX (dynamic + per size), the parity gate, and engines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmdeploy.cli.app import command, console, emit_json, library_kwargs, make_progress, parse_sizes
from mmdeploy.cli.options import ArchKwargsOpt, ArchOpt, JsonOpt, NoWaitOpt, PrecisionOpt, SizesOpt, TrustOpt
from mmdeploy.cli.tables import parity_table
from mmdeploy.engines.registry import deployed_engines, describe_engines


@command
def export(
    bundle: Annotated[Path, typer.Argument(help="A bundle made by `mmdeploy calibrate`, or a checkpoint (then --size, --data and --out are needed; its own BN statistics are used at every size).")],
    engine: Annotated[str, typer.Option("--engine", "-e", help=f"onnx (the ONNX files and their gate), or the engine to build for as well, gated per precision: {describe_engines(deployed_engines())}.")] = "ort",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="With a checkpoint: the bundle folder to create.")] = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    precisions: PrecisionOpt = None,
    size: SizesOpt = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Real images for the parity gate (default: the calibration folder).")] = None,
    atol: Annotated[Optional[float], typer.Option(help="Parity gate: absolute logit tolerance (default 1e-4 fp32, 1e-2 fp16 and bf16, 0.1 int8).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Parity gate: tolerance relative to the largest logit (default 1e-3 fp32, 3e-2 fp16, 2e-2 bf16, 0.5 int8).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="Parity gate: minimum top-1 agreement (default 0.99 fp32, 0.95 fp16 and bf16, 0.9 int8).")] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic/--no-dynamic", help="Also export the dynamic (N, H, W) ONNX.")] = True,
    check_size: Annotated[Optional[int], typer.Option("--check-size", help="The size (not a deployment size) the dynamic ONNX is also checked at (default: the first your model accepts of the example size + 8 and the next multiples of 16, 32, 14, 28, 64, 56, 128: patch models need multiples).")] = None,
    static_batch: Annotated[Optional[int], typer.Option(help="Fix the batch dimension of per-size ONNX (default: dynamic batch).")] = None,
    trt_batch: Annotated[Optional[list[int]], typer.Option("--trt-batch", help="TensorRT static profile batch sizes (repeatable; default 1 and 32).")] = None,
    workspace_gb: Annotated[float, typer.Option(help="TensorRT builder workspace limit in GiB.")] = 4.0,
    int8_method: Annotated[Optional[str], typer.Option(help="int8: activation range calibration, percentile (default, measured best), minmax or entropy.")] = None,
    int8_images: Annotated[Optional[int], typer.Option(help="int8: calibration images per size, default 256 (whole BN calibration batches: the images BN saw); memory does not grow with it (ranges are collected streaming, a few images at a time).")] = None,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """Export ONNX (dynamic + one per size, BN folded), gate it against PyTorch, and build engines.

    A "dynamic" ONNX whose H/W came out fixed (a forward reading x.shape as a Python int) is refused at once;
    an engine error inside the gate fails it, naming artifact and size. Nothing is written unless all pass; int8 is
    gated and written after fp32/fp16, so an int8 failure (its gate, not enough memory) keeps the fp32/fp16 files that passed.

    Example: [bold]mmdeploy export bundle/ --engine ort --precision fp32 --precision fp16[/]
    (OpenVINO on a CPU: [bold]mmdeploy export bundle/ --engine ov --precision fp32 --precision bf16[/])
    (int8: one QDQ ONNX per size, ranges calibrated at that size: [bold]--precision int8 --int8-images 256[/])
    (or straight from a checkpoint: [bold]mmdeploy export ckpt.pth --size 32 --data calib/val --out bundle/[/])
    """
    from mmdeploy import distributed
    from mmdeploy.export.from_checkpoint import bundle_for_export
    from mmdeploy.export.parity import tolerances_for
    from mmdeploy.export.workflow import export_bundle
    from mmdeploy.models.trust import parse_arch_kwargs

    distributed.init_from_env()  # under torchrun the TensorRT builds spread over the ranks
    tolerances = tolerances_for(precisions, atol, rtol, min_agreement)
    bundle = bundle_for_export(bundle, parse_sizes(size), data, out, arch=arch, arch_kwargs=parse_arch_kwargs(arch_kwargs),
                                progress=make_progress(json_out))  # a checkpoint: a new bundle
    # --dynamic, --check-size, --static-batch, --trt-batch, --workspace-gb, --int8-*: keywords through the mapping [export] shares
    summary = export_bundle(bundle, engine, precisions, parse_sizes(size), data, tolerances, progress=make_progress(json_out),
                            **library_kwargs())
    if not distributed.is_main():
        return
    if json_out:
        return emit_json(summary)
    console.print(parity_table(summary.checks))
    console.print(f"wrote {len(summary.written)} artifacts" + (f", reused {len(summary.reused)}" if summary.reused else "")
                  + (f", TensorRT plans: {', '.join(summary.trt)}" if summary.trt else "")
                  + (f", OpenVINO engines: {', '.join(summary.ov)}" if summary.ov else "") + f" in {summary.bundle}")

"""``mmdeploy bench``: latency of every (size, engine, precision, batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmdeploy.cli.app import command, console, emit_json, err_console, library_kwargs, make_progress, parse_sizes
from mmdeploy.cli.options import ArchKwargsOpt, ArchOpt, EngineOpt, JsonOpt, NoWaitOpt, PrecisionOpt, SizesOpt, TrustOpt


@command
def bench(
    bundle: Annotated[Path, typer.Argument(help="A bundle (exported for ort/trt points).")],
    engine: EngineOpt = None,
    precision: PrecisionOpt = None,
    size: SizesOpt = None,
    batch: Annotated[Optional[list[int]], typer.Option("--batch", help="Batch size (repeatable; default 1 and 32); refused up front if it cannot fit in free memory.")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed calls per point first.")] = 10,
    iters: Annotated[int, typer.Option(help="Timed calls per point (round-robin over points).")] = 50,
    tune: Annotated[bool, typer.Option("--tune", help="First time ONNX Runtime's default session and threads 1..cores x spinning on/off, and OpenVINO's defaults, its throughput hint and threads 1..cores x one stream or one per thread (int8: f32 or the CPU's default precision), per size and batch; store the fastest in the bundle (engines then use it; a default is stored as 'default').")] = False,
    usage: Annotated[str, typer.Option("--usage", help="With --tune: how the engines will run, which decides the pattern the front runners of the first pass (and the best preset) are re-timed in, on fresh engines, before the choice. shared (default): beside other engines in one process, each call between two calls of another engine, a spinning setting counted 10% slower; stream: back-to-back requests in a process of its own, blocks of back-to-back calls; isolated: one engine per process, requests with idle gaps, each setting in turns of calls 10 ms apart after the previous setting has settled. Under stream and isolated ONNX Runtime's default session spins on after each run (about 35 ms), as it comes; under shared it stops when its run returns. The library's defaults are kept unless another setting is more than 2% faster and wins the round's paired rounds by a sign test (5%). Stored with the choice and its evidence.")] = "shared",
    noise_budget: Annotated[float, typer.Option("--noise-budget", help="Seconds to spend re-timing when the machine is busy; points still noisy are marked unreliable.")] = 30.0,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """Latency of every (size, engine, precision, batch): p50/p90/p99, mean, throughput, thread settings, interference.

    Example: [bold]mmdeploy bench bundle/ --tune --engine torch --engine ort --batch 1 --batch 32[/]
    """
    from mmdeploy.latency.tune import tune_and_bench

    # --batch, --warmup, --iters, --noise-budget: keywords through the mapping [bench] shares
    run = tune_and_bench(bundle, engine, precision, parse_sizes(size), tune=tune, usage=usage, progress=make_progress(json_out), **library_kwargs())
    if json_out:
        return emit_json(run)  # {"results", "environment", "skipped", "tuned"}
    for line in run.skipped:
        err_console.print(f"[yellow]skipped:[/] {line}")
    from mmdeploy.latency.table import latency_table

    console.print(latency_table(run.results, run.environment, run.tuned))

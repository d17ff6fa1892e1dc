"""``mmdeploy eval``: top-1/top-5 per size, engine and precision."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmdeploy.cli.app import command, console, emit_json, library_kwargs, make_progress, parse_sizes
from mmdeploy.cli.options import ArchKwargsOpt, ArchOpt, DataOpt, EngineOpt, JsonOpt, NoWaitOpt, PickleOpt, PrecisionOpt, SizesOpt, TrustOpt
from mmdeploy.cli.tables import accuracy_table


@command(name="eval")
def eval_(
    target: Annotated[Path, typer.Argument(help="A bundle folder, or a checkpoint (then --size is required).")],
    data: DataOpt = Path("calib/val"),
    size: SizesOpt = None,
    engine: EngineOpt = None,
    precision: PrecisionOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 256,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate a fixed random subset of this many images.")] = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    preprocess: Annotated[Optional[str], typer.Option(help="Checkpoint only: cifar or imagenet (a bundle uses its own).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Checkpoint only: per-channel mean, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Checkpoint only: per-channel std (finite, > 0), e.g. 0.229,0.224,0.225.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Device for the torch engine (default: cuda if available).")] = None,
    unsafe_allow_pickle: PickleOpt = False,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """Top-1/top-5 per size, before and after calibration, and of each deployed engine.

    Class folders are matched to the model's classes by name (only cat/ and dog/ score as CIFAR-10 classes 3 and 5); without recorded names, sorted folder order when the counts agree.

    Example: [bold]mmdeploy eval bundle/ --data calib/val --engine torch --engine ort[/]
    """
    from mmdeploy import distributed
    from mmdeploy.evaluate import evaluate_target

    distributed.init_from_env()
    # --batch-size, --limit, --device, --arch, --preprocess, ...: keywords through the mapping [eval] and [[model]] share
    results = evaluate_target(target, data, parse_sizes(size), engine, precision, progress=make_progress(json_out), **library_kwargs())
    if not distributed.is_main():
        return
    if json_out:
        return emit_json(results)
    console.print(accuracy_table(results))

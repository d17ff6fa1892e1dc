"""``mmdeploy calibrate``: per-size BatchNorm recalibration into a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmdeploy.cli.app import command, console, emit_json, library_kwargs, make_progress
from mmdeploy.cli.options import ArchKwargsOpt, ArchOpt, DataOpt, JsonOpt, NoWaitOpt, PickleOpt, SizesOpt, TrustOpt


@command
def calibrate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: reference-code dict, state_dict or safetensors.")],
    size: SizesOpt = None,
    data: DataOpt = Path("calib/train"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create or update.")] = Path("bundle"),
    batches: Annotated[Optional[str], typer.Option(help="Calibration batches (default 200, the reference code's count), or auto: stop once every "
                                                         "BN layer's statistics moved < 1% over the last 4 batches (16 to 200 batches; the rule and "
                                                         "the count used are recorded in the manifest; a folder of up to 1,024 images is used whole).",
                                                         show_default="200")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per calibration batch.")] = 64,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Training augmentation (random crop + flip) during calibration.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for image order and augmentation.")] = 0,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    preprocess: Annotated[Optional[str], typer.Option(help="cifar (resize whole image) or imagenet (resize S/0.875, center-crop).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std (finite, > 0), e.g. 0.229,0.224,0.225.")] = None,
    train_size: Annotated[Optional[int], typer.Option("--train-size", help="The size the checkpoint was trained at (reference point of reports).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    unsafe_allow_pickle: PickleOpt = False,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """Recalibrate BatchNorm statistics for each --size and write a bundle.

    Prints the preprocessing and training size in force; your own --arch gets ImageNet's (or its factory's
    mmdeploy_dataset) unless the flags or the checkpoint say otherwise, with a one-line warning.

    Example: [bold]mmdeploy calibrate models/cifar_resnet20_mixsize_dplus.safetensors --size 16 --size 24 --size 48 --data calib/train --out bundle/[/]
    (a timm model: [bold]mmdeploy calibrate w.pth --arch timm:create_model --arch-kwargs '{"model_name": "resnet18", "num_classes": 10}' --size 160[/])
    """
    from mmdeploy import distributed
    from mmdeploy.calib.workflow import calibrate_to_bundle

    distributed.init_from_env()
    # --batches, --seed, --arch, --mean, ...: keywords through the mapping a run config's [calibrate] and [[model]] share
    summary = calibrate_to_bundle(checkpoint, size or [], data, out, progress=make_progress(json_out), **library_kwargs())
    if not distributed.is_main():
        return
    if json_out:
        return emit_json(summary)
    console.print(f"bundle [bold]{summary.bundle}[/]: sizes {', '.join(map(str, summary.sizes))}; {summary.images} calibration images, "
                  f"{summary.bn_layers} BN layers" + (f"; reused {summary.reused}" if summary.reused else "")
                  + (f"; skipped {summary.skipped} unreadable files" if summary.skipped else ""))
    pre = summary.preprocess
    console.print(f"preprocessing {pre['kind']} (mean {','.join(f'{v:g}' for v in pre['mean'])}; std {','.join(f'{v:g}' for v in pre['std'])}), "
                  f"training size {summary.training_size}")
    if summary.convergence:
        console.print(convergence_line(summary.convergence))


def convergence_line(conv: dict) -> str:
    """How far the statistics still moved at the end, and (auto) where the stopping rule stopped."""
    change = conv.get("final_change")
    moved = (f"statistics moved {change:.2%} (worst layer {conv.get('worst_layer')}) over the last {conv['window_batches']} batches"
             if change is not None else f"too few batches ({conv['batches']}) to tell how the statistics settle")
    stop = conv.get("stopping")
    if stop:
        how = "stable" if stop["stopped_early"] else f"not below {stop['tolerance']:.0%} by the maximum"
        return f"--batches auto: {conv['batches']} batches ({conv['images']} images), {how}; {moved}"
    return f"{conv['batches']} batches ({conv['images']} images); {moved}"

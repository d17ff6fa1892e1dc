"""The ``mmdeploy`` command line. Thin: each command parses options and calls one library function."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmdeploy.errors import MMDeployError
from mmdeploy.writable import explain_disk_errors

app = typer.Typer(
    name="mmdeploy",
    help="Per-size BatchNorm calibration, ONNX/TensorRT export and accuracy/latency reports for mixed-size-trained CNNs.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

# Shared options, defined once.
SizesOpt = Annotated[Optional[list[str]], typer.Option("--size", "-s", help="Input size in pixels (repeatable).")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="ImageFolder directory: DIR/<class>/<image>.jpg.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture name (see `mmdeploy archs`) or package.module:factory (your code; a bundle made from it needs the same spec again).")]
TrustOpt = Annotated[bool, typer.Option("--trust-code-from-files", help="Let a checkpoint, sidecar or bundle name package.module:factory code to import and call. Only for files you trust; --arch SPEC allows just that one.")]
PickleOpt = Annotated[bool, typer.Option("--unsafe-allow-pickle", help="Allow arbitrary unpickling of the checkpoint. Only for files you trust.")]
EngineOpt = Annotated[Optional[list[str]], typer.Option("--engine", "-e", help="Engine: torch, ort, trt or ov (OpenVINO, CPU) (repeatable).")]
PrecisionOpt = Annotated[Optional[list[str]], typer.Option("--precision", "-p", help="fp32, fp16 (ort, trt, torch on CUDA), bf16 (ov, CPUs with native bf16) or int8 (ort, trt; per-size QDQ ONNX) (repeatable).")]
# Read by the `command` wrapper (one writer per bundle): wait for another writer, or fail at once.
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once if another mmdeploy is writing the bundle (default: wait for it).")]


def _warn_one_line(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"[yellow]warning:[/] {message}")


def command(fn=None, *, name: str | None = None):
    """Register a command whose user errors print one line with a hint and exit 1."""
    if fn is None:
        return functools.partial(command, name=name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mmdeploy.models.trust import user_code_policy

        warnings.showwarning = _warn_one_line
        try:
            from mmdeploy.bundle import lock_policy

            with lock_policy(wait=not kwargs.get("no_wait", False)), \
                    user_code_policy(kwargs.get("arch"), kwargs.get("trust_code_from_files", False)):  # what files may name
                return explain_disk_errors(fn)(*args, **kwargs)  # a full disk or read-only folder: one line, not "internal error"
        except MMDeployError as exc:
            if os.environ.get("MMDEPLOY_DEBUG") == "1":
                raise
            if _report_here(exc):
                err_console.print(f"[bold red]error:[/] {escape(exc.one_line())}", soft_wrap=True)  # may quote another rank's "[...]"
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted:[/] the bundle is left as it was before this step")
            raise typer.Exit(130) from None
        except Exception as exc:  # an unexpected failure: one line unless debugging
            if os.environ.get("MMDEPLOY_DEBUG") == "1":
                raise
            text = " ".join(str(exc).split())[:300]
            err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {text} (hint: rerun with MMDEPLOY_DEBUG=1 for the traceback and report it)", soft_wrap=True)
            raise typer.Exit(1) from None

    return app.command(name=name)(wrapper)


def _report_here(exc: MMDeployError) -> bool:
    """Under torchrun every rank raises the same error when one rank fails: rank 0 alone prints it."""
    from mmdeploy.distributed import RankFailed, is_main

    return not isinstance(exc, RankFailed) or is_main()


def _progress(json_out: bool):
    from mmdeploy.progress import RichProgress

    return RichProgress(err_console, enabled=not json_out and err_console.is_terminal)


def _emit_json(obj) -> None:
    """Strict JSON on stdout: dataclasses as objects, paths as strings, NaN/inf as null (JSON has none)."""

    def plain(o):
        if is_dataclass(o) and not isinstance(o, type):
            return plain(asdict(o))
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [plain(v) for v in o]
        if isinstance(o, Path):
            return str(o)
        if isinstance(o, float) and not math.isfinite(o):
            return None
        return o

    sys.stdout.write(json.dumps(plain(obj), indent=2, allow_nan=False) + "\n")


def _sizes(values: list[str] | None) -> list[int] | None:
    """--size values as integers; a non-integer is a user error, not a crash."""
    if not values:
        return None
    out = []
    for v in values:
        try:
            out.append(int(v))
        except ValueError:
            raise MMDeployError(f"size {v!r} is not an integer", "sizes are input sides in pixels, e.g. --size 24") from None
    return out


@command
def calibrate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: reference-code dict, state_dict or safetensors.")],
    size: SizesOpt = None,
    data: DataOpt = Path("calib/train"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create or update.")] = Path("bundle"),
    batches: Annotated[int, typer.Option(help="Calibration batches (the reference code uses 200).")] = 200,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per calibration batch.")] = 64,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Training augmentation (random crop + flip) during calibration.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for image order and augmentation.")] = 0,
    arch: ArchOpt = None,
    preprocess: Annotated[Optional[str], typer.Option(help="cifar (resize whole image) or imagenet (resize S/0.875, center-crop).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std, e.g. 0.229,0.224,0.225.")] = None,
    train_size: Annotated[Optional[int], typer.Option("--train-size", help="The size the checkpoint was trained at (reference point of reports).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    unsafe_allow_pickle: PickleOpt = False,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """Recalibrate BatchNorm statistics for each --size and write a bundle.

    Example: [bold]mmdeploy calibrate models/cifar_resnet20_mixsize_dplus.safetensors --size 16 --size 24 --size 48 --data calib/train --out bundle/[/]
    """
    from mmdeploy import distributed
    from mmdeploy.calib.workflow import calibrate_to_bundle

    distributed.init_from_env()
    summary = calibrate_to_bundle(
        checkpoint, size or [], data, out, batches=batches, batch_size=batch_size, augment=augment, seed=seed, arch=arch,
        preprocess=preprocess, mean=_floats(mean), std=_floats(std), training_size=train_size, allow_pickle=unsafe_allow_pickle,
        device=device, progress=_progress(json_out),
    )
    if not distributed.is_main():
        return
    if json_out:
        return _emit_json(summary)
    console.print(f"bundle [bold]{summary.bundle}[/]: sizes {', '.join(map(str, summary.sizes))}; {summary.images} calibration images, "
                  f"{summary.bn_layers} BN layers" + (f"; reused {summary.reused}" if summary.reused else "")
                  + (f"; skipped {summary.skipped} unreadable files" if summary.skipped else ""))


def _floats(text: str | None):
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise MMDeployError(f"{text!r} is not a comma-separated list of numbers", "e.g. --mean 0.485,0.456,0.406") from None




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
    preprocess: Annotated[Optional[str], typer.Option(help="Checkpoint only: cifar or imagenet (a bundle uses its own).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Checkpoint only: per-channel mean, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Checkpoint only: per-channel std, e.g. 0.229,0.224,0.225.")] = None,
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
    results = evaluate_target(target, data, _sizes(size), engine, precision, batch_size=batch_size, limit=limit, arch=arch,
                              allow_pickle=unsafe_allow_pickle, device=device, progress=_progress(json_out),
                              preprocess=preprocess, mean=_floats(mean), std=_floats(std))
    if not distributed.is_main():
        return
    if json_out:
        return _emit_json(results)
    console.print(accuracy_table(results))


def accuracy_table(results) -> Table:
    before = {r.size: r for r in results if not r.calibrated}
    table = Table(title="accuracy (top-1 / top-5, %)")
    for col in ("size", "engine", "precision", "top-1", "top-5", "top-1 before calib", "gain", "images"):
        table.add_column(col, justify="right" if col not in ("engine", "precision") else "left")
    for r in sorted((r for r in results if r.calibrated), key=lambda r: (r.size, r.engine, r.precision)):
        b = before.get(r.size)
        table.add_row(str(r.size), r.engine, r.precision, f"{r.top1:.2f}", f"{r.top5:.2f}", f"{b.top1:.2f}" if b else "-",
                      f"{r.top1 - b.top1:+.2f}" if b else "-", str(r.images))
    if not any(r.calibrated for r in results):
        for r in sorted(results, key=lambda r: r.size):
            table.add_row(str(r.size), r.engine, r.precision, f"{r.top1:.2f}", f"{r.top5:.2f}", "-", "-", str(r.images))
    return table


@command
def export(
    bundle: Annotated[Path, typer.Argument(help="A bundle made by `mmdeploy calibrate`, or a checkpoint (then --size, --data and --out are needed; its own BN statistics are used at every size).")],
    engine: Annotated[str, typer.Option("--engine", "-e", help="onnx (files + gate), ort (same, for ONNX Runtime), trt (also TensorRT plans) or ov (also OpenVINO engines, gated per precision: fp32, bf16).")] = "ort",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="With a checkpoint: the bundle folder to create.")] = None,
    arch: ArchOpt = None,
    precision: PrecisionOpt = None,
    size: SizesOpt = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Real images for the parity gate (default: the calibration folder).")] = None,
    atol: Annotated[Optional[float], typer.Option(help="Parity gate: absolute logit tolerance (default 1e-4 fp32, 1e-2 fp16 and bf16, 0.1 int8).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Parity gate: tolerance relative to the largest logit (default 1e-3 fp32, 3e-2 fp16, 2e-2 bf16, 0.5 int8).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="Parity gate: minimum top-1 agreement (default 0.99 fp32, 0.95 fp16 and bf16, 0.9 int8).")] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic/--no-dynamic", help="Also export the dynamic (N, H, W) ONNX.")] = True,
    static_batch: Annotated[Optional[int], typer.Option(help="Fix the batch dimension of per-size ONNX (default: dynamic batch).")] = None,
    trt_batch: Annotated[Optional[list[int]], typer.Option("--trt-batch", help="TensorRT static profile batch sizes (repeatable; default 1 and 32).")] = None,
    workspace_gb: Annotated[float, typer.Option(help="TensorRT builder workspace limit in GiB.")] = 4.0,
    int8_method: Annotated[Optional[str], typer.Option(help="int8: activation range calibration, percentile (default, measured best), minmax or entropy.")] = None,
    int8_images: Annotated[Optional[int], typer.Option(help="int8: calibration images per size, default 256 (whole BN calibration batches: the images BN saw).")] = None,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """Export ONNX (dynamic + one per size, BN folded), gate it against PyTorch, and build engines.

    A "dynamic" ONNX whose H/W came out fixed (a forward reading x.shape as a Python int) is refused at once;
    an engine error inside the gate fails it, naming artifact and size. Nothing is written unless all pass.

    Example: [bold]mmdeploy export bundle/ --engine ort --precision fp32 --precision fp16[/]
    (OpenVINO on a CPU: [bold]mmdeploy export bundle/ --engine ov --precision fp32 --precision bf16[/])
    (int8: one QDQ ONNX per size, ranges calibrated at that size: [bold]--precision int8 --int8-images 256[/])
    (or straight from a checkpoint: [bold]mmdeploy export ckpt.pth --size 32 --data calib/val --out bundle/[/])
    """
    from mmdeploy import distributed
    from mmdeploy.bundle import Bundle
    from mmdeploy.export.parity import DEFAULT_TOLERANCES, Tolerance
    from mmdeploy.export.workflow import export_bundle

    distributed.init_from_env()  # under torchrun the TensorRT builds spread over the ranks
    tolerances = {}
    for p in precision or ["fp32"]:
        base = DEFAULT_TOLERANCES.get(p, DEFAULT_TOLERANCES["fp32"])
        tolerances[p] = Tolerance(atol if atol is not None else base.atol, rtol if rtol is not None else base.rtol,
                                  min_agreement if min_agreement is not None else base.min_top1_agreement)
    if not Bundle.is_bundle(bundle) and bundle.is_file():
        from mmdeploy.calib.workflow import calibrate_to_bundle

        if out is None or not size or data is None:
            raise MMDeployError("exporting a checkpoint needs --size, --data (images for the parity gate) and --out (the bundle to create)",
                                f"e.g. mmdeploy export {bundle} --size 32 --data calib/val --out bundle/; or calibrate first")
        calibrate_to_bundle(bundle, _sizes(size), data, out, arch=arch, recalibrate=False, progress=_progress(json_out))
        bundle = out
    summary = export_bundle(bundle, engine, precision, _sizes(size), data, tolerances, dynamic=dynamic,
                            static_batch=static_batch, trt_batches=tuple(trt_batch or (1, 32)), trt_workspace_gb=workspace_gb,
                            progress=_progress(json_out), int8_method=int8_method, int8_images=int8_images)
    if not distributed.is_main():
        return
    if json_out:
        return _emit_json(summary)
    console.print(parity_table(summary.checks))
    console.print(f"wrote {len(summary.written)} artifacts" + (f", reused {len(summary.reused)}" if summary.reused else "")
                  + (f", TensorRT plans: {', '.join(summary.trt)}" if summary.trt else "")
                  + (f", OpenVINO engines: {', '.join(summary.ov)}" if summary.ov else "") + f" in {summary.bundle}")


def parity_table(checks) -> Table:
    table = Table(title="parity gate: exported engines vs PyTorch on real images")
    for col in ("artifact", "precision", "size", "batch", "max abs err", "max rel err", "top-1 agree", "result"):
        table.add_column(col, justify="left" if col in ("artifact", "precision", "result") else "right")
    for c in checks:
        table.add_row(c.artifact, c.precision, str(c.size), str(c.batch), f"{c.max_abs:.2e}", f"{c.max_rel:.2e}", f"{100 * c.top1_agreement:.1f}%",
                      "[green]pass[/]" if c.passed else "[red]FAIL[/]")
    return table


@command
def bench(
    bundle: Annotated[Path, typer.Argument(help="A bundle (exported for ort/trt points).")],
    engine: EngineOpt = None,
    precision: PrecisionOpt = None,
    size: SizesOpt = None,
    batch: Annotated[Optional[list[int]], typer.Option("--batch", help="Batch size (repeatable; default 1 and 32).")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed calls per point first.")] = 10,
    iters: Annotated[int, typer.Option(help="Timed calls per point (round-robin over points).")] = 50,
    tune: Annotated[bool, typer.Option("--tune", help="First time ONNX Runtime at threads 1..cores, spinning on/off, per size and batch; store the fastest in the bundle (engines then use it).")] = False,
    noise_budget: Annotated[float, typer.Option("--noise-budget", help="Seconds to spend re-timing when the machine is busy; points still noisy are marked unreliable.")] = 30.0,
    arch: ArchOpt = None,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """Latency of every (size, engine, precision, batch): p50/p90/p99, mean, throughput, thread settings, interference.

    Example: [bold]mmdeploy bench bundle/ --tune --engine torch --engine ort --batch 1 --batch 32[/]
    """
    from mmdeploy.bench import bench_bundle

    tuned = None
    if tune:
        from mmdeploy.tune import tune_bundle

        tuned = tune_bundle(bundle, precision, _sizes(size), batch, noise_budget_s=noise_budget, progress=_progress(json_out))
    results, env, skipped = bench_bundle(bundle, engine, precision, _sizes(size), batch, warmup, iters,
                                         progress=_progress(json_out), noise_budget_s=noise_budget)
    if json_out:
        return _emit_json({"results": results, "environment": env, "skipped": skipped, "tuned": tuned})
    for line in skipped:
        err_console.print(f"[yellow]skipped:[/] {line}")
    from mmdeploy.bench_table import latency_table

    console.print(latency_table(results, env, tuned))


@command
def report(
    bundle: Annotated[Path, typer.Argument(help="A bundle with eval and bench results.")],
    batch: Annotated[int, typer.Option("--batch", help="Which batch size's latency the front uses.")] = 1,
    reference: Annotated[Optional[str], typer.Option(help="Reference point SIZE/ENGINE/PRECISION (default: torch fp32 at the training size).")] = None,
    tolerance: Annotated[float, typer.Option(help="Iso-accuracy tolerance in top-1 points.")] = 0.5,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for report.json/csv/md and pareto.png (default: the bundle).")] = None,
    pick: Annotated[bool, typer.Option("--pick", help="Answer which point to deploy under the constraints below.")] = False,
    latency_budget: Annotated[Optional[float], typer.Option("--latency-budget", help="With --pick: p50 latency budget in ms.")] = None,
    min_accuracy: Annotated[Optional[float], typer.Option("--min-accuracy", help="With --pick: minimum top-1 in %.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="CI gate: compare with this report.json; exit 1 if a point got worse.")] = None,
    max_acc_drop: Annotated[float, typer.Option(help="CI gate: allowed top-1 drop in points.")] = 0.3,
    max_latency_regress: Annotated[str, typer.Option(help="CI gate: allowed growth of latency relative to the reference, e.g. 15%.")] = "15%",
    arch: ArchOpt = None,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """The accuracy/latency Pareto front, the speed-up at iso-accuracy, a pick, and a CI gate.

    Example: [bold]mmdeploy report bundle/ --baseline ci/baseline/report.json --max-acc-drop 0.3 --max-latency-regress 15%[/]
    """
    from mmdeploy.pareto import pick as pick_point
    from mmdeploy.report import compare_reports, format_gate, load_report, parse_fraction, render_table, report_bundle

    # Read the baseline (and check the options) before writing: the baseline may be this bundle's own report.json.
    old = load_report(baseline) if baseline else None
    regress = parse_fraction(max_latency_regress)
    rep, written = report_bundle(bundle, batch, reference, tolerance, out)
    chosen = pick_point(rep.points, latency_budget, min_accuracy) if pick or latency_budget is not None or min_accuracy is not None else None
    gate = compare_reports(rep, old, max_acc_drop, regress) if old is not None else None
    if json_out:
        _emit_json({"report": str(written["json"]), "files": {k: str(v) for k, v in written.items()}, "pick": chosen,
                    "gate": None if gate is None else {"passed": gate.passed, "findings": gate.findings}})
    else:
        console.print(render_table(rep))
        console.print("files: " + ", ".join(str(p) for p in written.values()))
        if chosen is not None:
            console.print(f"[bold]deploy:[/] size {chosen.size}, engine {chosen.engine}, {chosen.precision}: top-1 {chosen.top1:.2f}%, "
                          f"p50 {chosen.latency_ms:.3f} ms at batch {chosen.batch}")
        if gate is not None:
            console.print(format_gate(gate), markup=False)
    if gate is not None and not gate.passed:
        raise typer.Exit(1)


@command
def run(
    config: Annotated[Optional[Path], typer.Argument(help="TOML config (checkpoint(s), data, sizes, engines, thresholds, output). None: the embedded demo.")] = None,
    gate: Annotated[Optional[bool], typer.Option("--gate/--no-gate", help="Gate each model's report against its baseline (exit 1 on regression).")] = None,
    fresh: Annotated[Optional[list[str]], typer.Option("--fresh", help="Re-run this step even if reusable: eval, tune, bench or all (repeatable).")] = None,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """Calibrate, export, eval, tune, bench and report in one go; reuses unchanged steps.

    The whole config is checked first (unknown keys, types, ranges, duplicate model names), each problem on its own line. Reuse is keyed by content (image bytes, hashed once per file and cached in $MMDEPLOY_CACHE_DIR, default ~/.cache/mmdeploy).

    Example: [bold]mmdeploy run[/] (the demo: shipped models on shipped images), [bold]mmdeploy run my.toml[/], or
    [bold]mmdeploy run --fresh bench[/] (measure latency again)
    """
    from mmdeploy.pipeline import run_pipeline
    from mmdeploy.report import format_gate, render_table

    log = (lambda msg: None) if json_out else (lambda msg: err_console.print(f"[dim]{msg}[/]"))
    summary = run_pipeline(config, gate=gate, progress=_progress(json_out), log=log, fresh=fresh)
    if json_out:
        _emit_json({"models": [{"name": m.name, "bundle": m.bundle, "steps": m.steps, "files": m.files,
                                "gate": None if m.gate is None else m.gate.passed} for m in summary.models],
                    "engines": summary.engines, "skipped_engines": summary.skipped_engines,
                    "method_alone": None if summary.method_alone is None else summary.method_alone.to_dict()})
    else:
        for engine, reason in summary.skipped_engines.items():
            err_console.print(f"[yellow]engine {engine} skipped:[/] {reason}")
        for m in summary.models:
            console.print(render_table(m.report))
            console.print(f"{m.name}: steps: " + ", ".join(f"{k} {v}" for k, v in m.steps.items()))
            console.print(f"{m.name}: report: {m.files['md']}  plot: {m.files['png']}")
            if m.gate is not None:
                console.print(format_gate(m.gate), markup=False)
        if len(summary.models) > 1:
            console.print(compare_models_table(summary.models))
        if summary.method_alone is not None:
            from mmdeploy.method import describe

            console.print(describe(summary.method_alone), markup=False)
    if not summary.passed:
        raise typer.Exit(1)


def compare_models_table(models) -> Table:
    """Calibrated torch top-1 per size, side by side for each model (the paper's claim at a glance)."""
    table = Table(title="torch top-1 %: calibrated [before]")
    table.add_column("size", justify="right")
    for m in models:
        table.add_column(m.name, justify="right")
    sizes = sorted({a.size for m in models for a in m.accuracies})
    for s in sizes:
        cells = []
        for m in models:
            after = next((a.top1 for a in m.accuracies if a.size == s and a.engine == "torch" and a.precision == "fp32" and a.calibrated), None)
            before = next((a.top1 for a in m.accuracies if a.size == s and not a.calibrated), None)
            cells.append("-" if after is None else f"{after:.2f} [{before:.2f}]" if before is not None else f"{after:.2f}")
        table.add_row(str(s), *cells)
    return table


@command
def archs(json_out: JsonOpt = False):
    """List the registered architectures.

    Example: [bold]mmdeploy archs[/]
    """
    from mmdeploy.models import arch_info, list_archs

    rows = [{"name": n, "dataset": arch_info(n).dataset, "min_size": arch_info(n).min_size} for n in list_archs()]
    if json_out:
        return _emit_json(rows)
    table = Table(title="architectures")
    for col in ("name", "preprocessing", "smallest size"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["dataset"], str(r["min_size"]))
    console.print(table)


from mmdeploy.train import command as _train_command  # noqa: E402,F401  (registers `mmdeploy train`)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

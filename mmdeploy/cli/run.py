"""``mmdeploy run``: the whole pipeline from a TOML config (or the embedded demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmdeploy.cli.app import command, console, emit_json, err_console, make_progress
from mmdeploy.cli.options import JsonOpt, NoWaitOpt, TrustOpt
from mmdeploy.cli.tables import compare_models_table, deploy_line


@command
def run(
    config: Annotated[Optional[Path], typer.Argument(help="TOML config: \\[\\[model]], \\[data], and one section per step (\\[calibrate] \\[export] \\[eval] \\[bench] \\[report]) with a key for each of that command's options (bench --noise-budget is \\[bench] noise_budget_s; see the README). None: the embedded demo.")] = None,
    gate: Annotated[Optional[bool], typer.Option("--gate/--no-gate", help="Gate each model's report against its baseline (exit 1 on regression).")] = None,
    fresh: Annotated[Optional[list[str]], typer.Option("--fresh", help="Re-run this step even if reusable: eval, tune, bench or all (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder of the bundles, one per model (default: the config's out, relative to the config; the demo: ./runs/demo).")] = None,
    usage: Annotated[Optional[str], typer.Option("--usage", help="How the tuned engines will run (replaces the config's \\[bench] usage): shared (default: several engines in one process), stream (back-to-back requests, a process of its own) or isolated (one engine per process, requests with idle gaps).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="The demo reduced to a first look in about a minute: sizes 16 and 32, a few calibration batches, ONNX Runtime fp32, no tuning, a short bench.")] = False,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """Calibrate, export, eval, tune, bench and report in one go; reuses unchanged steps.

    The whole config is checked first (unknown keys, types, ranges, duplicate model names), each problem on its own line. With \\[report] pick = true (or latency_budget_ms / min_accuracy) each model's point to deploy is printed. Reuse is keyed by content (image bytes, hashed once per file and cached in $MMDEPLOY_CACHE_DIR, default ~/.cache/mmdeploy).

    Example: [bold]mmdeploy run[/] (the demo: shipped models on shipped images, bundles in ./runs/demo), [bold]mmdeploy run my.toml[/], or
    [bold]mmdeploy run --fresh bench[/] (measure latency again)
    """
    from mmdeploy.pipeline import run_pipeline
    from mmdeploy.report import format_gate, render_table

    log = (lambda msg: None) if json_out else (lambda msg: err_console.print(f"[dim]{msg}[/]"))
    summary = run_pipeline(config, gate=gate, progress=make_progress(json_out), log=log, fresh=fresh, out=out, quick=quick, usage=usage)
    if json_out:
        emit_json({"models": [{"name": m.name, "bundle": m.bundle, "steps": m.steps, "files": m.files,
                                "gate": None if m.gate is None else m.gate.passed, "pick": m.pick} for m in summary.models],
                    "engines": summary.engines, "skipped_engines": summary.skipped_engines,
                    "method_alone": None if summary.method_alone is None else summary.method_alone.to_dict()})
    else:
        for engine, reason in summary.skipped_engines.items():
            err_console.print(f"[yellow]engine {engine} skipped:[/] {reason}")
        for m in summary.models:
            console.print(render_table(m.report))
            console.print(f"{m.name}: steps: " + ", ".join(f"{k} {v}" for k, v in m.steps.items()))
            console.print(f"{m.name}: report: {m.files['md']}  plot: {m.files['png']}")
            if m.pick is not None:
                console.print(f"{m.name}: {deploy_line(m.pick)}")
            if m.gate is not None:
                console.print(format_gate(m.gate), markup=False)
        if len(summary.models) > 1:
            console.print(compare_models_table(summary.models))
        if summary.method_alone is not None:
            from mmdeploy.report.method import describe

            console.print(describe(summary.method_alone), markup=False)
    if not summary.passed:
        raise typer.Exit(1)

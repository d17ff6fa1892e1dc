"""``mmdeploy report``: the Pareto front, the speed-up at iso-accuracy, a pick and the CI gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmdeploy.cli.app import command, console, emit_json, library_kwargs
from mmdeploy.cli.options import ArchKwargsOpt, ArchOpt, JsonOpt, NoWaitOpt, TrustOpt
from mmdeploy.cli.tables import deploy_line


@command
def report(
    bundle: Annotated[Path, typer.Argument(help="A bundle with eval and bench results.")],
    batch: Annotated[int, typer.Option("--batch", help="Which batch size's latency the front uses.")] = 1,
    reference: Annotated[Optional[str], typer.Option(help="Reference point SIZE/ENGINE/PRECISION (default: torch fp32 at the training size).")] = None,
    tolerance: Annotated[float, typer.Option(help="Iso-accuracy tolerance in top-1 points (finite, >= 0).")] = 0.5,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for report.json/csv/md and pareto.png (default: the bundle).")] = None,
    pick: Annotated[bool, typer.Option("--pick", help="Answer which point to deploy under the constraints below.")] = False,
    latency_budget: Annotated[Optional[float], typer.Option("--latency-budget", help="With --pick: p50 latency budget in ms.")] = None,
    min_accuracy: Annotated[Optional[float], typer.Option("--min-accuracy", help="With --pick: minimum top-1 in %.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="CI gate: compare with this report.json; exit 1 if a point got worse.")] = None,
    max_acc_drop: Annotated[float, typer.Option(help="CI gate: allowed top-1 drop in points (finite, >= 0).")] = 0.3,
    max_latency_regress: Annotated[str, typer.Option(help="CI gate: allowed growth of latency relative to the reference, e.g. 15%.")] = "15%",
    junit: Annotated[Optional[Path], typer.Option("--junit", help="CI gate: also write its result as JUnit XML to this file, one test case per point (failed ones with their reasons).")] = None,
    undecided: Annotated[str, typer.Option("--undecided", help="CI gate: a top-1 drop inside the noise (its 95% interval straddles "
                                           "-max-acc-drop) passes with a note (pass, the default) or fails (fail). A drop decidedly "
                                           "beyond the limit always fails.")] = "pass",
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust_code_from_files: TrustOpt = False,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
):
    """The accuracy/latency Pareto front, the speed-up at iso-accuracy, a pick, and a CI gate.

    Example: [bold]mmdeploy report bundle/ --baseline ci/baseline/report.json --max-acc-drop 0.3 --max-latency-regress 15% --junit gate.xml[/]
    """
    from mmdeploy.bundle import atomic_write_bytes
    from mmdeploy.errors import MMDeployError
    from mmdeploy.report import compare_reports, format_gate, gate_junit, load_report, parse_fraction, render_table, report_bundle
    from mmdeploy.report.gate import check_gate_thresholds
    from mmdeploy.report.pareto import pick as pick_point

    if junit is not None and baseline is None:
        raise MMDeployError("--junit writes the gate's result, and there is no gate without --baseline", "add --baseline OLD/report.json")

    # Read the baseline (and check the options) before writing: the baseline may be this bundle's own report.json.
    old = load_report(baseline) if baseline else None
    regress = parse_fraction(max_latency_regress)
    check_gate_thresholds(max_acc_drop, regress, undecided)
    rep, written = report_bundle(bundle, out_dir=out, **library_kwargs())  # --batch, --reference, --tolerance, as [report] has them
    chosen = pick_point(rep.points, latency_budget, min_accuracy) if pick or latency_budget is not None or min_accuracy is not None else None
    gate = compare_reports(rep, old, max_acc_drop, regress, undecided) if old is not None else None
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(junit, gate_junit(gate, rep, old))
    if json_out:
        emit_json({"report": str(written["json"]), "files": {k: str(v) for k, v in written.items()}, "pick": chosen,
                    "gate": None if gate is None else {"passed": gate.passed, "findings": gate.findings}})
    else:
        console.print(render_table(rep))
        console.print("files: " + ", ".join(str(p) for p in written.values()))
        if chosen is not None:
            console.print(deploy_line(chosen))
        if gate is not None:
            console.print(format_gate(gate), markup=False)
    if gate is not None and not gate.passed:
        raise typer.Exit(1)

"""Rich tables the commands print: accuracy (eval), parity gate (export), models side by side (run), architectures (archs),
and the pick's one line (report, run).

The report's own table is :func:`mmdeploy.report.render_table`, next to its other renderings."""

from __future__ import annotations

from rich.table import Table


def deploy_line(chosen) -> str:
    """The point ``--pick`` (or a run config's ``[report] pick``) chose, as one line."""
    ci, check = chosen.extra.get("top1_ci"), chosen.extra.get("min_accuracy_check")
    line = (f"[bold]deploy:[/] size {chosen.size}, engine {chosen.engine}, {chosen.precision}: top-1 {chosen.top1:.2f}%"
            + (f" [{ci[0]:.2f}, {ci[1]:.2f}] on {chosen.extra.get('images')} images" if ci else "")
            + f", p50 {chosen.latency_ms:.3f} ms at batch {chosen.batch}")
    if check is not None:
        verdict = {"within": "met", "worse": "NOT met", "undecided": "undecided"}[check.verdict]
        line += f"; minimum top-1 {verdict} at 95%" + (f" (~{check.images_needed} images would decide it)" if check.images_needed else "")
    return line


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


def parity_table(checks) -> Table:
    table = Table(title="parity gate: exported engines vs PyTorch on real images")
    for col in ("artifact", "precision", "size", "batch", "max abs err", "max rel err", "top-1 agree", "result"):
        table.add_column(col, justify="left" if col in ("artifact", "precision", "result") else "right")
    for c in checks:
        table.add_row(c.artifact, c.precision, str(c.size), str(c.batch), f"{c.max_abs:.2e}", f"{c.max_rel:.2e}", f"{100 * c.top1_agreement:.1f}%",
                      "[green]pass[/]" if c.passed else "[red]FAIL[/]")
    return table


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


def archs_table(rows: list[dict]) -> Table:
    """The registered architectures (rows as ``mmdeploy archs --json`` prints them)."""
    table = Table(title="architectures")
    for col in ("name", "preprocessing", "smallest size"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["dataset"], str(r["min_size"]))
    return table

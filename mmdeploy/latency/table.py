"""The terminal table of ``mmdeploy bench``: latencies with each point's thread settings and a noise mark."""

from __future__ import annotations

from rich.table import Table

from mmdeploy.latency.trust import UNRELIABLE_MARK


def latency_table(results, env: dict, tuned=None) -> Table:
    seen = env.get("interference", {})
    caption = f"interference: {env.get('interference_summary', 'not measured')}"
    if seen.get("busy"):
        caption += f"; {UNRELIABLE_MARK} = unreliable ({'; '.join(seen.get('reasons', []))})"
    if tuned is not None:
        caption += f"\ntuned settings: {', '.join(f'{k} {p.label}' for k, p in sorted(tuned.chosen.items()))} (for usage {getattr(tuned, 'usage', '?')})"
    table = Table(title=f"latency ({env.get('gpu') or env['cpu']})", caption=caption)
    for col in ("size", "engine", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "images/s", "settings"):
        table.add_column(col, justify="left" if col in ("engine", "precision", "settings") else "right")
    for r in sorted(results, key=lambda r: (r.batch, r.size, r.engine, r.precision)):
        policy = r.policy or {}
        shape = policy.get("preset") or f"{policy.get('threads', '?')}t{' spin' if policy.get('spinning') else ''}"  # "default": no options
        settings = f"{shape}{' cpu precision' if policy.get('precision_hint') == 'cpu' else ''} ({policy.get('source', '?')})"
        table.add_row(str(r.size), r.engine, r.precision, str(r.batch), f"{r.p50_ms:.3f}" + ("" if r.reliable else f" {UNRELIABLE_MARK}"),
                      f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.mean_ms:.3f}", f"{r.throughput:,.0f}", settings)
    return table

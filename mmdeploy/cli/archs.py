"""``mmdeploy archs``: the registered architectures."""

from __future__ import annotations

from mmdeploy.cli.app import command, console, emit_json
from mmdeploy.cli.options import JsonOpt
from mmdeploy.cli.tables import archs_table


@command
def archs(json_out: JsonOpt = False):
    """List the registered architectures.

    Example: [bold]mmdeploy archs[/]
    """
    from mmdeploy.models import arch_info, list_archs

    rows = [{"name": n, "dataset": arch_info(n).dataset, "min_size": arch_info(n).min_size} for n in list_archs()]
    if json_out:
        return emit_json(rows)
    console.print(archs_table(rows))

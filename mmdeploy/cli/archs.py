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
    from mmdeploy.models import arch_facts, list_archs

    rows = [{"name": n, "dataset": arch_facts(n)[0], "min_size": arch_facts(n)[1]} for n in list_archs()]
    if json_out:
        return emit_json(rows)
    console.print(archs_table(rows))

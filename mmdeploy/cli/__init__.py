"""The ``mmdeploy`` command line. Thin: each command parses options and calls one library function.

- :mod:`~mmdeploy.cli.app`: the Typer app, the consoles, the one error handler (``command``) and shared helpers;
- :mod:`~mmdeploy.cli.options`: options shared by several commands;
- one module per command (``calibrate``, ``eval``, ``export``, ``bench``, ``report``, ``run``, ``archs``;
  ``train`` lives in :mod:`mmdeploy.train.command`); :mod:`~mmdeploy.cli.tables`: the tables they print.
"""

from __future__ import annotations

from mmdeploy.cli.app import app, command, console, emit_json, err_console, main, make_progress, parse_floats, parse_sizes
from mmdeploy.cli.options import ArchOpt, DataOpt, EngineOpt, JsonOpt, NoWaitOpt, PickleOpt, PrecisionOpt, SizesOpt, TrustOpt

# Importing a command module registers its command; this order is the order of `mmdeploy --help`.
from mmdeploy.cli import calibrate, eval, export, bench, report, run, archs  # noqa: E402,F401,I001  isort: skip
from mmdeploy.train import command as _train_command  # noqa: E402,F401,I001  (registers `mmdeploy train`)

__all__ = [
    "ArchOpt", "DataOpt", "EngineOpt", "JsonOpt", "NoWaitOpt", "PickleOpt", "PrecisionOpt", "SizesOpt", "TrustOpt",
    "app", "command", "console", "emit_json", "err_console", "main", "make_progress", "parse_floats", "parse_sizes",
]

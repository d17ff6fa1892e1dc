"""The Typer app, its consoles, the one error handler (the ``command`` decorator) and small helpers shared by every command."""

from __future__ import annotations

import contextvars
import functools
import json
import math
import os
import sys
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

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

# Lines as long as a table needs where the output is not a terminal (a CI log, a pipe, a file): rich would otherwise
# wrap at 80 columns and cut cells ("preci…"). COLUMNS, where set, still decides.
PIPE_WIDTH = 1000


def _full_width_when_piped() -> None:
    if "COLUMNS" in os.environ:
        return
    for out in (console, err_console):
        if not out.is_terminal:
            out.width = PIPE_WIDTH


def _warn_one_line(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)  # one line, whatever it quotes


# The running command's name and parsed parameters, for library_kwargs().
_invocation: contextvars.ContextVar[tuple[str, dict]] = contextvars.ContextVar("mmdeploy_invocation")


def command(fn=None, *, name: str | None = None):
    """Register a command whose user errors print one line with a hint and exit 1."""
    if fn is None:
        return functools.partial(command, name=name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mmdeploy.allocator import keep_freed_memory
        from mmdeploy.models.trust import parse_arch_kwargs, user_code_policy

        warnings.showwarning = _warn_one_line
        _full_width_when_piped()
        keep_freed_memory()  # large activations reused, not mapped and faulted in again every batch
        invocation = _invocation.set((name or fn.__name__, kwargs))
        try:
            from mmdeploy.bundle import lock_policy

            with lock_policy(wait=not kwargs.get("no_wait", False)), \
                    user_code_policy(kwargs.get("arch"), kwargs.get("trust_code_from_files", False),
                                     parse_arch_kwargs(kwargs.get("arch_kwargs")), "--trust-code-from-files was given"):  # what files may name
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
        finally:
            _invocation.reset(invocation)

    return app.command(name=name)(wrapper)


def _report_here(exc: MMDeployError) -> bool:
    """Under torchrun every rank raises the same error when one rank fails: rank 0 alone prints it."""
    from mmdeploy.distributed import RankFailed, is_main

    return not isinstance(exc, RankFailed) or is_main()


def make_progress(json_out: bool):
    """A bar on a terminal; in a pipe or CI log, a plain line every 10 s on stderr; nothing with --json."""
    from mmdeploy.progress import LineProgress, Progress, RichProgress

    if json_out:
        return Progress()
    if err_console.is_terminal:
        return RichProgress(err_console)
    return LineProgress(lambda line: err_console.print(escape(line), soft_wrap=True, highlight=False))


def emit_json(obj) -> None:
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


def parse_sizes(values: list[str] | None) -> list[int] | None:
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


def parse_floats(text: str | None):
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise MMDeployError(f"{text!r} is not a comma-separated list of numbers", "e.g. --mean 0.485,0.456,0.406") from None


def library_kwargs() -> dict:
    """The running command's flags as keywords of its library call, through the one mapping the run config uses too
    (:data:`mmdeploy.config.SCHEMA`, see :mod:`mmdeploy.flagmap`); flags not given keep the library's defaults."""
    from mmdeploy.flagmap import flag_keywords

    name, values = _invocation.get()
    params = typer.main.get_command(app).commands[name].params  # typer's own parameter -> flag names
    given = {}
    for param in params:
        long = next((o for o in param.opts if o.startswith("--")), None)
        if long is not None and param.name in values:
            given[long] = values[param.name]
    from mmdeploy.models.trust import parse_arch_kwargs

    return flag_keywords(name, given, parsers={"--mean": parse_floats, "--std": parse_floats, "--arch-kwargs": parse_arch_kwargs,
                                               "--batches": int_or_auto})


def int_or_auto(text):
    """``--batches 200`` as the int 200, ``auto`` as is (the library refuses anything else in one line)."""
    text = str(text).strip()
    return int(text) if text.lstrip("-").isdigit() else text.lower()


def main() -> None:
    app()


"""Options shared by several commands, defined once (``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmdeploy.engines.registry import describe_engines

SizesOpt = Annotated[Optional[list[str]], typer.Option("--size", "-s", help="Input size in pixels (repeatable).")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="ImageFolder directory: DIR/<class>/<image>.jpg.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture name (see `mmdeploy archs`) or package.module:factory (your code; a bundle made from it needs the same spec again).")]
ArchKwargsOpt = Annotated[Optional[str], typer.Option("--arch-kwargs", help="Keyword arguments of the --arch factory as a JSON object, e.g. '{\"model_name\": \"resnet18\", \"num_classes\": 10}' for --arch timm:create_model (recorded in the bundle; a bundle made with them needs the same --arch and --arch-kwargs again).")]
TrustOpt = Annotated[bool, typer.Option("--trust-code-from-files", help="Let a checkpoint, sidecar or bundle name package.module:factory code to import and call. Only for files you trust; --arch SPEC allows just that one.")]
PickleOpt = Annotated[bool, typer.Option("--unsafe-allow-pickle", help="Allow arbitrary unpickling of the checkpoint (warns when a file needs it). Only for files you trust.")]
EngineOpt = Annotated[Optional[list[str]], typer.Option("--engine", "-e", help=f"Engine: {describe_engines()} (repeatable).")]
PrecisionOpt = Annotated[Optional[list[str]], typer.Option("--precision", "-p", help="fp32, fp16 (ort, trt, torch on CUDA), bf16 (ov, CPUs with native bf16) or int8 (ort, trt; per-size QDQ ONNX) (repeatable).")]
# Read by the `command` wrapper (one writer per bundle): wait for another writer, or fail at once.
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once if another mmdeploy is writing the bundle, or (for a writer) reading it (default: wait for it).")]

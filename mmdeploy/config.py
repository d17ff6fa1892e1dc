"""The schema of ``mmdeploy run`` configs: one table of every key with its type and range.

:data:`SCHEMA` maps each section (and top-level key) to its fields; :func:`config_problems`
checks a parsed TOML document against it and returns every problem, one line each, so a
config is refused as a whole before any work starts (a typo such as ``size = [16]`` inside
``[calibrate]`` must not silently run the defaults).

The same table is the one mapping between a config and the CLI: each field lists the command
flags it stands for (:class:`Flag`) and, where the value goes straight into the step's library
call, that call's keyword. :mod:`mmdeploy.flagmap` builds the library keywords from it for both
``mmdeploy run`` and the commands, and tests/test_flagmap.py fails when a flag has no field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmdeploy.engines.registry import PRECISIONS, deployed_engines, engine_names
from mmdeploy.errors import MMDeployError


@dataclass(frozen=True)
class Flag:
    """A command's flag that a config field stands for; ``keyword``: the argument of the command's library call
    (calibrate_to_bundle, export_bundle, evaluate_target, bench_bundle, report_bundle) that takes the value as is, None where the caller combines it."""

    command: str
    flag: str
    keyword: str | None = None


def flags(*specs: str, keyword: str | None = None) -> tuple[Flag, ...]:
    """``flags("eval --limit", keyword="limit")``: one :class:`Flag` per ``"command --flag"``."""
    return tuple(Flag(*spec.split(), keyword) for spec in specs)


@dataclass(frozen=True)
class Field:
    """One config value: its kind, bounds, allowed choices, whether it must be given, and the CLI flags it stands for."""

    kind: str  # "str", "int", "int|auto" (an int or the string "auto"), "number", "bool", "fraction", "list[int]", "list[number]", "list[str]", "table" (of plain values)
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()  # a callable: the choices of a module costly to import
    required: bool = False
    non_empty: bool = False
    maximum: float | None = None
    positive: bool = False  # strictly above 0 (a divisor, a budget)
    flags: tuple[Flag, ...] = ()

    def problems(self, value: Any, where: str) -> list[str]:
        if self.kind == "table":
            return _plain_table_problems(value, where)
        items = value if self.kind.startswith("list[") else [value]
        if self.kind.startswith("list["):
            if not isinstance(value, list):
                example = {"list[int]": "[16, 24]", "list[number]": "[0.5, 0.25]"}.get(self.kind, '["fp32"]')
                return [f"{where} must be a list of {self.kind[5:-1]}s, e.g. {example} (got {_show(value)})"]
            if self.non_empty and not value:
                return [f"{where} must not be empty"]
        out = []
        for i, item in enumerate(items):
            at = f"{where}[{i}]" if self.kind.startswith("list[") else where
            out += self._item_problems(item, at)
        return out

    def _item_problems(self, v: Any, where: str) -> list[str]:
        base = self.kind.removeprefix("list[").removesuffix("]")
        if base == "int|auto":
            if v == "auto":
                return []
            base = "int"
        if base == "str" and not isinstance(v, str):
            return [f"{where} must be a string (got {_show(v)})"]
        if base == "bool" and not isinstance(v, bool):
            return [f"{where} must be true or false (got {_show(v)})"]
        if base == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            return [f"{where} must be an integer (got {_show(v)})"]
        if base == "number" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            return [f"{where} must be a finite number (got {_show(v)})"]
        if base == "fraction":
            return _fraction_problems(v, where)
        choices = self.choices() if callable(self.choices) else self.choices
        if choices and v not in choices:
            return [f"{where} = {_show(v)} is not one of {', '.join(choices)}"]
        if self.minimum is not None and v < self.minimum:
            return [f"{where} must be >= {self.minimum:g} (got {_show(v)})"]
        if self.maximum is not None and v > self.maximum:
            return [f"{where} must be <= {self.maximum:g} (got {_show(v)})"]
        if self.positive and v <= 0:
            return [f"{where} must be > 0 (got {_show(v)})"]
        return []


def _show(v: Any) -> str:
    return repr(v) if not isinstance(v, (dict, list)) else f"{type(v).__name__} {repr(v)[:40]}"


def _plain_table_problems(v: Any, where: str) -> list[str]:
    """An inline table of plain values (strings, numbers, booleans, lists and tables of them; no dates)."""
    if not isinstance(v, dict):
        return [f"{where} must be a table, e.g. {{model_name = \"resnet18\", num_classes = 10}} (got {_show(v)})"]

    def bad(x: Any, at: str) -> list[str]:
        if isinstance(x, dict):
            return [p for k, item in x.items() for p in bad(item, f"{at}.{k}")]
        if isinstance(x, list):
            return [p for i, item in enumerate(x) for p in bad(item, f"{at}[{i}]")]
        if isinstance(x, float) and not math.isfinite(x):
            return [f"{at} must be a finite number (got {_show(x)})"]
        return [] if isinstance(x, (str, int, float, bool)) else [f"{at} must be plain data: a string, number, boolean, list or table (got {type(x).__name__})"]

    return bad(v, where)


def _fraction_problems(v: Any, where: str) -> list[str]:
    from mmdeploy.report.gate import parse_fraction  # not the report package: it reads bundles, which read this schema

    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        return [f"{where} must be a fraction such as \"15%\" or 0.15 (got {_show(v)})"]
    try:
        parse_fraction(v)
    except MMDeployError as exc:
        return [f"{where}: {exc.message}"]
    return []


@dataclass(frozen=True)
class ModelList:
    """An array of tables (``[[model]]``), each checked against ``fields``; names must be unique."""

    fields: dict[str, Field] = field(default_factory=dict)


# The int8 activation range methods export/quantize.py implements: named here, below it, because quantize.py imports
# torch and ONNX Runtime and this schema is read by every command's flags (report, the gate).
INT8_METHODS = ("minmax", "entropy", "percentile")


def _engine_choices() -> tuple[str, ...]:
    """What ``[export] engines`` takes: auto (every usable one) or a registered engine that runs exported files."""
    return ("auto", *deployed_engines())


PRECISION_CHOICES = PRECISIONS

_COMMANDS = ("calibrate", "export", "eval", "bench", "report", "run")  # each has --trust-code-from-files

SCHEMA: dict[str, Any] = {
    "out": Field("str", "folder of the bundles, one per model (out/<name>)", flags=flags("run --out")),
    "data": {
        "calibration": Field("str", "image folder for BN calibration (and the export parity gate)",
                             flags=flags("calibrate --data", "export --data")),
        "validation": Field("str", "image folder for accuracy", flags=flags("eval --data")),
    },
    "model": ModelList({
        "name": Field("str", "the bundle's folder name under out", required=True),
        "checkpoint": Field("str", "the checkpoint file", required=True),
        "baseline": Field("str", "report.json the CI gate compares with", flags=flags("report --baseline")),
        "arch": Field("str", "architecture name or module:factory",
                      flags=flags("calibrate --arch", "eval --arch", keyword="arch") + flags("export --arch", "bench --arch", "report --arch")),
        "arch_kwargs": Field("table", "keyword arguments of the arch factory, e.g. {model_name = \"resnet18\", num_classes = 10}",
                             flags=flags("calibrate --arch-kwargs", "eval --arch-kwargs", keyword="arch_kwargs")
                             + flags("export --arch-kwargs", "bench --arch-kwargs", "report --arch-kwargs")),
        "preprocess": Field("str", "cifar (resize whole image) or imagenet (resize S/0.875, center-crop)", choices=("cifar", "imagenet"),
                            flags=flags("calibrate --preprocess", "eval --preprocess", keyword="preprocess")),
        "mean": Field("list[number]", "per-channel mean, e.g. [0.485, 0.456, 0.406]", non_empty=True,
                      flags=flags("calibrate --mean", "eval --mean", keyword="mean")),
        "std": Field("list[number]", "per-channel std, e.g. [0.229, 0.224, 0.225]", non_empty=True, positive=True,
                     flags=flags("calibrate --std", "eval --std", keyword="std")),
        "train_size": Field("int", "the size the checkpoint was trained at (the reports' reference point)", minimum=1,
                            flags=flags("calibrate --train-size", keyword="training_size")),
        "unsafe_allow_pickle": Field("bool", "allow arbitrary unpickling of the checkpoint (only for files you trust)",
                                     flags=flags("calibrate --unsafe-allow-pickle", "eval --unsafe-allow-pickle", keyword="allow_pickle")),
    }),
    "calibrate": {
        "sizes": Field("list[int]", "input sizes to calibrate and deploy (every later step uses them all)", minimum=1, non_empty=True,
                       flags=flags(*(f"{c} --size" for c in ("calibrate", "export", "eval", "bench")))),
        "batches": Field("int|auto", "calibration batches, or \"auto\" (stop once stable, 16 to 200 batches); default 200", minimum=1,
                         flags=flags("calibrate --batches", keyword="batches")),
        "batch_size": Field("int", "images per calibration batch", minimum=2, flags=flags("calibrate --batch-size", keyword="batch_size")),
        "augment": Field("bool", "training augmentation while calibrating", flags=flags("calibrate --augment", keyword="augment")),
        "seed": Field("int", "seed of the batch plan and augmentation", minimum=0, flags=flags("calibrate --seed", keyword="seed")),
        "device": Field("str", "device calibrating BN: cpu or cuda (default cpu)", flags=flags("calibrate --device", keyword="device")),
    },
    "export": {
        "engines": Field("list[str]", "engines to export for (auto: all usable); eval and bench measure them and torch",
                         choices=_engine_choices, non_empty=True, flags=flags("export --engine", "eval --engine", "bench --engine")),
        "precisions": Field("list[str]", "precisions to export (each engine takes those it serves), evaluate and bench",
                            choices=PRECISION_CHOICES, non_empty=True, flags=flags("export --precision", "eval --precision", "bench --precision")),
        "int8_method": Field("str", "int8 activation range calibration (default percentile)", choices=INT8_METHODS,
                             flags=flags("export --int8-method", keyword="int8_method")),
        "int8_images": Field("int", "int8 calibration images per size (default 256)", minimum=1,
                             flags=flags("export --int8-images", keyword="int8_images")),
        # The three parity tolerances replace the defaults of every exported precision (mmdeploy.export.parity.tolerances_for).
        "atol": Field("number", "parity gate: absolute logit tolerance", minimum=0, flags=flags("export --atol")),
        "rtol": Field("number", "parity gate: tolerance relative to the largest logit", minimum=0, flags=flags("export --rtol")),
        "min_agreement": Field("number", "parity gate: minimum top-1 agreement (0-1)", minimum=0, maximum=1,
                               flags=flags("export --min-agreement")),
        "dynamic": Field("bool", "also export the dynamic (N, H, W) ONNX (default true)", flags=flags("export --dynamic", keyword="dynamic")),
        "check_size": Field("int", "the unseen size the dynamic ONNX is also checked at (default: found by trying)", minimum=1,
                            flags=flags("export --check-size", keyword="check_size")),
        "static_batch": Field("int", "fix the batch dimension of the per-size ONNX (default: dynamic batch)", minimum=1,
                              flags=flags("export --static-batch", keyword="static_batch")),
        "trt_batches": Field("list[int]", "TensorRT static profile batch sizes (default [1, 32])", minimum=1, non_empty=True,
                             flags=flags("export --trt-batch", keyword="trt_batches")),
        "workspace_gb": Field("number", "TensorRT builder workspace limit in GiB (default 4)", positive=True,
                              flags=flags("export --workspace-gb", keyword="trt_workspace_gb")),
    },
    "eval": {
        "batch_size": Field("int", "images per eval batch (default 256)", minimum=1, flags=flags("eval --batch-size", keyword="batch_size")),
        "limit": Field("int", "evaluate a fixed random subset of this many images (default: all)", minimum=1,
                       flags=flags("eval --limit", keyword="limit")),
        "device": Field("str", "device of the torch engine (default: cuda if available)", flags=flags("eval --device", keyword="device")),
    },
    "bench": {
        "batches": Field("list[int]", "batch sizes to time", minimum=1, non_empty=True, flags=flags("bench --batch", keyword="batches")),
        "warmup": Field("int", "untimed rounds first", minimum=0, flags=flags("bench --warmup", keyword="warmup")),
        "iters": Field("int", "timed rounds", minimum=1, flags=flags("bench --iters", keyword="iters")),
        "tune": Field("bool", "tune ONNX Runtime's threads and spinning before timing", flags=flags("bench --tune")),
        "usage": Field("str", "how the tuned engines will run: shared (default: several engines in one process), stream "
                       "(back-to-back requests, a process of its own) or isolated (one engine per process, requests with idle gaps)",
                       choices=("shared", "stream", "isolated"), flags=flags("bench --usage", "run --usage")),
        "noise_budget_s": Field("number", "seconds to spend re-timing a pass that saw interference", minimum=0,
                                flags=flags("bench --noise-budget", keyword="noise_budget_s")),
    },
    "compare": {
        "baseline": Field("str", "method-alone comparison: the fixed-size model's name (at its training size)"),
        "candidate": Field("str", "method-alone comparison: the mixed-size model's name (smallest size within tolerance)"),
        "engine": Field("str", "engine both points run on", choices=engine_names),
        "precision": Field("str", "precision both points run in", choices=PRECISION_CHOICES),
        "tolerance": Field("number", "top-1 points the candidate may be below the baseline", minimum=0),
    },
    "report": {
        "batch": Field("int", "batch size of the report's latency", minimum=1, flags=flags("report --batch", keyword="batch")),
        "reference": Field("str", "reference point SIZE/ENGINE/PRECISION (default: torch fp32 at the training size)",
                           flags=flags("report --reference", keyword="reference")),
        "tolerance": Field("number", "top-1 points counted as iso-accuracy", minimum=0, flags=flags("report --tolerance", keyword="tolerance")),
        "pick": Field("bool", "name the point to deploy (under latency_budget_ms and min_accuracy)", flags=flags("report --pick")),
        "latency_budget_ms": Field("number", "pick: p50 latency budget in ms", positive=True, flags=flags("report --latency-budget")),
        "min_accuracy": Field("number", "pick: minimum top-1 in %", minimum=0, maximum=100, flags=flags("report --min-accuracy")),
        "max_acc_drop": Field("number", "CI gate: top-1 points a point may lose", minimum=0, flags=flags("report --max-acc-drop")),
        "max_latency_regress": Field("fraction", "CI gate: relative latency growth allowed, e.g. \"15%\"", flags=flags("report --max-latency-regress")),
        "undecided": Field("str", "CI gate: a top-1 drop the images cannot decide passes (with a note) or fails",
                           choices=("pass", "fail"), flags=flags("report --undecided")),
        "gate": Field("bool", "compare with each model's baseline", flags=flags("run --gate")),
    },
    "trust_code_from_files": Field("bool", "let checkpoints and bundles name module:factory code (each model's own arch is always allowed)",
                                   flags=flags(*(f"{c} --trust-code-from-files" for c in _COMMANDS))),
}


def normalization_problem(name: str, value: Any) -> str:
    """The first problem of a ``mean`` or ``std`` read from anywhere (a flag, checkpoint metadata, a manifest),
    checked by the run config's own field (finite numbers; std > 0), or "". Also one value per RGB channel (or one)."""
    value = list(value) if isinstance(value, tuple) else value
    problems = SCHEMA["model"].fields[name].problems(value, name)
    if not problems and len(value) not in (1, 3):
        problems = [f"{name} has {len(value)} values (one per RGB channel, or one for all)"]
    return problems[0] if problems else ""


def config_problems(config: dict) -> list[str]:
    """Every way ``config`` (a parsed TOML document) breaks :data:`SCHEMA`, one line each."""
    problems = []
    for key, value in config.items():
        spec = SCHEMA.get(key)
        if spec is None:
            problems.append(f"unknown key {key!r} (known: {', '.join(SCHEMA)})")
        elif isinstance(spec, Field):
            problems += spec.problems(value, key)
        elif isinstance(spec, ModelList):
            problems += _model_problems(value, spec)
        elif not isinstance(value, dict):
            problems.append(f"{key} must be a table [{key}] (got {_show(value)})")
        else:
            problems += _table_problems(value, spec, key)
    return problems


def _table_problems(table: dict, spec: dict[str, Field], where: str) -> list[str]:
    problems = []
    for key, value in table.items():
        if key not in spec:
            problems.append(f"unknown key {where}.{key} (known: {', '.join(spec)})")
        else:
            problems += spec[key].problems(value, f"{where}.{key}")
    problems += [f"{where}.{k} is required" for k, f in spec.items() if f.required and k not in table]
    return problems


def _model_problems(models: Any, spec: ModelList) -> list[str]:
    if not isinstance(models, list) or not models:
        return ['model must be one or more [[model]] tables with name = "..." and checkpoint = "..."']
    problems, seen = [], set()
    for i, entry in enumerate(models):
        if not isinstance(entry, dict):
            problems.append(f"model[{i}] must be a table (got {_show(entry)})")
            continue
        problems += _table_problems(entry, spec.fields, f"model[{i}]")
        name = entry.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(f"model[{i}].name {name!r} is used twice (each model writes the bundle out/{name})")
            seen.add(name)
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                problems.append(f"model[{i}].name {name!r} must be a plain folder name")
    return problems


class ConfigError(MMDeployError):
    """A config with problems: the CLI prints one line per problem."""

    def __init__(self, path, problems: list[str]):
        super().__init__(f"config {path} has {len(problems)} problem{'s' * (len(problems) != 1)}",
                         "fix each line below; every key is in the README's config example")
        self.problems = problems
        self.path = path

    def one_line(self) -> str:
        return "\n".join([super().one_line(), *(f"  {self.path}: {p}" for p in self.problems)])


def check_config(config: dict, path) -> None:
    """Raise :class:`ConfigError` listing every problem of ``config``, before any work starts."""
    problems = config_problems(config)
    if problems:
        raise ConfigError(path, problems)

"""One mapping between `mmdeploy run` config fields, CLI flags and library keywords (mmdeploy.config.SCHEMA, mmdeploy.flagmap).

These tests fail when a command grows a flag that a run config cannot set, when a field names a flag that does not
exist, or when a command or the run passes a setting to its library call under another keyword than the table says.
"""

from __future__ import annotations

import inspect

import pytest
import typer
from conftest import STEP_FUNCTIONS, step_function

from mmdeploy.cli import app
from mmdeploy.config import config_problems
from mmdeploy.errors import MMDeployError
from mmdeploy.export.parity import DEFAULT_TOLERANCES
from mmdeploy.flagmap import SECTION_STEP, schema_flags, step_keywords

COMMANDS = ("calibrate", "export", "eval", "bench", "report", "run")

# Flags that make no sense in a run config, each with the reason. Everything else a command has must be a config field.
NOT_IN_CONFIG = {
    **{f"{c} --json": "output format of one invocation (run has its own --json)" for c in COMMANDS},
    **{f"{c} --no-wait": "how one invocation waits for the bundle's lock" for c in COMMANDS},
    "calibrate --out": "a run writes each model's bundle to out/<model name>",
    "export --out": "only with a checkpoint: a run always exports the bundle it calibrated",
    "report --out": "a run writes each report into its model's bundle",
    "run --fresh": "which reusable steps one invocation measures again",
    "run --quick": "shrinks the embedded demo; a config sets its own sizes and batches",
    "report --junit": "where one invocation writes its gate's findings as a test report",
    "bench --usage": "how one tuning's engines will be used; a run tunes for the default (shared)",
}


def _command_flags() -> dict[str, list[str]]:
    """Each command's long option names, from the command Typer builds (arguments have no "--" name)."""
    group = typer.main.get_command(app)
    out = {}
    for name in COMMANDS:
        longs = ([o for o in p.opts if o.startswith("--")] for p in group.commands[name].params)
        out[name] = [names[0] for names in longs if names]
    return out


def test_every_command_flag_is_a_config_field_and_every_field_flag_exists():
    flags = _command_flags()
    mapped = {f"{f.command} {f.flag}": f"{sec}.{key}" if sec else key for sec, key, f in schema_flags()}
    missing = [f"{c} {flag}" for c, names in flags.items() for flag in names
               if f"{c} {flag}" not in mapped and f"{c} {flag}" not in NOT_IN_CONFIG]
    assert missing == [], f"command flags without a run-config field (add one to SCHEMA, or to NOT_IN_CONFIG with a reason): {missing}"
    existing = {f"{c} {flag}" for c, names in flags.items() for flag in names}
    unknown = sorted(f"{field} -> {flag}" for flag, field in mapped.items() if flag not in existing)
    assert unknown == [], f"config fields naming flags no command has: {unknown}"
    stale = sorted(set(NOT_IN_CONFIG) - existing)
    assert stale == [], f"NOT_IN_CONFIG names flags no command has: {stale}"
    claimed = [f"{f.command} {f.flag}" for _, _, f in schema_flags()]
    assert len(claimed) == len(set(claimed)), "a flag is claimed by two config fields"


def test_every_keyword_is_a_parameter_of_the_steps_library_function():
    for sec, key, flag in schema_flags():
        if flag.keyword is None:
            continue
        assert flag.command in STEP_FUNCTIONS, f"{sec}.{key}: {flag.command} has no library function to pass {flag.keyword} to"
        params = inspect.signature(step_function(flag.command)).parameters
        assert flag.keyword in params, f"{sec}.{key} ({flag.command} {flag.flag}) maps to {flag.keyword}, not a parameter of {STEP_FUNCTIONS[flag.command]}"


# What each keyword-mapped flag is given on the command line, and what its library call must then receive.
# The same value, written as TOML would give it, is what a run config sets (see test_pipeline.py).
CLI_VALUES = {
    "calibrate --batches": (["3"], 3),
    "calibrate --batch-size": (["8"], 8),
    "calibrate --augment": ([], False),  # given as --no-augment
    "calibrate --seed": (["5"], 5),
    "calibrate --arch": (["cifar_resnet8"], "cifar_resnet8"),
    "calibrate --arch-kwargs": (['{"num_classes": 3, "widths": [8, 16]}'], {"num_classes": 3, "widths": [8, 16]}),
    "calibrate --preprocess": (["imagenet"], "imagenet"),
    "calibrate --mean": (["0.5,0.4,0.3"], [0.5, 0.4, 0.3]),
    "calibrate --std": (["0.2,0.25,0.3"], [0.2, 0.25, 0.3]),
    "calibrate --train-size": (["24"], 24),
    "calibrate --device": (["cuda"], "cuda"),
    "calibrate --unsafe-allow-pickle": ([], True),
    "export --dynamic": ([], False),  # given as --no-dynamic
    "export --static-batch": (["4"], 4),
    "export --check-size": (["40"], 40),
    "export --trt-batch": (["2", "8"], [2, 8]),
    "export --workspace-gb": (["1.5"], 1.5),
    "export --int8-method": (["minmax"], "minmax"),
    "export --int8-images": (["32"], 32),
    "eval --batch-size": (["8"], 8),
    "eval --limit": (["10"], 10),
    "eval --device": (["cpu"], "cpu"),
    "eval --arch": (["cifar_resnet8"], "cifar_resnet8"),
    "eval --arch-kwargs": (['{"model_name": "tiny"}'], {"model_name": "tiny"}),
    "eval --preprocess": (["imagenet"], "imagenet"),
    "eval --mean": (["0.5,0.4,0.3"], [0.5, 0.4, 0.3]),
    "eval --std": (["0.2,0.25,0.3"], [0.2, 0.25, 0.3]),
    "eval --unsafe-allow-pickle": ([], True),
    "bench --batch": (["2", "4"], [2, 4]),
    "bench --warmup": (["2"], 2),
    "bench --iters": (["3"], 3),
    "bench --noise-budget": (["1.5"], 1.5),
    "report --batch": (["4"], 4),
    "report --reference": (["16/ort/fp32"], "16/ort/fp32"),
    "report --tolerance": (["0.25"], 0.25),
}
NEGATED = {"calibrate --augment": "--no-augment", "export --dynamic": "--no-dynamic"}


def _record(command: str, monkeypatch) -> list[dict]:
    """Replace the command's library function by one that records its arguments by name, then stops the command."""
    real = step_function(command)
    calls: list[dict] = []

    def record(*args, **kwargs):
        calls.append(inspect.signature(real).bind(*args, **kwargs).arguments)
        raise MMDeployError("recorded", "test")

    module, name = STEP_FUNCTIONS[command].split(":")
    monkeypatch.setattr(f"{module}.{name}", record)
    return calls


@pytest.mark.parametrize("command", ["calibrate", "export", "eval", "bench", "report"])
def test_each_command_passes_its_mapped_flags_to_the_library_keyword(command, cli, monkeypatch, tmp_path):
    calls = _record(command, monkeypatch)
    mapped = {f"{f.command} {f.flag}": f.keyword for _, _, f in schema_flags() if f.command == command and f.keyword}
    assert set(mapped) <= set(CLI_VALUES), f"add a value to CLI_VALUES for {sorted(set(mapped) - set(CLI_VALUES))}"
    args: list[str] = []
    for spec in mapped:
        flag = spec.split()[1]
        values, _ = CLI_VALUES[spec]
        args += [NEGATED[spec]] if spec in NEGATED else [flag] if not values else [a for v in values for a in (flag, v)]
    target = tmp_path / "ckpt.pth" if command == "calibrate" else tmp_path
    target.touch() if command == "calibrate" else None
    result = cli(command, target, *args)
    assert "recorded" in result.stderr and len(calls) == 1, result.stderr
    got = calls[0]
    for spec, keyword in mapped.items():
        assert got.get(keyword) == CLI_VALUES[spec][1], f"{spec} reached {STEP_FUNCTIONS[command]} as {keyword}={got.get(keyword)!r}"


def test_export_tolerance_flags_replace_each_precisions_default(cli, monkeypatch, tmp_path):
    calls = _record("export", monkeypatch)
    cli("export", tmp_path, "--precision", "fp32", "--precision", "int8", "--atol", "0.5", "--min-agreement", "0.7")
    tolerances = calls[0]["tolerances"]
    assert tolerances["fp32"].atol == 0.5 and tolerances["int8"].atol == 0.5
    assert tolerances["fp32"].min_top1_agreement == 0.7 and tolerances["int8"].rtol == DEFAULT_TOLERANCES["int8"].rtol
    cli("export", tmp_path, "--precision", "fp32")
    assert calls[1]["tolerances"] is None, "no bound given: every precision keeps its default"


def test_a_config_section_gives_the_same_keywords_as_the_flags():
    for sec, key, flag in schema_flags():
        if flag.keyword and SECTION_STEP.get(sec) == flag.command:
            value = CLI_VALUES[f"{flag.command} {flag.flag}"][1]
            assert step_keywords(sec, {key: value}) == {flag.keyword: value}
    assert step_keywords("bench", {"tune": True}) == {}, "tune decides a step; it is no keyword of bench_bundle"


@pytest.mark.parametrize("toml, fragment", [
    ({"export": {"min_agreement": 1.5}}, "export.min_agreement must be <= 1"),
    ({"export": {"workspace_gb": 0}}, "export.workspace_gb must be > 0"),
    ({"export": {"trt_batches": []}}, "export.trt_batches must not be empty"),
    ({"export": {"dynamic": "no"}}, "export.dynamic must be true or false"),
    ({"eval": {"limit": 0}}, "eval.limit must be >= 1"),
    ({"eval": {"batchsize": 8}}, "unknown key eval.batchsize"),
    ({"report": {"min_accuracy": 101}}, "report.min_accuracy must be <= 100"),
    ({"report": {"latency_budget_ms": -1}}, "report.latency_budget_ms must be > 0"),
    ({"model": [{"name": "a", "checkpoint": "a.pth", "std": [0.2, 0]}]}, "model[0].std[1] must be > 0"),
    ({"model": [{"name": "a", "checkpoint": "a.pth", "mean": 0.5}]}, "model[0].mean must be a list of numbers, e.g. [0.5, 0.25]"),
    ({"model": [{"name": "a", "checkpoint": "a.pth", "preprocess": "coco"}]}, "'coco' is not one of cifar, imagenet"),
])
def test_new_config_keys_are_validated(toml, fragment):
    assert any(fragment in p for p in config_problems(toml)), config_problems(toml)

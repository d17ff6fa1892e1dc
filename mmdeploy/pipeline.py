"""``mmdeploy run``: calibrate, export, eval, bench and report in one go, from a TOML config.

With no config, the embedded demo: the shipped models in models/ (mixed-size and fixed
baseline) on the images in calib/, read from the checkout or, installed from a wheel, from the
copies it carries (mmdeploy/_demo/, see setup.py); its bundles go to ./runs/demo under the
current folder. Each step records a key of its inputs in the bundle's manifest; a step whose
key did not change is skipped, so a second run reuses everything.
Every write is atomic, so Ctrl-C leaves each bundle as its last finished step left it.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mmdeploy.bundle import Bundle, content_key
from mmdeploy.config import check_config
from mmdeploy.errors import MMDeployError
from mmdeploy.flagmap import step_keywords
from mmdeploy.progress import Progress

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEMO_CONFIG: dict = {
    "out": "runs/demo",
    "data": {"calibration": "calib/train", "validation": "calib/val"},
    "model": [
        {"name": "mixsize", "checkpoint": "models/cifar_resnet20_mixsize_dplus.pth", "baseline": "ci/baseline/mixsize/report.json"},
        {"name": "fixed32", "checkpoint": "models/cifar_resnet20_fixed32.pth", "baseline": "ci/baseline/fixed32/report.json"},
    ],
    "calibrate": {"sizes": [16, 20, 24, 28, 32, 40, 48], "batches": 200, "batch_size": 64, "augment": True, "seed": 0},
    "export": {"engines": ["auto"], "precisions": ["fp32", "bf16", "int8"]},  # each engine takes the precisions it serves; int8_method, int8_images: export defaults
    "eval": {},  # batch_size, limit, device: eval's defaults
    "bench": {"batches": [1, 32], "warmup": 5, "iters": 30, "tune": True, "noise_budget_s": 30},
    "compare": {"baseline": "fixed32", "candidate": "mixsize", "engine": "ort", "precision": "fp32", "tolerance": 0.3},
    "report": {"batch": 1, "tolerance": 0.5, "max_acc_drop": 0.3, "max_latency_regress": "100%", "undecided": "pass",
               "gate": False},
    "trust_code_from_files": False,  # let checkpoints/bundles name module:factory code (the config's own `arch` is always allowed)
}


# `mmdeploy run --quick`: the demo's whole pipeline in about a minute on 2 cores (a first look, not the demo's figures).
QUICK_DEMO: dict = {
    "calibrate": {"sizes": [16, 32], "batches": 4, "batch_size": 32},
    "export": {"engines": ["ort"], "precisions": ["fp32"]},
    "eval": {"limit": 400},
    "bench": {"batches": [1], "warmup": 2, "iters": 10, "tune": False, "noise_budget_s": 0},
}


def demo_root() -> Path:
    """The folder the demo's relative paths start from: the installed package's copies (``mmdeploy/_demo``, which
    setup.py puts into the wheel), else the checkout this package runs from (models/ and calib/ at its top level)."""
    from importlib.resources import files

    packaged = files("mmdeploy") / "_demo"
    if isinstance(packaged, Path) and (packaged / "calib").is_dir():
        return packaged
    if (PROJECT_ROOT / "models").is_dir() and (PROJECT_ROOT / "calib").is_dir():
        return PROJECT_ROOT
    raise MMDeployError("the demo's models and images are not installed with this mmdeploy (no mmdeploy/_demo/, no checkout)",
                        "install mmdeploy from its wheel or a checkout, or pass a CONFIG naming your own models and images")


@dataclass
class ModelRun:
    name: str
    bundle: Path
    report: object = None  # mmdeploy.report.Report
    files: dict = field(default_factory=dict)
    gate: object = None  # mmdeploy.report.GateResult or None
    steps: dict = field(default_factory=dict)  # step -> "ran" | "reused"
    accuracies: list = field(default_factory=list)
    pick: object = None  # mmdeploy.results.Point to deploy, when [report] asks for a pick


@dataclass
class RunSummary:
    config: dict
    models: list[ModelRun]
    engines: list[str]
    skipped_engines: dict
    method_alone: object = None  # mmdeploy.report.method.MethodAlone when the config compares two of its models

    @property
    def passed(self) -> bool:
        return all(m.gate is None or m.gate.passed for m in self.models)


def load_config(path: str | Path | None, quick: bool = False) -> tuple[dict, Path]:
    """The config merged over the demo's defaults, and the folder its relative paths start from (the config's folder).

    No config: the demo, reading its files from :func:`demo_root` and writing under the current folder; ``quick``
    shrinks it (:data:`QUICK_DEMO`)."""
    if path is None:
        config = copy.deepcopy(DEMO_CONFIG)
        for section, values in (QUICK_DEMO if quick else {}).items():
            config[section].update(values)
        config["out"] = str(Path.cwd() / config["out"])  # outputs where the command runs, never beside the installed files
        return config, demo_root()
    if quick:
        raise MMDeployError("--quick shrinks the embedded demo; a config sets its own sizes and batches", "drop --quick, or the CONFIG")
    path = Path(path)
    if not path.is_file():
        raise MMDeployError(f"config {path} does not exist", "pass a TOML file, or no argument for the demo")
    try:
        user = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MMDeployError(f"config {path} is not valid TOML ({exc})", "fix the file; see the README for an example") from None
    check_config(user, path)  # every key, type and range, before any work
    config = copy.deepcopy(DEMO_CONFIG)
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(config[key], dict):
            config[key].update(value)
        else:
            config[key] = value
    if not config.get("model"):
        raise MMDeployError(f"config {path} names no [[model]]", 'add [[model]] with name = "..." and checkpoint = "..."')
    return config, path.parent.resolve()


def _key(*parts) -> str:
    return content_key(list(parts))


def _step_done(bundle: Bundle, step: str, key: str) -> bool:
    return bundle.step_key(step) == key


def _mark(bundle_dir: Path, step: str, key: str) -> None:
    with Bundle.update(bundle_dir) as bundle:
        bundle.set_step_key(step, key)


def _excuse_unserved(gate, name: str, skipped: dict):
    """A baseline point this machine cannot serve (its engine or precision is missing here, e.g. no native bf16, or its
    INT8 was refused by the parity gate) is noted with the reason instead of failing the gate as a lost point."""
    for finding in gate.findings:
        key = finding.key
        reason = (skipped.get(key.engine) or skipped.get(f"{key.engine} {key.precision}")
                  or skipped.get(f"{name} {key.precision} at {key.size}"))
        if finding.kind == "missing-point" and reason:
            finding.kind, finding.message = "not-served-here", f"in the baseline, not served on this machine: {reason}"
    gate.passed = not gate.failures
    return gate


FRESH_STEPS = ("eval", "tune", "bench")
EVAL_RECORDS = "per-image-1"  # what eval stores besides counts: an eval from before per-image results is not reused


def _fresh_steps(fresh: list[str] | None) -> set[str]:
    """The steps ``--fresh`` names (``all``: every measuring step). calibrate and export are reused
    only when the content hashes of their inputs match, so re-running them would rewrite the same bytes."""
    steps = set()
    for step in fresh or []:
        if step == "all":
            steps.update(FRESH_STEPS)
        elif step in FRESH_STEPS:
            steps.add(step)
        else:
            raise MMDeployError(f"--fresh {step}: not a step that measures", f"use {', '.join(FRESH_STEPS)} or all (calibrate and export are "
                                "reused only when their inputs' content is unchanged)")
    return steps


def run_pipeline(config_path: str | Path | None = None, gate: bool | None = None, progress: Progress | None = None, log=print,
                 fresh: list[str] | None = None, out: str | Path | None = None, quick: bool = False, usage: str | None = None) -> RunSummary:
    """Run every step for every model of the config; ``gate`` overrides ``report.gate``; ``fresh`` steps re-run even if reusable;
    ``out`` replaces the config's ``out`` (relative to the current folder); ``quick``: the reduced demo (no config);
    ``usage`` replaces ``bench.usage`` (how the tuned engines will run, see :mod:`mmdeploy.latency.tune`)."""
    from mmdeploy.models.trust import user_code_policy

    fresh_steps = _fresh_steps(fresh)
    if quick and gate:
        raise MMDeployError("--quick measures fewer points than the gate's baseline has", "gate the full demo: mmdeploy run --gate")
    config, base = load_config(config_path, quick)
    if usage is not None:
        from mmdeploy.latency.confirm import check_usage

        check_usage(usage)
        config["bench"]["usage"] = usage
    if out is not None:
        config["out"] = str(Path(out).absolute())
    # The config is the user's own: its `arch` specs (with their `arch_kwargs`) may be imported, and it may trust files.
    with user_code_policy([(m.get("arch"), m.get("arch_kwargs")) for m in config["model"]],  # each model's own call; types checked by the schema
                          config["trust_code_from_files"], trust_origin=f"trust_code_from_files = true in {config_path or 'the run config'}"):
        return _run_models(config, base, gate, progress, log, fresh_steps)


def _run_models(config: dict, base: Path, gate: bool | None, progress: Progress | None, log, fresh_steps: set[str]) -> RunSummary:
    from mmdeploy.calib.workflow import calibrate_to_bundle
    from mmdeploy.data import scan_image_folder
    from mmdeploy.engines import available_engines
    from mmdeploy.evaluate import evaluate_target
    from mmdeploy.export.by_plan import export_by_plan
    from mmdeploy.export.plan import plan_exports
    from mmdeploy.report import compare_reports, load_report, parse_fraction, report_bundle
    from mmdeploy.report.pareto import pick

    progress = progress or Progress()
    if gate is not None:
        config["report"]["gate"] = gate
    resolve = lambda p: (base / p) if p and not Path(p).is_absolute() else Path(p) if p else None  # noqa: E731
    out = resolve(config["out"])
    calib_data, val_data = resolve(config["data"]["calibration"]), resolve(config["data"]["validation"])
    reasons = available_engines()
    # The one plan of which files each engine gets: export runs it, eval and bench measure its engines and precisions.
    plan = plan_exports(config["export"]["engines"], config["export"]["precisions"], reasons)
    engines, precisions, skipped = list(plan.engines), list(plan.precisions), plan.skipped
    val_key = scan_image_folder(val_data).fingerprint()
    c, r = config["calibrate"], config["report"]
    runs = []
    for spec in config["model"]:
        name = spec["name"]
        ckpt = resolve(spec["checkpoint"])
        if not ckpt.exists():
            raise MMDeployError(f"model {name}: checkpoint {ckpt} does not exist", "fix [[model]] checkpoint in the config")
        bundle_dir = out / name
        run = ModelRun(name, bundle_dir)
        log(f"{name}: calibrate {ckpt.name} at sizes {c['sizes']}")
        summary = calibrate_to_bundle(ckpt, c["sizes"], calib_data, bundle_dir, progress=progress,
                                      **step_keywords("calibrate", c), **step_keywords("model", spec))
        run.steps["calibrate"] = "reused" if summary.reused == summary.sizes else "ran"
        wrote = export_by_plan(name, bundle_dir, plan, calib_data, config["export"], skipped, progress, log)
        if wrote is not None:
            run.steps["export"] = "ran" if wrote else "reused"
        bundle = Bundle.open(bundle_dir)
        eval_key = _key(bundle.artifact_keys(), val_key, engines, precisions, *([config["eval"]] if config["eval"] else []),
                        EVAL_RECORDS)
        if _step_done(bundle, "eval", eval_key) and "eval" not in fresh_steps:
            run.steps["eval"] = "reused"
        else:
            log(f"{name}: eval on {val_data}")
            evaluate_target(bundle_dir, val_data, engines=["torch", *engines], precisions=precisions, progress=progress,
                            **step_keywords("eval", config["eval"]))
            _mark(bundle_dir, "eval", eval_key)
            run.steps["eval"] = "ran"
        _tune_and_bench(run, bundle_dir, engines, precisions, config["bench"], fresh_steps, progress, log)
        baseline = resolve(spec.get("baseline"))
        old = None
        if r.get("gate") and baseline is not None:
            if not baseline.exists():
                raise MMDeployError(f"model {name}: baseline {baseline} does not exist", "commit one, or set report.gate = false")
            old = load_report(baseline)  # before the report is written: the baseline may be the bundle's own report.json
        run.report, run.files = report_bundle(bundle_dir, **step_keywords("report", r))
        if r.get("pick") or r.get("latency_budget_ms") is not None or r.get("min_accuracy") is not None:
            try:
                run.pick = pick(run.report.points, r.get("latency_budget_ms"), r.get("min_accuracy"))
            except MMDeployError as exc:
                raise MMDeployError(f"model {name}: {exc.message}", exc.hint) from None
        run.accuracies = Bundle.open(bundle_dir).accuracies()
        if old is not None:
            run.gate = _excuse_unserved(compare_reports(run.report, old, float(r["max_acc_drop"]), parse_fraction(r["max_latency_regress"]),
                                                        r.get("undecided", "pass")),
                                        name, {**{e: why for e, why in reasons.items() if why}, **skipped})
        runs.append(run)
    return RunSummary(config, runs, ["torch", *engines], skipped, _method_alone(config, runs, out))


def _method_alone(config: dict, runs: list[ModelRun], out: Path):
    """The fixed baseline vs the smallest calibrated mixed-size point within tolerance, when both models are in this run.

    The demo's [compare] names its two models; a user config inherits it only if it has models of those names."""
    from mmdeploy.report.method import method_alone, write_method_alone

    spec = config.get("compare") or {}
    by_name = {r.name: r for r in runs}
    if not spec or spec.get("baseline") not in by_name or spec.get("candidate") not in by_name:
        return None
    result = method_alone(by_name[spec["baseline"]].bundle, by_name[spec["candidate"]].bundle, spec["baseline"], spec["candidate"],
                          spec.get("engine", "ort"), spec.get("precision", "fp32"), float(spec.get("tolerance", 0.3)))
    write_method_alone(result, out)
    return result


def _tune_and_bench(run: ModelRun, bundle_dir: Path, engines: list[str], precisions: list[str], b: dict, fresh: set[str], progress,
                    log) -> None:
    """Tune ONNX Runtime's and OpenVINO's settings, then bench. A bench is reused only when taken on this machine (host, CPU,
    cores, library versions), with the same thread policies and settings, and on a quiet machine."""
    from mmdeploy.engines.registry import engine_spec
    from mmdeploy.latency.bench import bench_bundle
    from mmdeploy.latency.threads import torch_policy
    from mmdeploy.latency.tune import TUNE_METHOD, machine_fingerprint, tune_bundle

    machine = machine_fingerprint()
    bundle = Bundle.open(bundle_dir)
    tunable = tuple(e for e in engines if engine_spec(e).tunable)
    if b.get("tune", True) and tunable:
        usage = b.get("usage", "shared")
        tune_key = _key(bundle.artifact_keys(), machine, b["batches"], precisions, TUNE_METHOD, usage)
        if _step_done(bundle, "tune", tune_key) and "tune" not in fresh:
            run.steps["tune"] = "reused"
        else:
            log(f"{run.name}: tune engine settings (ort threads x spinning, ov threads x streams), batches {b['batches']}, usage {usage}")
            tuned = tune_bundle(bundle_dir, precisions, batches=b["batches"], progress=progress, engines=tunable, usage=usage)
            if tuned.busy:
                log(f"{run.name}: tuning saw a busy machine ({tuned.interference}); its choice may not be the quiet machine's best")
            _mark(bundle_dir, "tune", tune_key)
            run.steps["tune"] = "ran"
        bundle = Bundle.open(bundle_dir)
    settings = bundle.engine_settings
    bench_key = _key(bundle.artifact_keys(), machine, torch_policy().to_dict(), {k: v for k, v in settings.items() if k != "evidence"}, b)
    reliable = all(lat.reliable for lat in bundle.latencies())
    if _step_done(bundle, "bench", bench_key) and reliable and "bench" not in fresh:
        run.steps["bench"] = "reused"
        return
    if _step_done(bundle, "bench", bench_key) and not reliable and "bench" not in fresh:
        log(f"{run.name}: the stored bench was taken on a busy machine: measuring again")
    log(f"{run.name}: bench batches {b['batches']}")
    bench_bundle(bundle_dir, ["torch", *engines], precisions, progress=progress, **step_keywords("bench", b))
    _mark(bundle_dir, "bench", bench_key)
    run.steps["bench"] = "ran"

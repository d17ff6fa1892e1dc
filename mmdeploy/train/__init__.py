"""``mmdeploy train``: MixSize training (Hoffer et al. 2019) that writes reference-format checkpoints.

- :mod:`~mmdeploy.train.regime`: size distributions and each size's batch / duplicates (D+, B+, fixed);
- :mod:`~mmdeploy.train.sampler`: the per-epoch plan of steps (disjoint parts, one size per step);
- :mod:`~mmdeploy.train.trainer`: the loop (``train_model``) and its results;
- :mod:`~mmdeploy.train.optim`: gradient smoothing, weight-decay groups, the learning-rate schedule;
- :mod:`~mmdeploy.train.batches`: training and validation batches made on the device;
- :mod:`~mmdeploy.train.monitor`: what a run reports while it runs (epoch records, the monitor interface), without torch;
- :mod:`~mmdeploy.train.checkpoint_io`: writing checkpoints and reading one back to resume;
- :mod:`~mmdeploy.train.options`: the options in groups (``TrainOptions`` and its parts) and their checks before any work;
- :mod:`~mmdeploy.train.command`: the Typer command (imported by ``mmdeploy.cli``).
"""

import importlib

# Where each public name lives. Loaded on first use (PEP 562), so that importing ``mmdeploy.train.command`` (which every
# CLI start-up does, to register ``mmdeploy train``) does not import torch through the loop's modules.
_HOME = {
    "GradSmoother": "optim",
    "Regime": "regime", "SizeConfig": "regime", "make_regime": "regime", "mixsize_config": "regime", "parse_sizes": "regime",
    "Step": "sampler", "epoch_steps": "sampler", "steps_per_epoch": "sampler",
    "TrainSummary": "trainer", "train_model": "trainer",
    "TrainOptions": "options", "RegimeOptions": "options", "OptimOptions": "options", "StopOptions": "options", "RunOptions": "options",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = [
    "GradSmoother",
    "OptimOptions",
    "Regime",
    "RegimeOptions",
    "RunOptions",
    "SizeConfig",
    "Step",
    "StopOptions",
    "TrainOptions",
    "TrainSummary",
    "epoch_steps",
    "make_regime",
    "mixsize_config",
    "parse_sizes",
    "steps_per_epoch",
    "train_model",
]

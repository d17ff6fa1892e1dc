"""``mmdeploy train``: MixSize training (Hoffer et al. 2019) that writes reference-format checkpoints.

- :mod:`~mmdeploy.train.regime`: size distributions and each size's batch / duplicates (D+, B+, fixed);
- :mod:`~mmdeploy.train.sampler`: the per-epoch plan of steps (disjoint parts, one size per step);
- :mod:`~mmdeploy.train.trainer`: the loop, gradient smoothing, checkpoints;
- :mod:`~mmdeploy.train.command`: the Typer command (imported by ``mmdeploy.cli``).
"""

from mmdeploy.train.regime import Regime, SizeConfig, make_regime, mixsize_config, parse_sizes
from mmdeploy.train.sampler import Step, epoch_steps, steps_per_epoch
from mmdeploy.train.trainer import GradSmoother, TrainSummary, train_model

__all__ = [
    "GradSmoother",
    "Regime",
    "SizeConfig",
    "Step",
    "TrainSummary",
    "epoch_steps",
    "make_regime",
    "mixsize_config",
    "parse_sizes",
    "steps_per_epoch",
    "train_model",
]

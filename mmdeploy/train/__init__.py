"""``mmdeploy train``: MixSize training (Hoffer et al. 2019) that writes reference-format checkpoints.

- :mod:`~mmdeploy.train.regime`: size distributions and each size's batch / duplicates (D+, B+, fixed);
- :mod:`~mmdeploy.train.sampler`: the per-epoch plan of steps (disjoint parts, one size per step);
- :mod:`~mmdeploy.train.trainer`: the loop (``train_model``) and its results;
- :mod:`~mmdeploy.train.optim`: gradient smoothing, weight-decay groups, the learning-rate schedule;
- :mod:`~mmdeploy.train.batches`: training and validation batches made on the device;
- :mod:`~mmdeploy.train.checkpoint_io`: writing checkpoints and reading one back to resume;
- :mod:`~mmdeploy.train.options`: option checks before any work;
- :mod:`~mmdeploy.train.command`: the Typer command (imported by ``mmdeploy.cli``).
"""

from mmdeploy.train.optim import GradSmoother
from mmdeploy.train.regime import Regime, SizeConfig, make_regime, mixsize_config, parse_sizes
from mmdeploy.train.sampler import Step, epoch_steps, steps_per_epoch
from mmdeploy.train.trainer import TrainSummary, train_model

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

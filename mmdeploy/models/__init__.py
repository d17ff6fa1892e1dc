"""Architecture registry and checkpoint I/O."""

from mmdeploy.models import mobilenet, resnet  # noqa: F401  (registers the architectures)
from mmdeploy.models.checkpoint import LoadedCheckpoint, load_checkpoint
from mmdeploy.models.registry import arch_info, create_model, list_archs, register

__all__ = ["LoadedCheckpoint", "arch_info", "create_model", "list_archs", "load_checkpoint", "register"]

"""Architecture registry and checkpoint I/O.

Importing this package does not import torch (the CLI's start-up and the trust checks import it): the built-in
architectures' modules load when a factory is first needed, and checkpoint I/O when first used (PEP 562).
"""

from mmdeploy.models.registry import arch_facts, arch_info, create_model, list_archs, register


def __getattr__(name: str):
    if name in ("LoadedCheckpoint", "load_checkpoint"):
        from mmdeploy.models import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LoadedCheckpoint", "arch_facts", "arch_info", "create_model", "list_archs", "load_checkpoint", "register"]

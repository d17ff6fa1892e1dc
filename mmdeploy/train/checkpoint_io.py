"""Training checkpoints: writing them (the reference code's dict plus an ``mmdeploy`` section, and a
safetensors copy of the weights) and reading one back to resume a run.

The format is what ``mmdeploy train --resume`` and every other mmdeploy command read: a dict that
``torch.load(..., weights_only=True)`` accepts (tensors, numbers, strings, lists, dicts only).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import torch

from mmdeploy.bundle import atomic_write_bytes, save_safetensors
from mmdeploy.errors import MMDeployError
from mmdeploy.models.trust import canonical_kwargs
from mmdeploy.train.regime import Regime


def reference_model_config(arch: str, num_classes: int, regime: Regime) -> tuple[str, dict]:
    """The reference code's ``model`` name and ``--model-config`` dict for ``arch``."""
    m = re.fullmatch(r"cifar_resnet(\d+)", arch)
    if m:
        dataset = "cifar100" if num_classes == 100 else "cifar10"  # the reference code's dataset names for CIFAR ResNets
        return "resnet", {"depth": int(m.group(1)), "dataset": dataset, "regime": regime.reference_name}
    m = re.fullmatch(r"resnet(\d+)", arch)
    if m:
        return "resnet", {"depth": int(m.group(1)), "dataset": "imagenet", "regime": regime.reference_name}
    return arch, {"regime": regime.reference_name}


def cpu_state(state: dict) -> dict:
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone() for k, v in state.items()}


def cpu_tree(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", memory_format=torch.contiguous_format).clone()
    if isinstance(obj, dict):
        return {k: cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [cpu_tree(v) for v in obj]
    return obj


def save_training_checkpoint(path: Path, ckpt: dict) -> Path:
    """Write the reference dict (torch.save, readable with weights_only=True) and a safetensors
    copy of the weights beside it, each atomically. Returns the safetensors path."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())
    weights = path.with_suffix(".safetensors")
    meta = {
        "arch": ckpt["mmdeploy"]["arch"],
        "config": json.dumps(_literal(ckpt["config"])),
        "mmdeploy": json.dumps(ckpt["mmdeploy"]),
    }
    save_safetensors(weights, ckpt["state_dict"], meta)
    return weights


def _literal(text: str) -> dict:
    import ast

    return ast.literal_eval(text)


def _same_call(recorded, arch_kwargs: dict) -> bool:
    try:
        return isinstance(recorded, dict) and canonical_kwargs(recorded) == canonical_kwargs(arch_kwargs)
    except (TypeError, ValueError):  # not plain data (the file is untrusted): not the same call
        return False


def read_resume(path: Path, arch: str, arch_kwargs: dict) -> dict:
    """The checkpoint to continue, which must hold ``arch`` built with ``arch_kwargs`` (the call this run makes)."""
    if not path.is_file():
        raise MMDeployError(f"--resume {path} does not exist", "pass a checkpoint written by mmdeploy train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read means "not a resumable checkpoint"
        raise MMDeployError(f"--resume {path} is not a readable checkpoint ({str(exc).splitlines()[0][:120]})",
                            "pass the .pth written by mmdeploy train (not the .safetensors)") from None
    if not isinstance(ckpt, dict) or "train_state" not in ckpt or "mmdeploy" not in ckpt:
        raise MMDeployError(f"--resume {path} was not written by mmdeploy train (no training state)", "start a new run without --resume")
    if ckpt["mmdeploy"].get("arch") != arch:
        raise MMDeployError(f"--resume {path} holds {ckpt['mmdeploy'].get('arch')}, not --arch {arch}",
                            f"pass --arch {ckpt['mmdeploy'].get('arch')}")
    recorded = ckpt["mmdeploy"].get("arch_kwargs")
    if not _same_call(recorded, arch_kwargs):
        own = {k: v for k, v in (recorded if isinstance(recorded, dict) else {}).items() if k != "num_classes"}
        again = f"--arch-kwargs '{json.dumps(own, sort_keys=True)}'" if own else "no --arch-kwargs"
        raise MMDeployError(f"--resume {path} was trained with architecture kwargs {str(recorded)[:200]}, not {arch_kwargs}",
                            f"resume with the run's own {again} and the same --data (its weights fit only that model)")
    return ckpt


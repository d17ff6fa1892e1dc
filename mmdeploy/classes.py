"""Which class index each data folder means: folder names mapped onto the model's own class list.

Labels from sorted folder order are right only when the folder holds every class of the
model, spelled so that they sort alike. A folder holding only ``cat/`` and ``dog/`` must be
scored against CIFAR-10's indices 3 and 5, not 0 and 1. So the class list a model was trained
with is recorded (checkpoints written by ``mmdeploy train`` say it; a checkpoint whose config
names a known dataset gets that dataset's list) and kept in the bundle, and folder names are
looked up in it. Without a list, folders named by ImageNet WordNet ids (``n01440764``) on a
1000-output model take ImageNet-1k's indices (the sorted ids, as torchvision and timm number
them); otherwise sorted folder order is used only when the folder count equals the model's
output count. Anything else is refused, since it cannot be mapped.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from mmdeploy.errors import MMDeployError

# torchvision's CIFAR10 order (the order of the dataset's label indices).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_WNID = re.compile(r"n\d{8}")


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """ImageNet-1k's 1000 WordNet ids in class-index order (shipped as ``imagenet_wnids.txt``)."""
    return tuple(Path(__file__).with_name("imagenet_wnids.txt").read_text().split())


def _known(dataset: str) -> tuple[str, ...] | None:
    key = _norm(dataset).replace("_", "")
    if key == "cifar10":
        return CIFAR10_CLASSES
    if key in ("imagenet", "imagenet1k", "ilsvrc2012"):
        return imagenet_wnids()
    return None


def _norm(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").split())


def model_classes(meta: dict, config: dict, num_outputs: int | None) -> list[str] | None:
    """The class names of a checkpoint, from its recorded list or its config's dataset, if they
    fit its output count; else None. ``meta``/``config`` are the checkpoint's, read as data."""
    mm = meta.get("mmdeploy") if isinstance(meta.get("mmdeploy"), dict) else {}
    for names in (mm.get("classes"), meta.get("classes")):
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            if num_outputs is None or len(names) == num_outputs:
                return list(names)
    dataset = config.get("dataset") if isinstance(config, dict) else None
    known = _known(dataset) if isinstance(dataset, str) else None
    if known and (num_outputs is None or len(known) == num_outputs):
        return list(known)
    return None


def folder_labels(folders: list[str], classes: list[str] | None, num_outputs: int | None, root: Path) -> list[int]:
    """The class index of each folder (``folders`` sorted); refuses a set that cannot be mapped."""
    if classes:
        index = {}
        for i, name in enumerate(classes):
            index.setdefault(_norm(name), i)
        unknown = [f for f in folders if _norm(f) not in index]
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            raise MMDeployError(f"{root}: class folders {shown} are not classes of the model ({len(classes)} classes: {', '.join(classes[:6])}"
                                f"{', ...' if len(classes) > 6 else ''})", "name each folder after one of the model's classes")
        return [index[_norm(f)] for f in folders]
    if num_outputs == 1000 and all(_WNID.fullmatch(f) for f in folders) and set(folders) <= set(imagenet_wnids()):
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        return [index[f] for f in folders]
    if num_outputs is not None and len(folders) != num_outputs:
        raise MMDeployError(f"{root} has {len(folders)} class folders but the model has {num_outputs} outputs and records no class names, "
                            "so folders cannot be matched to classes", f"use a folder with all {num_outputs} class subfolders")
    return list(range(len(folders)))


def checkpoint_label_space(ckpt) -> tuple[list[str] | None, int | None]:
    """(class names or None, output count or None) of a loaded checkpoint."""
    n = ckpt.arch_kwargs.get("num_classes")
    n = n if isinstance(n, int) and not isinstance(n, bool) else None
    return model_classes(ckpt.meta, ckpt.config, n), n


def bundle_label_space(manifest: dict) -> tuple[list[str] | None, int | None]:
    """The same for a bundle: ``source.classes`` as recorded by ``calibrate`` (checked, never trusted blindly)."""
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    kwargs = source.get("arch_kwargs") if isinstance(source.get("arch_kwargs"), dict) else {}
    n = kwargs.get("num_classes")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
    return model_classes({"classes": source.get("classes")}, {}, n), n

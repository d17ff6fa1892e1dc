"""Writing a calibration into a bundle: staging under fresh names, the manifest as the commit, the sweep.

:func:`write_calibration` is the only place ``mmdeploy calibrate`` writes: under the bundle's
lock it reads the bundle as it is now (a concurrent calibrate of other sizes keeps its sizes),
writes the new weights under names the committed manifest does not list, commits the manifest
(the one rename that publishes them) and sweeps what the manifest no longer lists. A crash
before the commit leaves the old bundle as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mmdeploy.bundle import MANIFEST, Bundle, bundle_lock, save_safetensors, sha256_file
from mmdeploy.calib.bn import BNSums, finalize_bn_state
from mmdeploy.classes import checkpoint_label_space
from mmdeploy.data import Preprocess
from mmdeploy.errors import MMDeployError
from mmdeploy.models import LoadedCheckpoint
from mmdeploy.models.trust import canonical_kwargs
from mmdeploy.writable import disk_error

DEFAULT_TRAINING_SIZE = {"cifar": 32, "imagenet": 224}


@dataclass
class MeasuredSizes:
    """What one calibration measured: the sizes it calibrated, their BN sums and keys, and how."""

    sizes: list[int]  # calibrated in this call (the others were reused)
    sums: dict[int, dict[str, BNSums]]  # per size, per BN layer; empty where the model has no BN or nothing was recalibrated
    keys: dict[int, str]  # per size: the reuse key (checkpoint, data, size, settings)
    settings: dict  # batches, batch size, augmentation, seed, preprocessing, method
    data_root: Path
    data_key: str
    batches_planned: int
    images: int
    skipped_files: int
    convergence: dict | None = None  # mmdeploy.calib.convergence.Convergence.summary()

    def record(self, size: int) -> dict:
        """The size's calibration record in the manifest. Under ``--batches auto``, ``batches`` is the count
        used (INT8 export plans its images from it: the first batches of the same seeded plan)."""
        record = {"key": self.keys[size], **self.settings, "images": self.images, "batches_used": self.batches_planned,
                  "skipped_files": self.skipped_files, "data": str(self.data_root.resolve()), "data_fingerprint": self.data_key}
        if self.convergence:
            record["convergence"] = self.convergence
        if "stopping" in self.settings:
            record["batches"] = self.batches_planned
        return record

    def state(self, model, size: int) -> dict:
        """The model's state with the size's calibrated BN statistics (the checkpoint's own without sums)."""
        if self.sums.get(size):
            return finalize_bn_state(model, self.sums[size], self.batches_planned)
        return {k: v.clone() for k, v in model.state_dict().items()}


def bundle_preprocess(bundle: Bundle, asked: Preprocess, explicit: bool) -> Preprocess:
    """One preprocessing per bundle: export, eval and bench read the bundle's, so every size
    must be calibrated with it. Without options a call keeps the bundle's; other options fail."""
    have = bundle.preprocess()
    if not explicit or asked == have:
        return have
    raise MMDeployError(f"bundle {bundle.root} uses preprocessing {have.to_dict()}, this call asks for {asked.to_dict()}",
                        "calibrate into a new --out, or leave out --preprocess/--mean/--std to keep the bundle's")


def write_calibration(out: str | Path, ckpt: LoadedCheckpoint, model, pre: Preprocess, preprocess_explicit: bool,
                      training_size: int | None, measured: MeasuredSizes) -> dict[int, dict]:
    """Read-modify-write of the bundle under its lock (see the module's docstring). Returns the written records by size."""
    records = {}
    _check_finite_statistics(measured)
    written: set[str] = set()  # files this call put into the bundle; removed again if it fails before the commit
    try:
        with bundle_lock(out):
            bundle, started_over = _open_or_start(out, ckpt, pre, preprocess_explicit, training_size)
            try:
                src = bundle.source
                if src.weights_sha256 is None or not bundle.file_ok(src.weights, src.weights_sha256):  # new, deleted or changed by hand
                    rel = bundle.fresh_name(src.weights)
                    written.add(rel)
                    save_safetensors(bundle.path(rel), dict(ckpt.state_dict), {"arch": ckpt.arch})
                    bundle.set_source_weights(rel, sha256_file(bundle.path(rel)))
                for s in measured.sizes:
                    rel = bundle.fresh_name(f"sizes/{s}/weights.safetensors")
                    written.add(rel)
                    save_safetensors(bundle.path(rel), measured.state(model, s), {"arch": ckpt.arch, "size": str(s)})
                    records[s] = measured.record(s)
                    bundle.set_size(s, rel, sha256_file(bundle.path(rel)), records[s])
                bundle.commit()
            except BaseException:
                # Nothing was published: what this call wrote goes (quietly), so no unlisted file or empty folder stays.
                bundle.sweep(expected=written)
                raise
            if started_over:
                for name in ("report.json", "report.csv", "report.md", "pareto.png"):
                    (Path(out) / name).unlink(missing_ok=True)
    except OSError as exc:
        raise disk_error(exc) or MMDeployError(f"cannot write bundle {out}: {exc.strerror or exc}",
                                                "choose a writable --out with free space") from None
    return records


def _check_finite_statistics(measured: MeasuredSizes) -> None:
    """Refuse, before anything is written, BN statistics that are NaN or Inf (as float32 buffers): weights made
    from them score like chance (a believable 10% on CIFAR-10) and cannot be exported."""
    for size in measured.sizes:
        sums = measured.sums.get(size) or {}
        bad = [name for name, s in sums.items() if not all(bool(torch.isfinite(t.float()).all()) for t in s.mean_var())]
        if bad:
            raise MMDeployError(f"calibration at size {size} gave NaN/Inf BatchNorm statistics in {len(bad)} of {len(sums)} layers "
                                f"(first: {bad[0]}); nothing was written",
                                "the network's activations overflow or are NaN: check the normalization (--mean, --std: std far from 0) "
                                "and the images")


def open_same_source(out, ckpt: LoadedCheckpoint) -> Bundle | None:
    """The bundle at ``out`` if it was made from this checkpoint, architecture and architecture kwargs, else None
    (then a calibration starts over). Compared on the manifest's data first, so a bundle of another call of your
    code is replaced rather than refused as code named by a file."""
    if not Bundle.is_bundle(out):
        return None
    try:
        recorded = json.loads((Path(out) / MANIFEST).read_text()).get("source", {})
        same = (recorded.get("sha256"), recorded.get("arch"), canonical_kwargs(recorded.get("arch_kwargs"))) == \
            (ckpt.sha256, ckpt.arch, canonical_kwargs(ckpt.arch_kwargs))
    except (OSError, ValueError, TypeError, AttributeError):
        same = True  # unreadable or odd: Bundle.open says what is wrong with it
    return Bundle.open(out) if same else None


def _open_or_start(out, ckpt: LoadedCheckpoint, pre: Preprocess, preprocess_explicit: bool, training_size: int | None) -> tuple[Bundle, bool]:
    """The bundle to write into, and whether it starts over (new, or made from another checkpoint, arch or arch kwargs)."""
    current = open_same_source(out, ckpt)  # another source: start over; the old bundle's files are swept
    if current is not None:
        bundle_preprocess(current, pre, preprocess_explicit)  # a concurrent writer may have set another
        if training_size:
            current.set_training_size(training_size)
        return current, False
    source = {
        "path": str(Path(ckpt.path).resolve()), "sha256": ckpt.sha256, "format": ckpt.format, "arch": ckpt.arch,
        "arch_kwargs": ckpt.arch_kwargs, "config": {k: v for k, v in ckpt.config.items() if isinstance(v, (str, int, float, bool, list))},
        "weights": "source/weights.safetensors",
    }
    classes = checkpoint_label_space(ckpt)[0]
    if classes:  # eval maps data folder names onto these indices
        source["classes"] = classes
    bundle = Bundle.create(out, source, pre.to_dict(), training_size or default_training_size(ckpt))
    return bundle, Bundle.is_bundle(out)


def default_training_size(ckpt: LoadedCheckpoint) -> int:
    mm = ckpt.meta.get("mmdeploy", {}) if isinstance(ckpt.meta.get("mmdeploy"), dict) else {}
    return int(mm.get("training_size") or DEFAULT_TRAINING_SIZE.get(ckpt.dataset, 224))

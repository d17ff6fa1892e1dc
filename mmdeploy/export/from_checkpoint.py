"""Exporting straight from a checkpoint: a bundle whose every size keeps the checkpoint's own BN statistics."""

from __future__ import annotations

from pathlib import Path

from mmdeploy.errors import MMDeployError
from mmdeploy.progress import Progress


def bundle_for_export(target: str | Path, sizes: list[int] | None, data: str | Path | None, out: str | Path | None,
                      arch: str | None = None, progress: Progress | None = None, arch_kwargs: dict | None = None) -> Path:
    """The bundle ``mmdeploy export TARGET`` exports: ``target`` itself when it is a bundle (or not a file: the export
    then says what is wrong with it), else a new bundle at ``out`` made from the checkpoint ``target`` without
    recalibrating, at ``sizes``, with ``data`` recorded as the parity gate's images."""
    from mmdeploy.bundle import Bundle

    target = Path(target)
    if Bundle.is_bundle(target) or not target.is_file():
        return target
    from mmdeploy.calib.workflow import calibrate_to_bundle

    if out is None or not sizes or data is None:
        raise MMDeployError("exporting a checkpoint needs --size, --data (images for the parity gate) and --out (the bundle to create)",
                            f"e.g. mmdeploy export {target} --size 32 --data calib/val --out bundle/; or calibrate first")
    calibrate_to_bundle(target, sizes, data, out, arch=arch, arch_kwargs=arch_kwargs, recalibrate=False, progress=progress)
    return Path(out)

"""Build hook: the wheel carries the embedded demo's inputs as ``mmdeploy/_demo/``.

The repository keeps them at its top level (``models/``, ``calib/``, ``ci/baseline/``, as the design card lays out), so
a checkout runs the demo from there; an installed package has no checkout, so the files it needs are copied into the
built package (checkpoints, calibration and validation images, the gate's baseline reports: 7 MB). Everything
else is configured in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What `mmdeploy run` with no config reads (mmdeploy/pipeline.py, DEMO_CONFIG), as globs under the repository root.
DEMO_FILES = ("models/*.pth", "calib/train/*/*", "calib/val/*/*", "ci/baseline/*/report.json")


class BuildPyWithDemo(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install runs the demo from the checkout itself
            return
        target = Path(self.build_lib) / "mmdeploy" / "_demo"
        for pattern in DEMO_FILES:
            for source in sorted(ROOT.glob(pattern)):
                if source.is_file():
                    dest = target / source.relative_to(ROOT)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, dest)


setup(cmdclass={"build_py": BuildPyWithDemo})

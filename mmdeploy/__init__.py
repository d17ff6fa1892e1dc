"""mmdeploy: per-size BatchNorm calibration, ONNX/TensorRT export and accuracy/latency reports
for CNNs trained with mixed image sizes (Hoffer et al. 2019, "Mix & Match").

Python users: :func:`load` opens a bundle; :mod:`mmdeploy.api` has every step of the workflow as a function
(``api.calibrate``, ``api.export``, ``api.evaluate``, ``api.bench``, ``api.report``). Importing ``mmdeploy``
stays cheap: torch and the engines load when a function needs them."""

from mmdeploy import api
from mmdeploy.api import load, load_engine
from mmdeploy.version import __version__

__all__ = ["__version__", "api", "load", "load_engine"]

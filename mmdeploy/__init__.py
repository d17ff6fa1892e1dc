"""mmdeploy: per-size BatchNorm calibration, ONNX/TensorRT export and accuracy/latency reports
for CNNs trained with mixed image sizes (Hoffer et al. 2019, "Mix & Match")."""

__version__ = "0.1.0"


def load(bundle):
    """Open a bundle folder: ``mmdeploy.load("bundle").engine("ort", size=24)(images)``."""
    from mmdeploy.bundle import Bundle

    return Bundle.open(bundle)


__all__ = ["__version__", "load"]

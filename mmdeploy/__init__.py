"""mmdeploy: per-size BatchNorm calibration, ONNX/TensorRT export and accuracy/latency reports
for CNNs trained with mixed image sizes (Hoffer et al. 2019, "Mix & Match")."""

__version__ = "0.1.0"


def load(bundle, arch: str | None = None, trust_code_from_files: bool = False):
    """Open a bundle folder: ``mmdeploy.load("bundle").engine("ort", size=24)(images)``.

    A bundle made from your own ``package.module:factory`` opens only with ``arch`` set to that
    same spec, or with ``trust_code_from_files=True`` (a manifest is data, not code)."""
    from mmdeploy.bundle import Bundle
    from mmdeploy.models.trust import user_code_policy

    with user_code_policy(arch, trust_code_from_files):
        return Bundle.open(bundle)


__all__ = ["__version__", "load"]

"""The parity gate: an exported artifact must compute what the PyTorch model computes.

Checked at every deployment size, at a size that was not the export's example input, and at
batch 1 and a larger batch, on real images. A mismatch is an error, never a warning: the
typical cause is an operation that turned a tensor size into a constant at export time.
This module also picks the gate's images (:func:`parity_images`) and the unseen size the
dynamic ONNX is checked at (:func:`choose_check_size`); every engine's export step uses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mmdeploy.data import DecodedImages, Preprocess, decode_for_sizes, scan_image_folder, to_input
from mmdeploy.errors import MMDeployError
from mmdeploy.export.onnx import NO_DYNAMIC_HINT
from mmdeploy.models.fit import forward_error


@dataclass(frozen=True)
class Tolerance:
    """Pass if max|a-b| <= atol + rtol * max|ref| and top-1 agreement >= min_top1_agreement."""

    atol: float
    rtol: float
    min_top1_agreement: float


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_top1_agreement=0.99),
    "fp16": Tolerance(atol=1e-2, rtol=3e-2, min_top1_agreement=0.95),
    # bf16 keeps 8 mantissa bits: one ulp of a logit of 26 is 0.125, so the bound is relative (about 2.5 ulps)
    "bf16": Tolerance(atol=1e-2, rtol=2e-2, min_top1_agreement=0.95),
    # INT8 changes logits by a few percent of their range; what must hold is the decision (top-1) and no outliers.
    "int8": Tolerance(atol=0.1, rtol=0.5, min_top1_agreement=0.9),
}


def tolerances_for(precisions: list[str] | None, atol: float | None = None, rtol: float | None = None,
                   min_agreement: float | None = None) -> dict[str, Tolerance] | None:
    """Each precision's default tolerance with the given bounds replacing its own (``export --atol``, a config's
    ``[export] atol``); None when no bound is given, so every precision keeps its default."""
    if atol is None and rtol is None and min_agreement is None:
        return None
    out = {}
    for p in precisions or ["fp32"]:
        base = DEFAULT_TOLERANCES.get(p, DEFAULT_TOLERANCES["fp32"])
        out[p] = Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol,
                           base.min_top1_agreement if min_agreement is None else min_agreement)
    return out


@dataclass
class ParityCheck:
    artifact: str  # "dynamic" or "per-size" (or "trt")
    precision: str
    size: int
    batch: int
    images: int
    max_abs: float
    max_rel: float  # max_abs / max|reference logit|
    top1_agreement: float
    passed: bool
    error: str = ""  # what the engine raised instead of answering (a failed check, never a crash)

    def to_dict(self) -> dict:
        return asdict(self)


def check_parity(
    reference: torch.nn.Module,
    engine,
    images: DecodedImages,
    size: int,
    batches: tuple[int, ...],
    preprocess: Preprocess,
    tolerance: Tolerance,
    artifact: str,
) -> list[ParityCheck]:
    """Compare ``engine`` (an activated Engine) with ``reference`` at one size, per batch size."""
    x_all = to_input(images.at(size), size, preprocess)
    if len(x_all) < max(batches):  # e.g. a static batch above the image count: repeat images to fill one batch
        x_all = x_all[torch.arange(max(batches)) % len(x_all)]
    with torch.inference_mode():
        ref_all = reference.eval()(x_all).float()
    checks = []
    for batch in batches:
        try:
            outs = [engine(x_all[i : i + batch]) for i in range(0, len(x_all) - batch + 1, batch)]
        except Exception as exc:  # noqa: BLE001  an engine that cannot run this shape fails the gate; it names why
            text = " ".join(str(exc).split())[:200]
            checks.append(ParityCheck(artifact, engine.precision, size, batch, 0, float("inf"), float("inf"), 0.0, False,
                                      f"{type(exc).__name__}: {text}"))
            continue
        n = sum(o.shape[0] for o in outs)
        got = torch.cat(outs).float().cpu()
        ref = ref_all[:n]
        diff = (got - ref).abs().max().item()
        scale = ref.abs().max().item()
        agree = (got.argmax(1) == ref.argmax(1)).float().mean().item()
        ok = diff <= tolerance.atol + tolerance.rtol * scale and agree >= tolerance.min_top1_agreement and bool(torch.isfinite(got).all())
        checks.append(ParityCheck(artifact, engine.precision, size, batch, n, diff, diff / max(scale, 1e-12), agree, ok))
    return checks


def parity_images(bundle, data: str | Path | None, count: int, sizes: list[int]) -> DecodedImages:
    """The gate's inputs: ``count`` real images of ``data`` (default: the bundle's calibration folder), the same seeded
    pick on every call, decoded at each of ``sizes`` with the bundle's preprocessing."""
    src = data or bundle.calibration_data()
    if not src or not Path(src).exists():
        raise MMDeployError("no images for the parity check", "pass --data DIR (an ImageFolder of real images)")
    folder = scan_image_folder(src)
    gen = torch.Generator().manual_seed(1234)
    picks = sorted(torch.randperm(len(folder), generator=gen)[:count].tolist())
    pre = bundle.preprocess()
    return decode_for_sizes(folder, picks, pre.kind, sizes)


def unseen_size(sizes: list[int], example: int) -> int:
    """A size that is neither a deployment size nor the example: shows baked-in shapes."""
    candidate = example + 8
    while candidate in sizes:
        candidate += 8
    return candidate


# Multiples tried for the dynamic ONNX's check size after example+8: patch sizes (ViT 16, 14) and network strides (32, 64).
CHECK_MULTIPLES = (16, 32, 14, 28, 64, 56, 128)


def check_size_candidates(sizes: list[int], example: int) -> list[int]:
    """Sizes to try for the dynamic ONNX's unseen-size check, first to last: example+8, then the next multiples of
    common patch sizes and strides above the example; never a deployment size."""
    out = [unseen_size(sizes, example)]
    for m in CHECK_MULTIPLES:
        candidate = (example // m + 1) * m
        while candidate in sizes:
            candidate += m
        if candidate not in out:
            out.append(candidate)
    return out


def choose_check_size(model: torch.nn.Module, sizes: list[int], example: int, given: int | None = None) -> int:
    """The size the dynamic ONNX is checked at besides the deployment sizes: ``given`` (``--check-size``), or the first
    candidate the PyTorch model accepts (a patch model asserts its input is a multiple of the patch). One line if none."""
    if given is not None:
        if given in sizes:
            raise MMDeployError(f"--check-size {given} is a deployment size; the check needs a size the export did not see",
                                "pick another size your model accepts, e.g. the next multiple of its patch size or stride")
        error = forward_error(model, given)
        if error:
            raise MMDeployError(f"--check-size {given}: the PyTorch model does not run at that size ({error})",
                                "pick a size your model accepts (e.g. a multiple of its patch size or stride)")
        return given
    tried = {}
    for candidate in check_size_candidates(sizes, example):
        error = forward_error(model, candidate)
        if not error:
            return candidate
        tried[candidate] = error
    first = next(iter(tried.items()))
    raise MMDeployError(f"no size to check the dynamic ONNX at: the PyTorch model refused {', '.join(map(str, tried))} "
                        f"(at {first[0]}: {first[1]})", f"pass --check-size N (a size your model accepts, not a deployment size), {NO_DYNAMIC_HINT}")

"""The parity gate: an exported artifact must compute what the PyTorch model computes.

Checked at every deployment size, at a size that was not the export's example input, and at
batch 1 and a larger batch, on real images. A mismatch is an error, never a warning: the
typical cause is an operation that turned a tensor size into a constant at export time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from mmdeploy.data import DecodedImages, Preprocess, to_input


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

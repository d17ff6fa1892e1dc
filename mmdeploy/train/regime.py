"""Training regimes: which image sizes a step may use, how often, and each size's batch and duplicates.

The MixSize regimes of Hoffer et al. 2019 as the reference code (convNet.pytorch,
``models/resnet.py``: ``mixsize_config``) defines them. With scale = (base / size)^2:

- ``B+`` keeps the compute per step roughly constant by scaling the batch:
  batch = round(base_batch * scale), one copy of each image.
- ``D+`` keeps the batch and scales *duplicates* ("batch augmentation"): each of the batch's
  images is augmented D = round(scale) times. Where scale < 0.5 (larger than base size)
  duplicates cannot go below one, so it scales the batch instead.
- ``fixed``: one size, the base batch, no duplicates (the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmdeploy.errors import MMDeployError

KINDS = ("D+", "B+", "fixed")
BASE_SIZE = {"cifar": 32, "imagenet": 224}
BASE_BATCH = 64

# The reference code's distributions (``sampled_data_regime``), in its order.
CIFAR_SIZES = {32: 0.3, 48: 0.2, 24: 0.3, 16: 0.2}
IMAGENET_SIZES = {128: 0.8 / 6, 160: 0.8 / 6, 192: 0.8 / 6, 224: 0.2, 256: 0.8 / 6, 288: 0.8 / 6, 320: 0.8 / 6}
DEFAULT_SIZES = {"cifar": CIFAR_SIZES, "imagenet": IMAGENET_SIZES}

_SIZES_HINT = "write sizes as SIZE:PROBABILITY pairs, e.g. --sizes 32:0.3,48:0.2,24:0.3,16:0.2"


@dataclass(frozen=True)
class SizeConfig:
    """One size of a regime: its probability, unique images per step and augmented copies of each."""

    size: int
    prob: float
    batch: int
    duplicates: int

    @property
    def samples(self) -> int:
        """Network inputs per step: batch x duplicates."""
        return self.batch * self.duplicates


@dataclass(frozen=True)
class Regime:
    kind: str  # "D+", "B+" or "fixed"
    base_size: int
    base_batch: int
    sizes: tuple[SizeConfig, ...]

    @property
    def reference_name(self) -> str:
        """The regime's name in the reference code's model config (``'regime': 'sampled_D+'``)."""
        return "normal" if self.kind == "fixed" else f"sampled_{self.kind}"

    @property
    def slug(self) -> str:
        """A file-name-friendly name: mixsize_dplus, mixsize_bplus, fixed32."""
        if self.kind == "fixed":
            return f"fixed{self.sizes[0].size}"
        return "mixsize_" + self.kind[0].lower() + "plus"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "base_size": self.base_size,
            "base_batch": self.base_batch,
            "sizes": [{"size": s.size, "prob": s.prob, "batch": s.batch, "duplicates": s.duplicates} for s in self.sizes],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Regime:
        sizes = tuple(SizeConfig(int(s["size"]), float(s["prob"]), int(s["batch"]), int(s["duplicates"])) for s in d["sizes"])
        return cls(d["kind"], int(d["base_size"]), int(d["base_batch"]), sizes)

    def describe(self) -> str:
        parts = ", ".join(f"{s.size}px p={s.prob:.3g} batch {s.batch}x{s.duplicates}" for s in self.sizes)
        return f"{self.kind}: {parts}"


def mixsize_config(size: int, base_size: int, base_batch: int, kind: str) -> tuple[int, int]:
    """(batch, duplicates) of ``size`` in regime ``kind``: the reference code's rule with one base duplicate."""
    if kind == "fixed":
        return base_batch, 1
    scale = (base_size / size) ** 2
    adapt_batch = kind == "B+" or scale < 0.5  # D+ cannot go below one duplicate: scale the batch there
    if adapt_batch:
        return max(1, round(scale * base_batch)), 1
    return base_batch, max(1, round(scale))


def normalize_kind(kind: str) -> str:
    text = kind.strip().lower().removeprefix("sampled_").removeprefix("sampled-")
    for k in KINDS:
        if text == k.lower() or (k != "fixed" and text == k[0].lower()):
            return k
    if text == "normal":
        return "fixed"
    raise MMDeployError(f"unknown regime {kind!r}", "use --regime D+, B+ or fixed")


def parse_sizes(text: str) -> dict[int, float]:
    """``'32:0.3,48:0.2'`` -> {32: 0.3, 48: 0.2}. Probabilities must be positive and sum to 1."""
    out: dict[int, float] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        size_text, sep, prob_text = item.partition(":")
        try:
            size, prob = int(size_text), float(prob_text)
        except ValueError:
            raise MMDeployError(f"{item!r} in --sizes is not SIZE:PROBABILITY", _SIZES_HINT) from None
        if not sep:
            raise MMDeployError(f"{item!r} in --sizes has no probability", _SIZES_HINT)
        if size in out:
            raise MMDeployError(f"size {size} appears twice in --sizes", _SIZES_HINT)
        out[size] = prob
    if not out:
        raise MMDeployError("--sizes is empty", _SIZES_HINT)
    return out


def _check_distribution(sizes: dict[int, float]) -> dict[int, float]:
    for size, prob in sizes.items():
        if size <= 0:
            raise MMDeployError(f"size {size} is not a positive number of pixels", _SIZES_HINT)
        if not prob > 0:
            raise MMDeployError(f"size {size} has probability {prob}; every probability must be > 0", "leave out sizes you do not want")
    total = sum(sizes.values())
    if abs(total - 1.0) > 1e-3:
        raise MMDeployError(f"--sizes probabilities sum to {total:.4g}, not 1", _SIZES_HINT)
    return {s: p / total for s, p in sizes.items()}  # exactly 1, so the epoch split is exact


def make_regime(
    kind: str = "D+",
    sizes: dict[int, float] | str | None = None,
    size: int | None = None,
    dataset: str = "cifar",
    base_size: int | None = None,
    base_batch: int = BASE_BATCH,
) -> Regime:
    """Build a regime. ``sizes`` (mixed) defaults to the reference distribution of ``dataset``;
    ``size`` (fixed) defaults to the base size: 32 for CIFAR, 224 for ImageNet."""
    kind = normalize_kind(kind)
    base = base_size or BASE_SIZE.get(dataset, 224)
    if base_batch < 1:
        raise MMDeployError(f"--batch-size {base_batch} is not a positive number", "the reference uses --batch-size 64")
    if kind == "fixed":
        if sizes:
            raise MMDeployError("--sizes is for the mixed regimes", "use --regime D+ or B+ with --sizes, or --regime fixed --size 32")
        chosen = size or base
        if chosen <= 0:
            raise MMDeployError(f"--size {chosen} is not a positive number of pixels", "e.g. --size 32")
        return Regime(kind, base, base_batch, (SizeConfig(chosen, 1.0, base_batch, 1),))
    if size is not None:
        raise MMDeployError(f"--size is for --regime fixed, not {kind}", "give a mixed regime's sizes with --sizes 32:0.3,48:0.2,...")
    dist = parse_sizes(sizes) if isinstance(sizes, str) else dict(sizes or DEFAULT_SIZES.get(dataset, IMAGENET_SIZES))
    dist = _check_distribution(dist)
    configs = tuple(SizeConfig(s, p, *mixsize_config(s, base, base_batch, kind)) for s, p in dist.items())
    return Regime(kind, base, base_batch, configs)

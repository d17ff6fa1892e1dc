"""The uncertainty of every number the tool decides on: top-1 intervals, paired accuracy comparisons, latency intervals.

- A top-1 is a binomial proportion: :func:`wilson` gives its 95% Wilson score interval (it stays inside 0-100% and
  keeps its coverage near 0% and 100%, where the textbook +-z*sqrt(p(1-p)/n) does not).
- "Is B within X points of A?" is asked of two points evaluated on the *same images*: eval keeps which images each
  point got right (:func:`pack_correct`), so the comparison is paired. :func:`compare_top1` puts a 95% interval on the
  difference B - A (Newcombe's 1998 "method 10": two Wilson intervals combined with the continuity-corrected
  correlation of the paired 2x2 table, so images both get right or both get wrong do not add noise) and says one of:

  - ``within``: the whole interval lies above -X (B is at most X points worse, at 95%);
  - ``worse``: the whole interval lies below -X (B is decidedly more than X points worse);
  - ``undecided``: the interval straddles -X; the sample is too small to say.

  Without per-image results (bundles evaluated before this was recorded, or points on different image sets) the
  same interval is taken as if the two were independent (Newcombe's hybrid score interval, no correlation term):
  wider, and said so (``paired=False``).
- The images that would decide an undecided comparison (:attr:`Comparison.images_needed`), a power-style estimate:
  with ``d`` the observed difference (fraction), ``s2`` the per-image variance of the difference (paired:
  discordant share - d**2; unpaired: p_a(1-p_a) + p_b(1-p_b)) and ``z`` = 1.96, the interval's half-width
  ``z*sqrt(s2/n)`` equals the margin ``|d + X|`` at ``n = ceil(z**2 * s2 / (d + X)**2)``: the images (per point) at
  which the same difference, with the same discordance, would come out within or worse. A difference exactly at
  -X is never decided (``None``).
- A p50 latency gets the distribution-free interval of a median from order statistics (:func:`median_interval`);
  a ratio of two p50s gets the quotient of their intervals taken crosswise (:func:`ratio_interval`), which holds
  whenever both intervals hold: at least 90% coverage.
"""

from __future__ import annotations

import base64
import math
from dataclasses import asdict, dataclass
from typing import Literal

from mmdeploy.errors import MMDeployError

Z95 = 1.959963984540054  # two-sided 95% normal quantile
Verdict = Literal["within", "worse", "undecided"]
_SLACK = 1e-9  # a bound exactly on the tolerance counts as inside it (floating-point rounding)


def wilson(correct: int, images: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``images`` trials, as fractions."""
    if images <= 0:
        return 0.0, 1.0
    p = correct / images
    denom = 1 + z * z / images
    centre = (p + z * z / (2 * images)) / denom
    half = z * math.sqrt(p * (1 - p) / images + z * z / (4 * images * images)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def top1_interval(top1: float, images: int) -> tuple[float, float]:
    """The 95% Wilson interval of a top-1 given in percent over ``images`` images, in percent."""
    low, high = wilson(round(top1 * images / 100), images)
    return 100 * low, 100 * high


# -- per-image correctness ------------------------------------------------------------------------
def pack_correct(correct) -> str:
    """Which images a point got right, as base64 of a little-endian bitset (image i is bit i): 1,250 bytes per 10,000 images."""
    flags = [bool(c) for c in correct]
    packed = bytearray((len(flags) + 7) // 8)
    for i, c in enumerate(flags):
        if c:
            packed[i >> 3] |= 1 << (i & 7)
    return base64.b64encode(bytes(packed)).decode("ascii")


def unpack_correct(text: str, images: int) -> int:
    """The bitset :func:`pack_correct` wrote, as an int (bit i = image i), checked against ``images`` (untrusted data)."""
    if not isinstance(text, str) or not isinstance(images, int) or images < 1:
        raise MMDeployError("per-image results are malformed", "re-run mmdeploy eval")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise MMDeployError("per-image results are not valid base64", "re-run mmdeploy eval") from None
    if len(raw) != (images + 7) // 8:
        raise MMDeployError(f"per-image results hold {len(raw) * 8} bits for {images} images", "re-run mmdeploy eval")
    value = int.from_bytes(raw, "little")
    if value >> images:
        raise MMDeployError("per-image results have bits set past the last image", "re-run mmdeploy eval")
    return value


@dataclass(frozen=True)
class Top1:
    """One top-1 figure and what a comparison needs: its image count and, where eval kept them, its per-image results."""

    top1: float  # percent
    images: int
    correct: str = ""  # pack_correct() bitset, "" when not recorded
    image_set: str = ""  # which images, in which order: equal on two points means their bitsets line up

    @classmethod
    def of(cls, point) -> Top1:
        """From a :class:`~mmdeploy.results.Point` (its ``extra``) or an :class:`~mmdeploy.results.AccuracyResult`."""
        extra = getattr(point, "extra", None)
        if extra is not None:
            return cls(point.top1, int(extra.get("images") or 0), extra.get("correct", ""), extra.get("image_set", ""))
        return cls(point.top1, point.images, getattr(point, "correct", ""), getattr(point, "image_set", ""))

    def pairs_with(self, other: Top1) -> bool:
        return bool(self.correct and other.correct and self.image_set and self.image_set == other.image_set
                    and self.images == other.images)


@dataclass
class Comparison:
    """Candidate minus reference, in top-1 points, with its 95% interval and the verdict against ``tolerance``."""

    difference: float  # candidate - reference, points
    low: float
    high: float
    tolerance: float
    verdict: Verdict
    paired: bool  # on the same images (per-image results), or as independent samples (no per-image results)
    images: int  # per point (the smaller count when unpaired)
    images_needed: int | None = None  # undecided: images that would decide it; None when decided or never decidable
    discordant: tuple[int, int] | None = None  # paired: (reference right only, candidate right only)

    def interval(self) -> str:
        return f"{self.difference:+.2f} pt [{self.low:+.2f}, {self.high:+.2f}]"

    def phrase(self) -> str:
        """E.g. ``within 0.3 pt: -0.11 pt [-0.52, +0.30], paired on 10000 images``."""
        how = f"paired on {self.images} images" if self.paired else f"unpaired (no per-image results), {self.images} images"
        text = f"{self.verdict} {self.tolerance:g} pt: {self.interval()}, {how}"
        if self.verdict == "undecided":
            text += (f"; ~{self.images_needed} images would decide it" if self.images_needed
                     else "; exactly at the tolerance, no sample size decides it")
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def _verdict(low: float, high: float, tolerance: float) -> Verdict:
    if low >= -tolerance - _SLACK:
        return "within"
    if high < -tolerance - _SLACK:
        return "worse"
    return "undecided"


def _needed(difference: float, variance: float, tolerance: float, images: int) -> int | None:
    margin = abs(difference + tolerance)
    if margin < 1e-12:
        return None
    if variance <= 0:  # no discordant image yet: count one image's worth
        variance = 1.0 / images
    return max(images + 1, math.ceil(Z95 * Z95 * variance / (margin * margin)))


def _consistent_bits(*figures: Top1) -> tuple[int, ...] | None:
    """Each figure's bitset, or None if one disagrees with its own top-1 (an edited report): then the numbers decide, unpaired."""
    bits = tuple(unpack_correct(f.correct, f.images) for f in figures)
    agree = all(b.bit_count() == round(f.top1 * f.images / 100) for b, f in zip(bits, figures))
    return bits if agree else None


def compare_top1(reference: Top1, candidate: Top1, tolerance: float) -> Comparison:
    """Is ``candidate`` within ``tolerance`` top-1 points of ``reference``? Paired when both have per-image results
    on the same image set, else as independent samples (see the module docstring)."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise MMDeployError(f"accuracy tolerance must be a non-negative number, got {tolerance}", "use e.g. 0.5")
    tol = tolerance / 100
    if reference.pairs_with(candidate) and (bits := _consistent_bits(reference, candidate)) is not None:
        n = reference.images
        ref, cand = bits
        both = (ref & cand).bit_count()
        ref_only, cand_only = (ref & ~cand).bit_count(), (cand & ~ref).bit_count()
        neither = n - both - ref_only - cand_only
        p_ref, p_cand = (both + ref_only) / n, (both + cand_only) / n
        l_ref, u_ref = wilson(both + ref_only, n)
        l_cand, u_cand = wilson(both + cand_only, n)
        marginals = (both + cand_only) * (ref_only + neither) * (both + ref_only) * (cand_only + neither)
        # Newcombe's continuity-corrected correlation: a positive cross-product is reduced by n/2 (and floored at 0)
        cross = both * neither - cand_only * ref_only
        cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
        phi = cross / math.sqrt(marginals) if marginals else 0.0
        d = p_cand - p_ref
        low = d - math.sqrt(max(0.0, (p_cand - l_cand) ** 2 - 2 * phi * (p_cand - l_cand) * (u_ref - p_ref) + (u_ref - p_ref) ** 2))
        high = d + math.sqrt(max(0.0, (u_cand - p_cand) ** 2 - 2 * phi * (u_cand - p_cand) * (p_ref - l_ref) + (p_ref - l_ref) ** 2))
        variance = (ref_only + cand_only) / n - d * d
        verdict = _verdict(low, high, tol)
        needed = _needed(d, variance, tol, n) if verdict == "undecided" else None
        return Comparison(100 * d, 100 * low, 100 * high, tolerance, verdict, True, n, needed, (ref_only, cand_only))
    n_ref, n_cand = reference.images, candidate.images
    if n_ref <= 0 or n_cand <= 0:
        raise MMDeployError("a top-1 without its image count cannot be compared with its uncertainty",
                            "re-run mmdeploy eval and mmdeploy report")
    k_ref, k_cand = round(reference.top1 * n_ref / 100), round(candidate.top1 * n_cand / 100)
    p_ref, p_cand = k_ref / n_ref, k_cand / n_cand
    l_ref, u_ref = wilson(k_ref, n_ref)
    l_cand, u_cand = wilson(k_cand, n_cand)
    d = p_cand - p_ref
    low = d - math.sqrt((p_cand - l_cand) ** 2 + (u_ref - p_ref) ** 2)
    high = d + math.sqrt((u_cand - p_cand) ** 2 + (p_ref - l_ref) ** 2)
    verdict = _verdict(low, high, tol)
    n = min(n_ref, n_cand)
    needed = _needed(d, p_ref * (1 - p_ref) + p_cand * (1 - p_cand), tol, n) if verdict == "undecided" else None
    return Comparison(100 * d, 100 * low, 100 * high, tolerance, verdict, False, n, needed)


def compare_points(reference, candidate, tolerance: float) -> Comparison | None:
    """:func:`compare_top1` of two points (or accuracy results); None when either lacks its image count (a report
    written before counts were kept), where callers fall back to the bare numbers."""
    ref, cand = Top1.of(reference), Top1.of(candidate)
    if ref.images <= 0 or cand.images <= 0:
        return None
    return compare_top1(ref, cand, tolerance)


def at_least(top1: Top1, threshold: float) -> Comparison:
    """Is the true top-1 at least ``threshold`` percent? The Wilson interval against it (``within``: it is, at 95%;
    ``worse``: it is not; ``undecided``: the images cannot tell), as a :class:`Comparison` of top1 - threshold."""
    if top1.images <= 0:
        raise MMDeployError("a top-1 without its image count has no interval", "re-run mmdeploy eval and mmdeploy report")
    k = round(top1.top1 * top1.images / 100)
    low, high = wilson(k, top1.images)
    p, t = k / top1.images, threshold / 100
    verdict = _verdict(low - t, high - t, 0.0)
    needed = _needed(p - t, p * (1 - p), 0.0, top1.images) if verdict == "undecided" else None
    return Comparison(100 * (p - t), 100 * (low - t), 100 * (high - t), 0.0, verdict, False, top1.images, needed)


def significantly_better(a, b) -> bool:
    """``b`` is decidedly more accurate than ``a`` (the 95% interval of b - a lies above 0): points or Top1s."""
    a, b = (x if isinstance(x, Top1) else Top1.of(x) for x in (a, b))
    if a.images <= 0 or b.images <= 0:  # no counts (old reports): the bare numbers decide, as before
        return b.top1 > a.top1
    return compare_top1(b, a, 0.0).high < -_SLACK


# -- latency ----------------------------------------------------------------------------------------
def median_interval(samples: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the median from order statistics: the ``l``-th smallest and ``l``-th largest
    sample, with ``l`` the largest rank for which P(Binomial(n, 1/2) < l) <= (1 - confidence)/2. Under 6 samples no
    rank reaches 95%: the whole range is returned."""
    s = sorted(samples)
    n = len(s)
    if n == 0:
        raise MMDeployError("no latency samples to take an interval of", "re-run mmdeploy bench")
    alpha = (1 - confidence) / 2
    rank, below = 0, 0.0  # below = P(Bin(n, 1/2) < rank + 1)
    while rank < n // 2:
        below += math.comb(n, rank) / 2**n
        if below > alpha:
            break
        rank += 1
    rank = max(rank, 1)
    return s[rank - 1], s[n - rank]


def ratio_interval(numerator: tuple[float, float] | None, denominator: tuple[float, float] | None) -> tuple[float, float] | None:
    """The interval of a ratio of two positive quantities from theirs, crosswise (low/high, high/low); None if either is missing."""
    if not numerator or not denominator or min(denominator) <= 0:
        return None
    return numerator[0] / denominator[1], numerator[1] / denominator[0]

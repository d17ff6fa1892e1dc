"""The epoch plan of a regime: which images each optimizer step sees, and at which size.

Each epoch, a seeded permutation of the training set is split into disjoint parts in
proportion to the size probabilities (as the reference code's ``SampledDataRegime`` with
``split_data=True``); each part is cut into steps of its size's batch, and the steps of all
sizes are shuffled together. Every image is seen exactly once per epoch. The plan depends
only on (number of images, regime, seed, epoch), so a resumed run replays it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmdeploy.train.regime import Regime


@dataclass(frozen=True)
class Step:
    size: int
    duplicates: int
    indices: torch.Tensor  # int64 positions into the training set, on the CPU

    @property
    def samples(self) -> int:
        return len(self.indices) * self.duplicates


def derived_seed(*keys: int | str) -> int:
    """A 63-bit seed for a torch.Generator from (seed, purpose, counter, ...), well mixed."""
    words = [k if isinstance(k, int) else int.from_bytes(k.encode(), "little") for k in keys]
    hi, lo = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(hi) << 31) ^ int(lo)


def part_sizes(n: int, probs: list[float]) -> list[int]:
    """Split n into len(probs) counts proportional to probs that sum to n (largest remainder)."""
    exact = [n * p for p in probs]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(probs)), key=lambda i: (exact[i] - counts[i], -i), reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _parts(n: int, regime: Regime) -> list[tuple]:
    """(size config, number of images) per size: the epoch's disjoint split."""
    return list(zip(regime.sizes, part_sizes(n, [s.prob for s in regime.sizes]), strict=True))


def _cut(indices: torch.Tensor, batch: int) -> list[torch.Tensor]:
    chunks = list(torch.split(indices, batch))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        # A one-image step would be a BatchNorm batch of one (or D copies of one image):
        # the lone image joins the step before it instead.
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def epoch_steps(n: int, regime: Regime, seed: int, epoch: int) -> list[Step]:
    """The steps of one epoch over ``n`` images, in the order they run."""
    gen = torch.Generator().manual_seed(derived_seed(seed, "epoch", epoch))
    order = torch.randperm(n, generator=gen)
    steps: list[Step] = []
    start = 0
    for cfg, count in _parts(n, regime):
        part = order[start : start + count]
        start += count
        steps += [Step(cfg.size, cfg.duplicates, chunk) for chunk in _cut(part, cfg.batch) if len(chunk)]
    shuffled = torch.randperm(len(steps), generator=gen).tolist()
    return [steps[i] for i in shuffled]


def steps_per_epoch(n: int, regime: Regime) -> int:
    """Steps in every epoch (the split's counts do not depend on the permutation)."""
    total = 0
    for cfg, count in _parts(n, regime):
        full, rest = divmod(count, cfg.batch)
        total += full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)
    return total

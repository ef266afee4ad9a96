"""Learning-rate schedule: linear warm-up, then polynomial decay to zero (DeepLab's "poly")."""

from __future__ import annotations

import functools

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_poly(step: int, *, total_steps: int, warmup_steps: int = 0, power: float = 0.9) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    ``(step + 1) / warmup_steps`` during warm-up, then ``(1 - t) ** power`` where ``t`` goes
    from 0 at the end of warm-up to 1 at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - (step - warmup_steps) / decay_steps) ** power


def build_scheduler(
    optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0, power: float = 0.9
) -> LambdaLR:
    """A per-step ``LambdaLR`` following :func:`warmup_poly`."""
    schedule = functools.partial(
        warmup_poly, total_steps=total_steps, warmup_steps=warmup_steps, power=power
    )
    return LambdaLR(optimizer, schedule)

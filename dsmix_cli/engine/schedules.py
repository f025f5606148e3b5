"""Learning-rate schedules as pure functions of the optimizer step (a multiplier of the base LR).

Each stage builds a `torch.optim.lr_scheduler.LambdaLR` from one of these and steps it once per
optimizer step, so the LR at step s never depends on history and a resumed run continues the
exact curve.
"""

from __future__ import annotations

import math
from typing import Callable


def cosine(total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> Callable[[int], float]:
    """Single cosine annealing from 1 to `final` over `total_steps`, after a linear warm-up.

    The value at step s is the factor applied to the update taken at step s (0-based).
    """
    total_steps = max(int(total_steps), 1)

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        t = min(max(step - warmup_steps, 0), span) / span
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def step_decay(steps_per_epoch: int, every_epochs: int = 5, gamma: float = 0.9) -> Callable[[int], float]:
    """StepLR by epochs: multiply by `gamma` every `every_epochs` epochs (QEP: 0.9 every 5)."""
    steps_per_epoch = max(int(steps_per_epoch), 1)

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch
        return gamma ** (epoch // every_epochs)

    return factor


def with_warmup(factor: Callable[[int], float], warmup_steps: int) -> Callable[[int], float]:
    """`factor` times a linear warm-up over the first `warmup_steps` steps ((s + 1) / warmup)."""
    if warmup_steps <= 0:
        return factor

    def warmed(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) * factor(step)

    return warmed

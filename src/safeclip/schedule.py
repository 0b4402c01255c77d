"""The learning-rate schedule of the from-scratch runs: the world's base CLIP and the world's stand-in LM.

    from safeclip.schedule import warmup_cosine_schedule
    schedule = warmup_cosine_schedule(optimizer, warmup_steps=40, total_steps=248)   # step() after each update

Factor of the peak learning rate at step ``s`` (``s = 0`` for the first update):

    min(1, (s + 1) / warmup_steps) * 0.5 * (1 + cos(pi * min(s, total_steps) / total_steps))

i.e. a linear warm-up *multiplied into* a cosine decay over all ``total_steps`` (the cosine starts decaying at
step 0, and the first step already trains at ``1 / warmup_steps`` of the peak). ``transformers``'
``get_cosine_schedule_with_warmup`` has another shape (warm-up from 0 to the peak, then a cosine over the
remaining steps): at the base CLIP's default 248 steps the two differ by up to 0.16 of the peak rate, and even
its cosine factor (``num_warmup_steps=0``) times this warm-up differs in the last bit at 75 of the 248 steps
(``pi * (s / T)`` against ``pi * s / T``). Either would change the weights of every base and stand-in LM already
built and cached under the same key, so the formula is kept, written once here; ``tests/unit/test_schedule.py``
checks it against the formula above and shows the difference from ``transformers``'.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor at optimizer step ``step`` (see the module docstring)."""
    return min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, *, warmup_steps: int,
                           total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine_factor` to every parameter group's learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine_factor(s, warmup_steps=warmup_steps, total_steps=total_steps))

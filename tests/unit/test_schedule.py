"""The warm-up cosine schedule of the base CLIP and the world LM, checked against its formula, and the reason it
is not transformers' ``get_cosine_schedule_with_warmup`` (another shape: it would change every cached base)."""

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from safeclip.schedule import warmup_cosine_factor, warmup_cosine_schedule


def learning_rates(schedule, optimizer, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def optimizer(lr: float = 2e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


@pytest.mark.parametrize("warmup,total", [(40, 248), (20, 400), (20, 30), (40, 10)])
def test_rates_follow_the_written_formula_exactly(warmup, total):
    opt = optimizer()
    rates = learning_rates(warmup_cosine_schedule(opt, warmup_steps=warmup, total_steps=total), opt, total)
    expected = [2e-3 * (min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
                for s in range(total)]  # LambdaLR: base rate times the factor
    assert rates == expected  # bit for bit: the cached bases were trained with these numbers


def test_hand_values():
    # step 0: 1/40 of the peak, cosine factor 1; step 124 of 248: warm-up done, cosine at its middle (0.5)
    assert warmup_cosine_factor(0, warmup_steps=40, total_steps=248) == 1 / 40
    assert warmup_cosine_factor(124, warmup_steps=40, total_steps=248) == pytest.approx(0.5, abs=1e-15)
    assert warmup_cosine_factor(248, warmup_steps=40, total_steps=248) == 0.0


def test_transformers_schedule_has_another_shape():
    opt, hf_opt = optimizer(), optimizer()
    ours = learning_rates(warmup_cosine_schedule(opt, warmup_steps=40, total_steps=248), opt, 248)
    theirs = learning_rates(get_cosine_schedule_with_warmup(hf_opt, 40, 248), hf_opt, 248)
    assert theirs[0] == 0.0 and ours[0] == 2e-3 / 40  # theirs starts at 0, ours at 1/warmup of the peak
    assert max(abs(a - b) for a, b in zip(ours, theirs)) > 0.1 * 2e-3

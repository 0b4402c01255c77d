"""Projected gradient ascent (PGD) on images under an L-infinity budget, and its restarts variant.

    from safeclip.attacks.image import PixelBudget, pgd, pixel_space
    to01, from01 = pixel_space(bundle.image_processor)
    x = to01(pixel_values)                                  # (B, 3, H, W) in [0, 1]
    x_adv = pgd(lambda x: objective(from01(x)), x, PixelBudget(eps=4))   # |x_adv - x| <= 4/255, in [0, 1]

PGD (Madry et al. 2018) ascends a per-image objective ``loss(x) -> (B,)``: ``steps`` signed-gradient steps of
``step`` /255, each followed by the projection onto ``{|x' - x|_inf <= eps/255} ∩ [0, 1]^d``. The attack lives
in the preprocessed image (after resizing and cropping, before CLIP's mean/std normalisation), where 1/255 is one
grey level. ``restarts`` > 1 is the stronger variant: the first run starts at the clean image, every further one
at a uniform random point of the budget, and each image keeps its best run (highest objective).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from safeclip.errors import ConfigError

Objective = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) in [0, 1] -> (B,), higher = better attack


@dataclass
class PixelBudget:
    """How far and how long an image attack may go (``eps`` and ``step`` in grey levels, i.e. /255)."""

    eps: float = 4.0  # L-infinity radius, /255
    steps: int = 10
    step: float | None = None  # step size /255 (default: max(eps / 4, 0.25), so 10 steps can cross the ball)
    restarts: int = 1  # 1: plain PGD from the clean image; more: extra random starts, best kept per image
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.eps <= 255:
            raise ConfigError(f"pixel budget eps is in grey levels (/255) and must be in [0, 255], got {self.eps}")
        if self.steps < 1 or self.restarts < 1:
            raise ConfigError(f"pixel budget steps and restarts must be at least 1, got {self.steps} and {self.restarts}")

    @property
    def step_size(self) -> float:
        return (self.step if self.step is not None else max(self.eps / 4, 0.25)) / 255


def pixel_space(image_processor) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """``(to01, from01)``: CLIP-normalised pixels <-> [0, 1] images, with the processor's mean and std."""
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(image_processor.image_std, dtype=torch.float32)[None, :, None, None]

    def to01(pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() * std.to(pixels.device) + mean.to(pixels.device)).clamp(0, 1)

    def from01(images: torch.Tensor) -> torch.Tensor:
        return (images - mean.to(images.device)) / std.to(images.device)

    return to01, from01


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


def pgd_run(objective: Objective, x: torch.Tensor, budget: PixelBudget, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One PGD run from ``start``: the best iterate per image (clean start included) and its objective ``(B,)``."""
    eps = budget.eps / 255
    x_adv = _project(start, x, eps)
    with torch.no_grad():
        best, best_value = x_adv.clone(), objective(x_adv).detach()
    for _ in range(budget.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        value = objective(x_adv)
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        x_adv = _project(x_adv.detach() + budget.step_size * grad.sign(), x, eps)
        with torch.no_grad():
            value = objective(x_adv).detach()
        better = value > best_value
        best[better], best_value[better] = x_adv[better], value[better]
    return best, best_value


def pgd(objective: Objective, x: torch.Tensor, budget: PixelBudget) -> torch.Tensor:
    """``(B, 3, H, W)`` adversarial images within ``budget.eps``/255 of ``x`` (in [0, 1]) that raise ``objective``.

    ``budget.restarts`` runs (the first from ``x``, the others from uniform random points of the ball, drawn
    with ``budget.seed``); each image keeps its highest-objective iterate over all runs.
    """
    x = x.detach().float()
    generator = torch.Generator().manual_seed(budget.seed)
    eps = budget.eps / 255
    best, best_value = pgd_run(objective, x, budget, x)
    for _ in range(budget.restarts - 1):
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * eps
        candidate, value = pgd_run(objective, x, budget, x + noise)
        better = value > best_value
        best[better], best_value[better] = candidate[better], value[better]
    return best.detach()

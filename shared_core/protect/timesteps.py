"""Which diffusion timesteps the perturbation is optimised at.

In x_t = sqrt(abar_t) (x0 + delta) + sqrt(1 - abar_t) eps the perturbation reaches the model scaled by
sqrt(abar_t), so at large t it is drowned by noise. EUDP's point is to spend the optimisation
where the perturbation still matters; the schedules below are the candidate distributions, chosen
between by the efficacy benchmark.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: name -> weights over timesteps, given abar [T]; the result need not be normalised.
SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "uniform": lambda abar: torch.ones_like(abar),
    "survival": lambda abar: abar.sqrt(),
    "survival-squared": lambda abar: abar,
    "truncated": lambda abar: (torch.arange(abar.numel(), device=abar.device) < abar.numel() // 2).float(),
}


class TimestepSampler:
    """Draws integer timesteps from a schedule's weights, restricted to [t_min, t_max]."""

    def __init__(self, schedule: str, alphas_cumprod: torch.Tensor, t_min: int = 0, t_max: int | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown timestep schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
        total = alphas_cumprod.numel()
        t_max = total - 1 if t_max is None else min(t_max, total - 1)
        if not 0 <= t_min <= t_max:
            raise ValueError(f"timestep range [{t_min}, {t_max}] is empty for a {total}-step schedule")
        weights = SCHEDULES[schedule](alphas_cumprod.detach().float().cpu())
        window = torch.zeros_like(weights)
        window[t_min : t_max + 1] = 1
        weights = weights * window
        if weights.sum() <= 0:
            raise ValueError(f"schedule {schedule!r} puts no weight on [{t_min}, {t_max}]")
        self.schedule = schedule
        self.probabilities = weights / weights.sum()

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.probabilities, n, replacement=True, generator=generator)

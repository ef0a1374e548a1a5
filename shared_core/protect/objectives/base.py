"""What every objective shares: the attack context and the inner surrogate-training step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...surrogates.base import Surrogate
from ..timesteps import TimestepSampler


@dataclass
class AttackContext:
    """The state of one batch under attack, handed to the objective's hooks."""

    surrogate: Surrogate
    images: torch.Tensor  # clean pixels [B, 3, H, W] in [0, 1]
    conditioning: Any
    sampler: TimestepSampler
    generator: torch.Generator  # CPU generator: the same draws on every device
    noise_samples: int = 1
    delta: torch.Tensor | None = None
    autocast: dict = field(default_factory=lambda: {"device_type": "cpu", "enabled": False})

    def protected(self) -> torch.Tensor:
        """The current protected batch, detached (what an inner loop trains on)."""
        return (self.images + self.delta).clamp(0, 1).detach()

    def randn_like(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.randn(tensor.shape, generator=self.generator).to(tensor)

    def denoising_loss(self, pixels: torch.Tensor, params: dict | None = None, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample training loss at sampled (t, noise), averaged over `noise_samples` draws."""
        z0 = self.surrogate.encode(pixels) if latents is None else latents
        total = 0.0
        for _ in range(self.noise_samples):
            timesteps = self.sampler.sample(z0.shape[0], self.generator).to(z0.device)
            total = total + self.surrogate.denoising_loss(z0, timesteps, self.randn_like(z0), self.conditioning, params)
        return total / self.noise_samples


def copy_trainable(surrogate: Surrogate, name_filter: str = "all") -> dict[str, torch.Tensor]:
    """Fast weights for an inner loop: copies of the denoiser's parameters whose names match.

    `name_filter` is "all" or comma-separated substrings (e.g. "attn" for attention layers only,
    a fraction of the memory). The shared model itself is never modified.
    """
    patterns = None if name_filter == "all" else [p.strip() for p in name_filter.split(",") if p.strip()]
    copies = {
        name: param.detach().clone().requires_grad_(True)
        for name, param in surrogate.trainable_parameters().items()
        if patterns is None or any(p in name for p in patterns)
    }
    if not copies:
        raise ValueError(f"inner_params={name_filter!r} matches no parameter of the surrogate")
    return copies


def fit_surrogate(ctx: AttackContext, params: dict, optimizer: torch.optim.Optimizer, pixels: torch.Tensor, steps: int) -> float:
    """Train fast weights on `pixels` for `steps` steps (the victim's view); returns the last loss."""
    with torch.no_grad(), torch.autocast(**ctx.autocast):
        latents = ctx.surrogate.encode(pixels).float()
    loss_value = float("nan")
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(**ctx.autocast):
            loss = ctx.denoising_loss(pixels, params, latents=latents).mean()
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
    return loss_value


class Objective:
    """One protection method: a per-sample loss and the hooks around PGD steps.

    The engine ascends the loss when `maximise` is true and descends it otherwise; it owns
    batching, projection to the budget, masks, timestep sampling, robustness and progress.
    """

    name: ClassVar[str]
    maximise: bool = True
    #: timestep schedule used when the settings do not choose one
    default_schedule: ClassVar[str] = "uniform"

    def setup(self, ctx: AttackContext) -> None:
        """Called once per batch, before the first step."""

    def before_step(self, ctx: AttackContext, step: int) -> None:
        """Called before every PGD step (inner training loops live here)."""

    def loss(self, ctx: AttackContext, pixels: torch.Tensor) -> torch.Tensor:
        """Per-sample loss [B] of the (transformed) perturbed pixels."""
        raise NotImplementedError

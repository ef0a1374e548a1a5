"""The one PGD loop every protection method runs on.

It owns what methods share: the L-infinity budget and the valid pixel range, masks, timestep
sampling, expectation over robustness transforms, autocast, logging and progress. Objectives only
say what to optimise (see protect/objectives).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..surrogates.base import Surrogate
from .objectives import AttackContext, Objective, make_objective
from .settings import ProtectSettings
from .timesteps import TimestepSampler
from .transforms import RobustnessTransform

#: called after each PGD step with the number of steps done; may raise to cancel
StepCallback = Callable[[int], None]


@dataclass
class AttackResult:
    delta: torch.Tensor  # [B, 3, H, W], |delta| <= budget/255 and images + delta in [0, 1]
    losses: list[float]  # mean objective loss per step, for logs and tests


def craft_perturbation(
    surrogate: Surrogate,
    images: torch.Tensor,
    settings: ProtectSettings,
    *,
    masks: torch.Tensor | None = None,
    prompts: list[str] | None = None,
    objective: Objective | None = None,
    on_step: StepCallback | None = None,
) -> AttackResult:
    """Optimise a bounded perturbation for a batch of images [B, 3, H, W] in [0, 1].

    Args:
        masks: [B, 1, H, W] in [0, 1]; the budget at each pixel is scaled by the mask (0 = untouched).
        prompts: one per image; default `settings.prompt` for all.
        objective: an instance, to reuse or inspect; default built from `settings.method`.
    """
    device = surrogate.device
    images = images.to(device=device, dtype=torch.float32)
    batch = images.shape[0]
    objective = objective or make_objective(settings.method, settings.method_options)
    generator = torch.Generator().manual_seed(settings.seed)
    epsilon = settings.budget / 255.0
    step_size = settings.effective_step_size / 255.0
    bound = torch.full_like(images[:, :1], epsilon) if masks is None else masks.to(images).clamp(0, 1) * epsilon

    if settings.low_memory and hasattr(surrogate, "enable_low_memory"):
        surrogate.enable_low_memory()
    sampler = TimestepSampler(
        settings.timesteps or objective.default_schedule, surrogate.alphas_cumprod, settings.t_min, settings.t_max
    )
    ctx = AttackContext(
        surrogate=surrogate,
        images=images,
        conditioning=surrogate.encode_prompts(prompts or [settings.prompt] * batch),
        sampler=sampler,
        generator=generator,
        noise_samples=settings.noise_samples,
        autocast={
            "device_type": device.type,
            "dtype": surrogate.compute_dtype,
            "enabled": device.type != "cpu" and surrogate.compute_dtype != torch.float32,
        },
    )
    robustness = RobustnessTransform(settings.robust, generator)

    if settings.random_init:
        delta = (torch.rand(images.shape, generator=generator).to(images) * 2 - 1) * bound
    else:
        delta = torch.zeros_like(images)
    delta = (images + delta).clamp(0, 1) - images
    ctx.delta = delta
    objective.setup(ctx)
    direction = 1.0 if objective.maximise else -1.0
    losses: list[torch.Tensor] = []
    for step in range(settings.steps):
        objective.before_step(ctx, step)
        delta.requires_grad_(True)
        with torch.autocast(**ctx.autocast):
            loss = objective.loss(ctx, robustness(images + delta))
        (gradient,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            delta = delta + direction * step_size * gradient.sign()
            delta = torch.maximum(torch.minimum(delta, bound), -bound)
            delta = (images + delta).clamp(0, 1) - images
        ctx.delta = delta
        losses.append(loss.detach().mean())
        if on_step is not None:
            on_step(step + 1)
    return AttackResult(delta=delta.detach(), losses=[value.item() for value in losses])

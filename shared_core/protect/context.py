"""The contexts the PGD engine hands to objectives: one batch of tiles, and the whole run.

They live apart from the engine so that objectives and the engine both import them, and the engine
reaches the objectives only through their registry (protect/objectives): no circle between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ProtectionError
from ..surrogates.base import Surrogate
from ..surrogates.host_tensors import first_weight
from .inner import InnerWeights
from .settings import ProtectSettings
from .tiles import Tile, crop
from .timesteps import TimestepSampler
from .transforms import RobustnessTransform


@dataclass
class AttackContext:
    """One PGD batch: tiles of equal shape, from one or several images, handed to objective hooks."""

    run: RunContext
    tiles: list[tuple[int, Tile]]  # (image index, tile)
    conditioning: object
    generator: torch.Generator  # CPU generator: the same draws on every device
    robustness: RobustnessTransform

    @property
    def images(self) -> torch.Tensor:
        """The clean tiles [B, 3, h, w] on the surrogate's device."""
        return self.run.crop_stack(self.run.images, self.tiles)

    def delta(self) -> torch.Tensor:
        return self.run.crop_stack(self.run.deltas, self.tiles)

    def protected(self) -> torch.Tensor:
        """The current protected tiles, detached (what an inner loop trains on)."""
        return (self.images + self.delta()).clamp(0, 1).detach()

    def denoising_loss(self, pixels: torch.Tensor, weights: InnerWeights | None = None, latents: torch.Tensor | None = None,
                       gradient: str = "backprop") -> torch.Tensor:  # fmt: skip
        """Per-sample training loss at sampled (t, noise), against the host's weights or `weights`; with gradient
        "sds" its gradient is the score-distillation one (no backward pass through the denoiser)."""
        return self.run.denoising_loss(pixels, self.conditioning, self.generator, weights, latents, gradient)


@dataclass
class RunContext:
    """The whole set under protection: images and perturbations (CPU), batches, shared samplers."""

    surrogate: Surrogate
    settings: ProtectSettings
    sampler: TimestepSampler
    autocast: dict
    generator: torch.Generator  # inner-loop minibatches and draws
    images: list[torch.Tensor]  # [3, H, W] in [0, 1], CPU
    deltas: list[torch.Tensor]
    bounds: list[torch.Tensor]  # [1, H, W] per-pixel budget
    batches: list[AttackContext] = field(default_factory=list)
    #: while set (an evaluation: several draws on one pixel tensor), `encode` computes each tensor's latents once
    reused_latents: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def crop_stack(self, arrays: list[torch.Tensor], tiles: list[tuple[int, Tile]]) -> torch.Tensor:
        return torch.stack([crop(arrays[i], tile) for i, tile in tiles]).to(self.surrogate.device)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The surrogate's latents of `pixels` (once per tensor while `reused_latents` is set)."""
        if self.reused_latents is None:
            return self.surrogate.encode(pixels)
        cached = self.reused_latents.get(id(pixels))
        if cached is None or cached[0] is not pixels:
            cached = self.reused_latents[id(pixels)] = (pixels, self.surrogate.encode(pixels))
        return cached[1]

    def denoising_loss(self, pixels, conditioning, generator, weights: InnerWeights | None = None, latents=None, gradient: str = "backprop") -> torch.Tensor:
        z0 = self.encode(pixels) if latents is None else latents
        total = 0.0
        overrides = weights.overrides() if weights is not None else None
        loss = self.surrogate.score_distillation_loss if gradient == "sds" else self.surrogate.denoising_loss
        for _ in range(self.settings.noise_samples):
            timesteps = self.sampler.sample(z0.shape[0], generator).to(z0.device)
            noise = torch.randn(z0.shape, generator=generator).to(device=z0.device, dtype=torch.float32)
            total = total + loss(z0.float(), timesteps, noise, conditioning, overrides)
        return total / self.settings.noise_samples

    def train(self, weights: InnerWeights, optimizer: torch.optim.Optimizer, steps: int, *, method: str, clean: bool = False) -> float:
        """Train `weights` for `steps` minibatches drawn from the whole set (the victim's view).

        `clean` trains on the clean images (ASPL's knowing surrogate), else on the current protected ones.
        Forward and backward both run while the weights are attached (checkpointed blocks recompute then).
        """
        loss_value = float("nan")
        for _ in range(steps):
            batch = self.batches[int(torch.randint(len(self.batches), (), generator=self.generator))]
            pixels = batch.images if clean else batch.protected()
            with torch.no_grad(), torch.autocast(**self.autocast):
                latents = self.surrogate.encode(pixels).float()
            optimizer.zero_grad(set_to_none=True)
            with weights.active():
                with torch.autocast(**self.autocast):
                    loss = self.denoising_loss(pixels, batch.conditioning, self.generator, weights, latents).mean()
                if not torch.isfinite(loss):
                    raise ProtectionError(failure_message(method, "the inner training loss", loss.item(), self.surrogate))
                loss.backward()
            optimizer.step()
            loss_value = loss.item()
        return loss_value


def failure_message(method: str, what: str, value: float, surrogate: Surrogate, step: int | None = None) -> str:
    """The ProtectionError text for a value gone wrong (non-finite, or a zero gradient), with what to try instead."""
    dtype = str(first_weight(surrogate.denoiser).dtype).replace("torch.", "")
    where = f" at step {step}" if step is not None else ""
    return (
        f"{method}: {what} became {value}{where} with a {dtype} denoiser on {surrogate.device}; nothing was protected. "
        "Try a float32 model (--dtype fp32 / ComfyUI without --fp16-unet), a smaller --step-size, or method advdm."
    )

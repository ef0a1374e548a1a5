"""PhotoGuard's encoder attack: pull the image's latent toward a target's latent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import Objective
from .targets import target_pixels

if TYPE_CHECKING:
    from ..context import AttackContext


class EncoderAttack(Objective):
    """PhotoGuard encoder attack (Salman et al., "Raising the Cost of Malicious AI-Powered Image
    Editing", ICML 2023).

    Minimises ||E(x + delta) - E(target)||^2 so the model's encoder sees the target instead of the
    image; no denoiser pass at all, so it is the cheapest method.

    Args:
        target: "gray" (PhotoGuard's default), "pattern" (a high-contrast texture, as in Mist),
            or the path of an image.

    Example:
        >>> ProtectSettings(method="encoder", method_options={"target": "pattern"})
    """

    name = "encoder"
    maximise = False

    def __init__(self, target: str = "gray"):
        self.target = target
        self.target_latents: dict[tuple[int, ...], torch.Tensor] = {}

    def setup(self, run) -> None:
        self.target_latents = {}

    def target_latent(self, ctx: AttackContext, pixels: torch.Tensor) -> torch.Tensor:
        """The target's latents for a batch shaped like `pixels` (cached per shape)."""
        shape = tuple(pixels.shape)
        if shape not in self.target_latents:
            with torch.no_grad(), torch.autocast(**ctx.run.autocast):
                self.target_latents[shape] = ctx.run.surrogate.encode(target_pixels(self.target, pixels)).float()
        return self.target_latents[shape]

    def loss(self, ctx: AttackContext, pixels):
        latents = ctx.run.encode(pixels).float()
        return (latents - self.target_latent(ctx, pixels)).pow(2).flatten(1).mean(1)

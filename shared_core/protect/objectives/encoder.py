"""PhotoGuard's encoder attack: pull the image's latent toward a target's latent."""

from __future__ import annotations

import torch

from .base import AttackContext, Objective
from .targets import target_pixels


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
        self.target_latents: torch.Tensor | None = None

    def setup(self, ctx: AttackContext) -> None:
        pixels = target_pixels(self.target, ctx.images)
        with torch.no_grad(), torch.autocast(**ctx.autocast):
            self.target_latents = ctx.surrogate.encode(pixels).float()

    def loss(self, ctx: AttackContext, pixels):
        latents = ctx.surrogate.encode(pixels).float()
        return (latents - self.target_latents).pow(2).flatten(1).mean(1)

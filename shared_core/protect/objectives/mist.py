"""Mist: AdvDM's semantic loss plus a textural loss toward a target pattern."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .encoder import EncoderAttack

if TYPE_CHECKING:
    from ..context import AttackContext


class Mist(EncoderAttack):
    """Mist (Liang et al., "Mist: Towards Improved Adversarial Examples for Diffusion Models", 2023).

    Maximises  L_denoise(x + delta) - textural_weight * ||E(x + delta) - E(target)||^2 : the
    semantic term disturbs what the model learns, the textural term imprints the target pattern
    into what it reconstructs.

    Args:
        target: as for the encoder attack; default "pattern".
        textural_weight: weight of the textural term (Mist leaves it a tuning knob).

    Example:
        >>> ProtectSettings(method="mist", method_options={"textural_weight": 2.0})
    """

    name = "mist"
    maximise = True

    def __init__(self, target: str = "pattern", textural_weight: float = 1.0):
        super().__init__(target)
        self.textural_weight = float(textural_weight)

    def loss(self, ctx: AttackContext, pixels):
        latents = ctx.run.encode(pixels)
        semantic = ctx.denoising_loss(pixels, latents=latents)
        textural = (latents.float() - self.target_latent(ctx, pixels)).pow(2).flatten(1).mean(1)
        return semantic - self.textural_weight * textural

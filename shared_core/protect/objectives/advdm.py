"""AdvDM: error-maximising perturbation on the denoising loss of a fixed model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Objective

if TYPE_CHECKING:
    from ..context import AttackContext


class AdvDM(Objective):
    """AdvDM (Liang et al., "Adversarial Example Does Good", ICML 2023).

    Maximises the latent diffusion training loss E_t ||eps_theta(z_t, t, c) - eps||^2 of a fixed
    surrogate, Monte-Carlo over timesteps, under the engine's L-infinity budget. No options.

    Example:
        >>> craft_perturbation(surrogate, images, ProtectSettings(method="advdm", budget=8, steps=100))
    """

    name = "advdm"
    maximise = True

    def loss(self, ctx: AttackContext, pixels):
        return ctx.denoising_loss(pixels)

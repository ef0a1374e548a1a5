"""AdvDM: error-maximising perturbation on the denoising loss of a fixed model; FSGM, its one-step form."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Objective, checked_gradient

if TYPE_CHECKING:
    from ..context import AttackContext


class AdvDM(Objective):
    """AdvDM (Liang et al., "Adversarial Example Does Good", ICML 2023).

    Maximises the latent diffusion training loss E_t ||eps_theta(z_t, t, c) - eps||^2 of a fixed
    surrogate, Monte-Carlo over timesteps, under the engine's L-infinity budget.

    Args:
        gradient: "backprop" (default) or "sds" (score distillation: no backward pass through the
            denoiser; Xue et al., ICLR 2024).

    Example:
        >>> craft_perturbation(surrogate, images, ProtectSettings(method="advdm", budget=8, steps=100))
    """

    name = "advdm"
    maximise = True

    def __init__(self, gradient: str = "backprop"):
        self.gradient = checked_gradient(gradient)

    def loss(self, ctx: AttackContext, pixels):
        return ctx.denoising_loss(pixels, gradient=self.gradient)


class FSGM(AdvDM):
    """FSGM, Anti-DreamBooth's one-step baseline (Van Le et al., ICCV 2023): x + budget * sign(grad).

    AdvDM's loss taken in a single signed step of the whole budget from the clean image (no random
    start): `ProtectSettings` fixes steps=1, step_size=budget and random_init=False for it.
    Options as AdvDM.

    Example:
        >>> ProtectSettings(method="fsgm", budget=8)
    """

    name = "fsgm"

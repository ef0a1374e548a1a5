"""SDS(+/-): the denoising loss pushed by its score-distillation gradient, up or down."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import SettingsError
from .base import Objective

if TYPE_CHECKING:
    from ..context import AttackContext


class SDS(Objective):
    """SDS(+) and SDS(-) (Xue et al., "Toward effective protection against diffusion-based mimicry
    through score distillation", ICLR 2024).

    The latent diffusion loss's gradient is taken by score distillation, w (eps_theta(z_t) - eps)
    dz/dx, without back-propagating through the denoiser: the attack's cost is the encoder's
    backward pass plus a forward pass of the denoiser (about half AdvDM's time and memory). The
    authors find the encoder the vulnerable part of a latent diffusion model and that minimising
    (SDS(-)) protects better than maximising; "-" is the default. Every denoising-loss method also
    takes this gradient with the option gradient=sds.

    Args:
        sign: "min" (SDS(-), default) or "max" (SDS(+)).

    Example:
        >>> ProtectSettings(method="sds", method_options={"sign": "max"})
    """

    name = "sds"

    def __init__(self, sign: str = "min"):
        if sign not in ("min", "max"):
            raise SettingsError(f"sign must be 'min' or 'max', not {sign!r}")
        self.sign = sign
        self.maximise = sign == "max"

    def loss(self, ctx: AttackContext, pixels):
        return ctx.denoising_loss(pixels, gradient="sds")

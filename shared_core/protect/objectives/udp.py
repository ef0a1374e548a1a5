"""Unlearnable Diffusion Perturbation and its timestep-aware variant EUDP."""

from __future__ import annotations

import torch

from .base import AttackContext, Objective, copy_trainable, fit_surrogate


class UDP(Objective):
    """UDP (Zhao et al., "Unlearnable Examples for Diffusion Models: Protect Data from Unauthorized
    Exploitation", 2023): a bi-level (max-min) perturbation.

    Alternates an inner loop that trains a copy of the surrogate on the protected batch (the
    victim's view) with PGD steps on the perturbation against that copy. The paper leaves the sign
    of the outer step open: "min" makes the data error-minimising (the classic unlearnable-examples
    shortcut: the victim learns the noise, not the images), "max" error-maximising. "max" is the
    default because it protected more in every setting of the efficacy benchmark, where "min" did
    no better than random noise (benchmarks/README.md, "Decisions").

    Args:
        sign: "max" or "min" (default "max").
        inner_steps: surrogate training steps per inner round (default 5).
        inner_every: PGD steps between inner rounds (default 10).
        inner_lr: AdamW learning rate of the inner loop (default 1e-4).
        inner_params: "all" or comma-separated name substrings of the weights the inner loop
            adapts, e.g. "attn" (default "all").

    Example:
        >>> ProtectSettings(method="udp", method_options={"sign": "min", "inner_steps": 3})
    """

    name = "udp"

    def __init__(self, sign: str = "max", inner_steps: int = 5, inner_every: int = 10, inner_lr: float = 1e-4, inner_params: str = "all"):
        if sign not in ("min", "max"):
            raise ValueError(f"sign must be 'min' or 'max', not {sign!r}")
        self.sign = sign
        self.maximise = sign == "max"
        self.inner_steps = int(inner_steps)
        self.inner_every = max(1, int(inner_every))
        self.inner_lr = float(inner_lr)
        self.inner_params = inner_params

    def setup(self, ctx: AttackContext) -> None:
        self.params = copy_trainable(ctx.surrogate, self.inner_params)
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=self.inner_lr, weight_decay=0.0)

    def before_step(self, ctx: AttackContext, step: int) -> None:
        if step % self.inner_every == 0 and self.inner_steps > 0:
            fit_surrogate(ctx, self.params, self.optimizer, ctx.protected(), self.inner_steps)

    def loss(self, ctx: AttackContext, pixels):
        return ctx.denoising_loss(pixels, self.params)


class EUDP(UDP):
    """EUDP: UDP with timesteps drawn by the noise schedule (same paper).

    The perturbation reaches the model scaled by sqrt(abar_t), so EUDP samples timesteps where it
    survives: by default with probability proportional to sqrt(abar_t) ("survival"); any schedule
    in `protect.timesteps.SCHEDULES` can be chosen with `ProtectSettings.timesteps`. Options as UDP.
    """

    name = "eudp"
    default_schedule = "survival"

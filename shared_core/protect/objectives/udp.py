"""Unlearnable Diffusion Perturbation and its timestep-aware variant EUDP."""

from __future__ import annotations

import torch

from ...errors import SettingsError
from .base import InnerLoopObjective


class UDP(InnerLoopObjective):
    """UDP (Zhao et al., "Unlearnable Examples for Diffusion Models: Protect Data from Unauthorized
    Exploitation", 2023): a bi-level (max-min) perturbation over the protected dataset.

    Alternates an inner loop that trains a surrogate state on minibatches of the whole current
    protected set (the victim's view) with PGD steps on every image's perturbation against that
    state. The state is float32 LoRA adapters by default (or float32 master weights), so it
    trains on fp16/bf16 host models too. The paper leaves the sign of the outer step open: "min"
    makes the data error-minimising (the classic unlearnable-examples shortcut), "max"
    error-maximising (the default; see benchmarks/README.md, "Decisions").

    Args:
        sign: "max" or "min" (default "max").
        inner_steps: surrogate training minibatches per inner round (default 5).
        inner_every: PGD steps between inner rounds (default 5).
        inner_lr: AdamW learning rate of the inner loop (default 1e-3 for LoRA adapters, 1e-5
            for full weights).
        inner_params, lora_rank, lora_targets, scope, gradient: see `InnerLoopObjective`.

    Example:
        >>> ProtectSettings(method="udp", method_options={"sign": "min", "inner_steps": 3})
    """

    name = "udp"

    def __init__(self, sign: str = "max", inner_steps: int = 5, inner_every: int = 5, inner_lr: float | None = None, **inner):
        super().__init__(**inner)
        if sign not in ("min", "max"):
            raise SettingsError(f"sign must be 'min' or 'max', not {sign!r}")
        self.sign = sign
        self.maximise = sign == "max"
        self.inner_steps = int(inner_steps)
        self.inner_every = max(1, int(inner_every))
        self.inner_lr = float(inner_lr) if inner_lr is not None else self.default_lr(1e-3, 1e-5)

    def setup(self, run) -> None:
        self.weights = self.new_weights(run)
        self.start = self.weights.clone()
        self.optimizer = torch.optim.AdamW(self.weights.parameters(), lr=self.inner_lr, weight_decay=0.0)

    def before_step(self, run, step: int) -> None:
        if step % self.inner_every == 0 and self.inner_steps > 0:
            run.train(self.weights, self.optimizer, self.inner_steps, method=self.name)

    def loss(self, ctx, pixels):
        return ctx.denoising_loss(pixels, self.weights, gradient=self.gradient)

    def attacked_weights(self):
        return self.weights


class EUDP(UDP):
    """EUDP: UDP with timesteps drawn by the noise schedule (same paper).

    The perturbation reaches the model scaled by sqrt(abar_t), so EUDP samples timesteps where it
    survives: by default with probability proportional to sqrt(abar_t) ("survival"); any schedule
    in `protect.timesteps.SCHEDULES` can be chosen with `ProtectSettings.timesteps`. Options as UDP.
    """

    name = "eudp"
    default_schedule = "survival"

"""MetaCloak: a pool of surrogates at different fine-tuning stages, each unrolled on the protected set,
attacked under random transformations."""

from __future__ import annotations

import math

import torch

from ..transforms import random_blur
from .base import InnerLoopObjective


class MetaCloak(InnerLoopObjective):
    """MetaCloak (Liu et al., "MetaCloak: Preventing Unauthorized Subject-driven Text-to-image
    Diffusion-based Synthesis via Meta-learning", CVPR 2024).

    A copier fine-tunes from wherever their model stands and keeps training on the protected
    images, so the perturbation is crafted against a pool of surrogate states at different stages
    of fine-tuning on the clean images (snapshots of one training run, as the authors' code takes
    them), and the state under attack keeps training on the current protected images between
    attack steps (the meta-learning unroll: the perturbation must still work after the victim's
    next updates). The states take turns; each serves an equal share of the PGD steps, starting
    again from its snapshot. Every loss is taken under a random Gaussian blur and horizontal flip
    (expectation over transformations), so the perturbation survives light preprocessing. The
    states are float32 (LoRA adapters by default), so fp16/bf16 hosts train them too.

    Args:
        pool_size: surrogate states in the pool (default 3; the authors' code keeps 6 snapshots
            of 1000 DreamBooth steps).
        stage_steps: fine-tuning minibatches on the clean images between snapshots (default 20).
        attack_steps: PGD steps between unrolls (default 6, as the authors' code).
        unroll_steps: minibatches each unroll trains the attacked state on the protected images
            (default 2, as the authors' code).
        lr: AdamW learning rate of both trainings (default 1e-3 for LoRA adapters, 5e-6 for full
            weights).
        blur_sigma_max: the blur's sigma is drawn from [0.1, blur_sigma_max] pixels at 512 px,
            scaled to the tile's width (default 2.0, as the authors' code); 0 turns the blur off.
        flip: flip horizontally with probability 1/2 (default True).
        inner_params, lora_rank, lora_targets, scope, gradient: see `InnerLoopObjective`.

    Example:
        >>> ProtectSettings(method="metacloak", budget=11, method_options={"pool_size": 6})
    """

    name = "metacloak"
    maximise = True

    def __init__(self, pool_size: int = 3, stage_steps: int = 20, attack_steps: int = 6, unroll_steps: int = 2, lr: float | None = None,
                 blur_sigma_max: float = 2.0, flip: bool = True, **inner):  # fmt: skip
        super().__init__(**inner)
        self.pool_size = max(1, int(pool_size))
        self.stage_steps = int(stage_steps)
        self.attack_steps = max(1, int(attack_steps))
        self.unroll_steps = int(unroll_steps)
        self.lr = float(lr) if lr is not None else self.default_lr(1e-3, 5e-6)
        self.blur_sigma_max = float(blur_sigma_max)
        self.flip = flip if isinstance(flip, bool) else str(flip).lower() in ("1", "true", "yes")

    def _optimizer(self, weights):
        return torch.optim.AdamW(weights.parameters(), lr=self.lr, weight_decay=0.0)

    def setup(self, run) -> None:
        state = self.new_weights(run)
        self.start = state.clone()
        optimizer = self._optimizer(state)
        self.pool = [state.clone()]
        for _ in range(self.pool_size - 1):
            run.train(state, optimizer, self.stage_steps, method=self.name, clean=True)
            self.pool.append(state.clone())
        self.steps_per_state = max(1, math.ceil(run.settings.steps / self.pool_size))
        self.attacked = self.pool[0]

    def before_step(self, run, step: int) -> None:
        into_turn = step % self.steps_per_state
        if into_turn == 0:  # the next state's turn: from its snapshot, with a fresh optimiser
            self.attacked = self.pool[(step // self.steps_per_state) % len(self.pool)].clone()
            self.optimizer = self._optimizer(self.attacked)
        elif into_turn % self.attack_steps == 0 and self.unroll_steps > 0:
            run.train(self.attacked, self.optimizer, self.unroll_steps, method=self.name)

    def transform(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random draw of the transformations, shared by the batch (as the authors' code draws it)."""
        if self.blur_sigma_max > 0:
            scale = pixels.shape[-1] / 512
            pixels = random_blur(pixels, generator, 0.1 * scale, max(0.1, self.blur_sigma_max) * scale)
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            pixels = pixels.flip(-1)
        return pixels

    def loss(self, ctx, pixels):
        return ctx.denoising_loss(self.transform(pixels, ctx.generator), self.attacked, gradient=self.gradient)

    def attacked_weights(self):
        return self.attacked

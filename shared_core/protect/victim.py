"""What a victim learns from a set: a fresh LoRA trained on it, scored by its own denoising loss.

UDP and EUDP act through the model a victim trains, so their own objective (measured against the
attacker's inner state) says little; a separately seeded LoRA of another rank, trained on the
protected set, is the check that does not share the attacker's weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .engine import _new_run, evaluate_objective
from .inner import LoRAWeights
from .objectives import Objective, make_objective
from .settings import ProtectSettings


class VictimLoss(Objective):
    """The denoising loss of a victim's trained adapters (under the engine's fixed draws)."""

    name = "victim"

    def __init__(self, weights: LoRAWeights):
        self.weights = weights

    def loss(self, ctx, pixels):
        return ctx.denoising_loss(pixels, self.weights)

    def active(self):
        return self.weights.active()


def victim_loss(surrogate, pixels: Sequence[torch.Tensor], settings: ProtectSettings, *, steps: int = 24, rank: int = 4,
                lr: float = 1e-3, seed: int = 1234, draws: int = 16) -> float:  # fmt: skip
    """Train a fresh victim LoRA on `pixels` ([3, H, W] in [0, 1]) and return its mean denoising loss on them.

    A lower loss than on clean or noisy versions of the set means the victim fits the set more
    easily (UDP's "minimise" sign); a higher one, that it fits it less (EUDP's "maximise").
    """
    weights = LoRAWeights(surrogate.denoiser, rank=rank, seed=seed)
    run = _new_run(surrogate, pixels, settings, make_objective("advdm"), random_start=False)
    run.train(weights, torch.optim.AdamW(weights.parameters(), lr=lr, weight_decay=0.0), steps, method="victim")
    return float(np.mean(evaluate_objective(surrogate, VictimLoss(weights), pixels, settings, draws=draws)))

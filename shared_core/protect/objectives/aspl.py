"""Anti-DreamBooth's ASPL: alternating surrogate learning with error-maximising PGD."""

from __future__ import annotations

import torch

from .base import InnerLoopObjective


class ASPL(InnerLoopObjective):
    """ASPL (Van Le et al., "Anti-DreamBooth: Protecting Users from Personalized Text-to-image
    Synthesis", ICCV 2023).

    Each round: copy the surrogate state and fine-tune the copy on the clean images (so it knows
    them, as a DreamBooth victim will), take `pgd_per_round` error-maximising steps against the
    copy, then train the state itself on the perturbed images. Both trainings draw minibatches
    from the whole set. Prior-preservation class images are not used (the surrogate's own
    knowledge plays that role). The state is float32 (LoRA adapters by default; the paper's
    full fine-tuning with inner_params=all), so fp16/bf16 hosts train it too.

    Args:
        train_steps: fine-tuning minibatches per round for each model (default 3, as the paper).
        pgd_per_round: PGD steps per round (default 6, as the paper).
        lr: AdamW learning rate of both fine-tunings (default 1e-3 for LoRA adapters; 5e-6, the
            paper's, for full weights).
        inner_params, lora_rank, lora_targets, scope, gradient: see `InnerLoopObjective`.

    Example:
        >>> ProtectSettings(method="aspl", steps=300, method_options={"inner_params": "all"})
    """

    name = "aspl"
    maximise = True

    def __init__(self, train_steps: int = 3, pgd_per_round: int = 6, lr: float | None = None, **inner):
        super().__init__(**inner)
        self.train_steps = int(train_steps)
        self.pgd_per_round = max(1, int(pgd_per_round))
        self.lr = float(lr) if lr is not None else self.default_lr(1e-3, 5e-6)

    def _optimizer(self, weights):
        return torch.optim.AdamW(weights.parameters(), lr=self.lr, weight_decay=0.0)

    def setup(self, run) -> None:
        self.base = self.new_weights(run)
        self.start = self.base.clone()
        self.base_optimizer = self._optimizer(self.base)
        self.attacked = self.base

    def before_step(self, run, step: int) -> None:
        if step % self.pgd_per_round:
            return
        if step > 0:
            run.train(self.base, self.base_optimizer, self.train_steps, method=self.name)
        self.attacked = self.base.clone()
        run.train(self.attacked, self._optimizer(self.attacked), self.train_steps, method=self.name, clean=True)

    def loss(self, ctx, pixels):
        return ctx.denoising_loss(pixels, self.attacked, gradient=self.gradient)

    def attacked_weights(self):
        return self.attacked

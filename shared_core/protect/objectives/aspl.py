"""Anti-DreamBooth's ASPL: alternating surrogate learning with error-maximising PGD."""

from __future__ import annotations

import torch

from .base import AttackContext, Objective, copy_trainable, fit_surrogate


class ASPL(Objective):
    """ASPL (Van Le et al., "Anti-DreamBooth: Protecting Users from Personalized Text-to-image
    Synthesis", ICCV 2023).

    Each round: copy the surrogate and fine-tune the copy on the clean images (so it knows them,
    as a DreamBooth victim will), take `pgd_per_round` error-maximising steps against the copy,
    then train the surrogate itself on the perturbed images. Prior-preservation class images are
    not used (the surrogate's own knowledge plays that role).

    Args:
        train_steps: fine-tuning steps per round for each model (default 3, as the paper).
        pgd_per_round: PGD steps per round (default 6, as the paper).
        lr: AdamW learning rate of both fine-tunings (default 5e-6, as the paper for SD).
        inner_params: "all" or name substrings of the adapted weights (default "all").

    Example:
        >>> ProtectSettings(method="aspl", steps=300, method_options={"lr": 1e-4})
    """

    name = "aspl"
    maximise = True

    def __init__(self, train_steps: int = 3, pgd_per_round: int = 6, lr: float = 5e-6, inner_params: str = "all"):
        self.train_steps = int(train_steps)
        self.pgd_per_round = max(1, int(pgd_per_round))
        self.lr = float(lr)
        self.inner_params = inner_params

    def _optimizer(self, params):
        return torch.optim.AdamW(params.values(), lr=self.lr, weight_decay=0.0)

    def setup(self, ctx: AttackContext) -> None:
        self.base = copy_trainable(ctx.surrogate, self.inner_params)
        self.base_optimizer = self._optimizer(self.base)
        self.attacked = self.base

    def before_step(self, ctx: AttackContext, step: int) -> None:
        if step % self.pgd_per_round:
            return
        if step > 0:
            fit_surrogate(ctx, self.base, self.base_optimizer, ctx.protected(), self.train_steps)
        self.attacked = {name: p.detach().clone().requires_grad_(True) for name, p in self.base.items()}
        fit_surrogate(ctx, self.attacked, self._optimizer(self.attacked), ctx.images, self.train_steps)

    def loss(self, ctx: AttackContext, pixels):
        return ctx.denoising_loss(pixels, self.attacked)

"""What every objective shares: the hooks the engine calls, and the inner-loop options."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, ClassVar

import torch

from ...errors import SettingsError
from ..inner import InnerWeights, make_inner_weights

if TYPE_CHECKING:
    from ..context import AttackContext, RunContext


GRADIENTS = ("backprop", "sds")


def checked_gradient(gradient: str) -> str:
    """The `gradient` option of the denoising-loss methods: "backprop" (through the denoiser) or "sds"."""
    if gradient not in GRADIENTS:
        raise SettingsError(f"gradient must be one of {', '.join(GRADIENTS)}, not {gradient!r}")
    return gradient


class Objective:
    """One protection method: a per-sample loss and the hooks around PGD steps.

    The engine ascends the loss when `maximise` is true and descends it otherwise; it owns
    batching, projection to the budget, masks, timestep sampling, robustness and progress.
    `scope` says what one optimisation spans: "dataset" (every image and tile of the run; what
    inner training loops need) or "batch" (each batch of tiles on its own).
    """

    name: ClassVar[str]
    maximise: bool = True
    scope: str = "dataset"
    #: timestep schedule used when the settings do not choose one
    default_schedule: ClassVar[str] = "uniform"

    def setup(self, run: RunContext) -> None:
        """Called once per optimisation (the whole set, or one batch with scope "batch")."""

    def before_step(self, run: RunContext, step: int) -> None:
        """Called before every PGD step over the set (inner training loops live here)."""

    def loss(self, ctx: AttackContext, pixels: torch.Tensor) -> torch.Tensor:
        """Per-sample loss [B] of the (transformed) perturbed pixels of one batch."""
        raise NotImplementedError

    def active(self) -> contextlib.AbstractContextManager:
        """Held around each PGD forward and backward (attaches an inner loop's adapters)."""
        return contextlib.nullcontext()


class InnerLoopObjective(Objective):
    """An objective that trains a float32 surrogate state between PGD steps (UDP, EUDP, ASPL).

    Args shared by those methods:
        inner_params: "lora" (default: float32 LoRA adapters on the attention projections, no
            second UNet in memory) or "all" / comma-separated weight-name substrings (float32
            master copies of those weights: full fine-tuning).
        lora_rank: adapter rank (default 8).
        lora_targets: "attention" (default) or "all" (every linear and conv layer).
        scope: "dataset" (default: one state trained on the whole protected set, as the victim
            trains) or "batch" (a fresh state per batch of tiles).
        gradient: "backprop" (default) or "sds": the PGD steps' gradient of the denoising loss by
            score distillation (Xue et al., ICLR 2024), without a backward pass through the
            denoiser (the inner training still back-propagates).
    """

    def __init__(self, inner_params: str = "lora", lora_rank: int = 8, lora_targets: str = "attention", scope: str = "dataset",
                 gradient: str = "backprop"):  # fmt: skip
        if scope not in ("dataset", "batch"):
            raise SettingsError(f"scope must be 'dataset' or 'batch', not {scope!r}")
        self.gradient = checked_gradient(gradient)
        self.inner_params = inner_params
        self.lora_rank = int(lora_rank)
        self.lora_targets = lora_targets
        self.scope = scope

    def new_weights(self, run: RunContext) -> InnerWeights:
        if run.settings.low_memory and self.inner_params != "lora":
            raise SettingsError("--low-memory works with the default inner_params=lora; full weight copies need the full memory")
        return make_inner_weights(run.surrogate, self.inner_params, rank=self.lora_rank, targets=self.lora_targets, seed=run.settings.seed)

    def attacked_weights(self) -> InnerWeights:
        """The state the PGD steps attack (and whose movement `inner_movement` reports)."""
        raise NotImplementedError

    def active(self) -> contextlib.AbstractContextManager:
        return self.attacked_weights().active()

    def inner_movement(self) -> float:
        """Relative change of the attacked state since setup (0 would mean the inner loop did nothing)."""
        return self.attacked_weights().distance(self.start)

    def default_lr(self, lora: float, full: float) -> float:
        return lora if self.inner_params == "lora" else full

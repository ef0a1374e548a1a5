"""Helpers for adapters over models a host application loaded (ComfyUI, A1111, Forge).

Hosts run under `torch.inference_mode()` and may hand over inference tensors, which autograd
cannot save for backward; adapters copy what they need out of that mode once.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import torch

from ..errors import SettingsError


def plain_copy(value: Any) -> Any:
    """Tensors in nested lists / tuples / dicts copied outside inference mode, without gradients."""
    if isinstance(value, torch.Tensor):
        with torch.inference_mode(False):
            return value.detach().clone()
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_copy(v) for v in value)
    return value


def first_weight(module: torch.nn.Module) -> torch.Tensor:
    """The module's first parameter or buffer (its device and dtype stand for the module's)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor
    raise SettingsError(f"{type(module).__name__} has no weights")


def checkpoint_blocks(blocks: list[torch.nn.Module]) -> None:
    """Gradient checkpointing for modules the caller owns: each block's activations are recomputed
    in the backward pass instead of stored (much less memory, about a third more compute)."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        if not getattr(block, "_unlearnable_checkpointed", False):
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
            block._unlearnable_checkpointed = True

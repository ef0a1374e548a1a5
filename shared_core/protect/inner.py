"""The weights an inner training loop adapts (UDP, EUDP, ASPL): always float32, whatever the host holds.

Hosts keep their denoiser in fp16 or bf16. Training those weights in place fails twice over:
AdamW's eps underflows in fp16 (every weight turns non-finite after one step) and small updates
round away in bf16. So the state an inner loop trains is a separate float32 tensor set:

* `LoRAWeights` (the default): low-rank adapters attached to the denoiser's attention projections
  (or every linear / conv layer) by forward hooks, for the duration of a call only. No second
  UNet in memory, the host's weights are never written, and a LoRA fine-tune (the most common
  victim) is exactly what it simulates. The adapter branch is computed in float32 from the
  layer's input and added to the layer's output, so updates never round away in the weights.
* `FullWeights`: float32 master copies of (a subset of) the denoiser's weights, cast to the
  host's dtype on every forward (gradients flow back to the masters), as in mixed-precision
  full fine-tuning.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..errors import SettingsError

#: attention projections, named alike in diffusers, ComfyUI and the LDM code A1111 runs
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


class InnerWeights:
    """Float32 trainable state an inner loop optimises; see the module docstring."""

    def parameters(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def overrides(self) -> dict[str, torch.Tensor] | None:
        """Weights to pass as the surrogate's `params` (None: the host's own)."""
        return None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Attach to the denoiser for the duration of one forward/backward."""
        yield

    def clone(self) -> InnerWeights:
        raise NotImplementedError

    def distance(self, other: InnerWeights) -> float:
        """Relative L2 change of the trained state from `other` (how far an inner loop moved it)."""
        raise NotImplementedError


def _is_linear(layer: torch.nn.Module) -> bool:
    """A torch Linear, or a host's own linear layer: Forge builds its UNet with a Linear that is a plain
    Module holding `weight` [out, in], `in_features` and `out_features` (weights load lazily)."""
    if isinstance(layer, torch.nn.Linear):
        return True
    weight = getattr(layer, "weight", None)
    return (isinstance(weight, torch.Tensor) and weight.dim() == 2 and getattr(layer, "in_features", None) == weight.shape[1]
            and getattr(layer, "out_features", None) == weight.shape[0])  # fmt: skip


class _Adapter:
    """One LoRA pair for a Linear or Conv2d layer: out += up(down(x)), computed in float32."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, conv: dict | None):
        self.down, self.up, self.conv = down, up, conv

    @classmethod
    def for_layer(cls, layer: torch.nn.Module, rank: int, generator: torch.Generator) -> _Adapter:
        if isinstance(layer, torch.nn.Conv2d):
            conv = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
            down_shape, up_shape = (rank, layer.in_channels, *layer.kernel_size), (layer.out_channels, rank, 1, 1)
        else:
            conv = None
            down_shape, up_shape = (rank, layer.in_features), (layer.out_features, rank)
        down = torch.randn(down_shape, generator=generator) / math.sqrt(math.prod(down_shape[1:]))
        device = layer.weight.device
        up = torch.zeros(up_shape, device=device)  # zero: the adapted model starts as the host's
        return cls(down.to(device).requires_grad_(True), up.requires_grad_(True), conv)

    def clone(self) -> _Adapter:
        return _Adapter(self.down.detach().clone().requires_grad_(True), self.up.detach().clone().requires_grad_(True), self.conv)

    def hook(self, _layer, args, output):
        x = args[0].float()  # under autocast the convolutions below still run in the autocast dtype
        if self.conv is not None:
            branch = F.conv2d(F.conv2d(x, self.down, **self.conv), self.up)
        else:
            branch = F.linear(F.linear(x, self.down), self.up)
        return output + branch.to(output.dtype)


class LoRAWeights(InnerWeights):
    """Float32 low-rank adapters on the denoiser's layers, attached by forward hooks.

    Args:
        denoiser: the surrogate's denoiser module (never modified; hooks are removed after each call).
        rank: adapter rank (default 8).
        targets: "attention" (to_q/to_k/to_v/to_out.0, the usual LoRA targets) or "all" (every
            Linear and Conv2d layer, like LoCon).
        seed: draws the adapters' initial down-projections.
    """

    def __init__(self, denoiser: torch.nn.Module, rank: int = 8, targets: str = "attention", seed: int = 0, *, _adapters=None):
        self.denoiser = denoiser
        self.rank, self.targets = int(rank), targets
        if _adapters is not None:
            self.adapters = _adapters
            return
        if targets not in ("attention", "all"):
            raise SettingsError(f"lora_targets must be 'attention' or 'all', not {targets!r}")
        generator = torch.Generator().manual_seed(seed)
        self.adapters: dict[str, _Adapter] = {}
        for name, layer in denoiser.named_modules():
            if not (_is_linear(layer) or isinstance(layer, torch.nn.Conv2d)) or getattr(layer, "weight", None) is None:
                continue
            if isinstance(layer, torch.nn.Conv2d) and layer.groups != 1:
                continue
            if targets == "attention" and not name.endswith(ATTENTION_PROJECTIONS):
                continue
            self.adapters[name] = _Adapter.for_layer(layer, self.rank, generator)
        if not self.adapters:
            raise SettingsError(
                f"no {'attention projection' if targets == 'attention' else 'linear or conv'} layers found in the denoiser "
                f"({type(denoiser).__name__}) to attach LoRA adapters to; use method option inner_params=all"
            )

    def parameters(self) -> list[torch.Tensor]:
        return [p for adapter in self.adapters.values() for p in (adapter.down, adapter.up)]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        modules = dict(self.denoiser.named_modules())
        handles = [modules[name].register_forward_hook(adapter.hook) for name, adapter in self.adapters.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def clone(self) -> LoRAWeights:
        adapters = {name: adapter.clone() for name, adapter in self.adapters.items()}
        return LoRAWeights(self.denoiser, self.rank, self.targets, _adapters=adapters)

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """The weight change each adapter stands for (up @ down), for measuring movement."""
        return {name: (a.up.flatten(1) @ a.down.flatten(1)).detach() for name, a in self.adapters.items()}

    def distance(self, other: LoRAWeights) -> float:
        modules = dict(self.denoiser.named_modules())
        mine, theirs = self.delta_weights(), other.delta_weights()
        change = sum(float((mine[n] - theirs[n]).pow(2).sum()) for n in mine)
        norm = sum(float(modules[n].weight.detach().float().pow(2).sum()) for n in mine)
        return math.sqrt(change / max(norm, 1e-30))


class FullWeights(InnerWeights):
    """Float32 master copies of the denoiser weights whose names match, cast to the host dtype per call.

    Args:
        weights: the surrogate's `trainable_parameters()`.
        name_filter: "all" or comma-separated name substrings (e.g. "attn": attention layers only).
    """

    def __init__(self, weights: dict[str, torch.Tensor], name_filter: str = "all", *, _masters=None, _dtypes=None):
        if _masters is not None:
            self.masters, self.dtypes = _masters, _dtypes
            return
        patterns = None if name_filter == "all" else [p.strip() for p in name_filter.split(",") if p.strip()]
        chosen = {n: w for n, w in weights.items() if patterns is None or any(p in n for p in patterns)}
        if not chosen:
            raise SettingsError(f"inner_params={name_filter!r} matches no weight of the surrogate's denoiser")
        self.dtypes = {n: w.dtype for n, w in chosen.items()}
        self.masters = {n: w.detach().float().clone().requires_grad_(True) for n, w in chosen.items()}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.masters.values())

    def overrides(self) -> dict[str, torch.Tensor]:
        return {n: m if self.dtypes[n] == torch.float32 else m.to(self.dtypes[n]) for n, m in self.masters.items()}

    def clone(self) -> FullWeights:
        masters = {n: m.detach().clone().requires_grad_(True) for n, m in self.masters.items()}
        return FullWeights({}, _masters=masters, _dtypes=self.dtypes)

    def distance(self, other: FullWeights) -> float:
        change = sum(float((m.detach() - other.masters[n].detach()).pow(2).sum()) for n, m in self.masters.items())
        norm = sum(float(m.detach().pow(2).sum()) for m in other.masters.values())
        return math.sqrt(change / max(norm, 1e-30))


def make_inner_weights(surrogate, inner_params: str, *, rank: int, targets: str, seed: int) -> InnerWeights:
    """`inner_params` = "lora" (adapters, the default) or "all" / name substrings (full float32 copies)."""
    if inner_params == "lora":
        return LoRAWeights(surrogate.denoiser, rank=rank, targets=targets, seed=seed)
    return FullWeights(surrogate.trainable_parameters(), inner_params)

"""Merging a LoRA / LyCORIS / PEFT file into diffusers modules, for generation-based checks.

diffusers' own loader handles kohya and PEFT LoRA but not LoHa or LoKr, which are common on model
sites; merging the weight deltas directly covers all of them with one code path. The caller
passes modules it owns (copies): the merge is in place.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputFileError
from .formats import ModuleEntry, group_modules
from .safetensors_header import PICKLE_SUFFIXES, TensorInfo, load_pickle_weights, load_tensors, read_safetensors_header

_LEGACY_PROCESSOR = re.compile(r"processor\.(to_q|to_k|to_v|to_out)_lora$")


@dataclass
class AppliedLora:
    path: str
    strength: float
    matched: int = 0
    unmatched: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


def _module_index(unet: torch.nn.Module | None, text_encoders: list[torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Every weight-bearing module under the names kohya and PEFT files use for it."""
    index: dict[str, torch.nn.Module] = {}

    def add(module, kohya_prefixes, peft_prefix):
        for name, sub in module.named_modules():
            if isinstance(getattr(sub, "weight", None), torch.Tensor):
                for prefix in kohya_prefixes:
                    index[prefix + name.replace(".", "_")] = sub
                index[f"{peft_prefix}.{name}"] = sub

    if unet is not None:
        add(unet, ["lora_unet_"], "unet")
    for position, encoder in enumerate(text_encoders):
        kohya = ["lora_te_", "lora_te1_"] if position == 0 else [f"lora_te{position + 1}_"]
        add(encoder, kohya, "text_encoder" if position == 0 else f"text_encoder_{position + 1}")
    return index


def _lookup(index: dict[str, torch.nn.Module], name: str) -> torch.nn.Module | None:
    if name in index:
        return index[name]
    normalised = _LEGACY_PROCESSOR.sub(lambda m: m.group(1) + (".0" if m.group(1) == "to_out" else ""), name)
    normalised = normalised.replace("base_model.model.", "")
    for candidate in (normalised, f"unet.{normalised}"):
        if candidate in index:
            return index[candidate]
    return None


def _weight(tensors: dict[str, torch.Tensor], entry: ModuleEntry, role: str) -> torch.Tensor:
    return tensors[f"{entry.name}.{_ROLE_SUFFIX[role]}"].float()


_ROLE_SUFFIX = {
    "down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha", "diff": "diff",
    "w1_a": "hada_w1_a", "w1_b": "hada_w1_b", "w2_a": "hada_w2_a", "w2_b": "hada_w2_b",
}  # fmt: skip
_PEFT_SUFFIX = {"peft": ("lora_A.weight", "lora_B.weight"), "peft-legacy": ("lora.down.weight", "lora.up.weight")}
_LOKR_SUFFIX = {"w1": "lokr_w1", "w2": "lokr_w2", "w1_a": "lokr_w1_a", "w1_b": "lokr_w1_b", "w2_a": "lokr_w2_a", "w2_b": "lokr_w2_b"}


def _low_rank_product(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """up @ down for linear (2-D) and conv (4-D) factors; kohya LoCon uses a k x k down, 1x1 up."""
    if down.dim() == 4:
        return torch.einsum("or,rihw->oihw", up.flatten(1), down)
    return up.flatten(1) @ down


def _delta(entry: ModuleEntry, tensors: dict[str, torch.Tensor], peft_scales: dict[str, float]) -> tuple[torch.Tensor, float] | None:
    """(weight delta, scale) of one module, or None for a type that cannot be merged here."""
    alpha_key = f"{entry.name}.alpha"
    alpha = float(tensors[alpha_key].float().reshape(-1)[0]) if alpha_key in tensors else None
    network = entry.network
    if network in ("lora", "locon"):
        up, down = _weight(tensors, entry, "up"), _weight(tensors, entry, "down")
        rank = down.shape[0]
        return _low_rank_product(up, down), (alpha / rank if alpha is not None else 1.0)
    if network in _PEFT_SUFFIX:
        down_suffix, up_suffix = _PEFT_SUFFIX[network]
        down, up = tensors[f"{entry.name}.{down_suffix}"].float(), tensors[f"{entry.name}.{up_suffix}"].float()
        component = entry.name.split(".", 1)[0]
        return _low_rank_product(up, down), peft_scales.get(component, 1.0)
    if network == "loha":
        if "t1" in entry.tensors:
            return None  # Tucker-decomposed conv LoHa
        w1 = _weight(tensors, entry, "w1_a") @ _weight(tensors, entry, "w1_b")
        w2 = _weight(tensors, entry, "w2_a") @ _weight(tensors, entry, "w2_b")
        rank = tensors[f"{entry.name}.hada_w1_b"].shape[0]
        return w1 * w2, (alpha / rank if alpha is not None else 1.0)
    if network == "lokr":
        if "t2" in entry.tensors:
            return None
        factors, rank = [], None
        for side in ("w1", "w2"):
            if side in entry.tensors:
                factors.append(tensors[f"{entry.name}.{_LOKR_SUFFIX[side]}"].float())
            else:
                a = tensors[f"{entry.name}.{_LOKR_SUFFIX[side + '_a']}"].float()
                b = tensors[f"{entry.name}.{_LOKR_SUFFIX[side + '_b']}"].float()
                rank = b.shape[0]
                factors.append(a @ b.flatten(1) if b.dim() > 2 else a @ b)
        scale = alpha / rank if (alpha is not None and rank) else 1.0
        return torch.kron(factors[0], factors[1]), scale
    if network == "full":
        return _weight(tensors, entry, "diff"), 1.0
    return None


def _peft_scales(metadata: dict[str, str]) -> dict[str, float]:
    """lora_alpha / r per component from diffusers' `lora_adapter_metadata` (default 1)."""
    try:
        config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        return {}
    scales = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        rank, alpha = config.get(f"{component}.r"), config.get(f"{component}.lora_alpha")
        if rank and alpha:
            scales[component] = float(alpha) / float(rank)
    return scales


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return load_pickle_weights(path), {}
    _, metadata = read_safetensors_header(path)
    return load_tensors(path), metadata


def _map_sgm_names(tensors: dict[str, torch.Tensor], unet) -> dict[str, torch.Tensor]:
    """SDXL kohya files use the original (SGM) block names; diffusers knows the mapping."""
    if unet is None or not any(p in key for key in tensors for p in ("input_blocks", "middle_block", "output_blocks")):
        return tensors
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    return _maybe_map_sgm_blocks_to_diffusers(tensors, unet.config)


def apply_lora(unet, text_encoders: list, path: str | Path, strength: float = 1.0) -> AppliedLora:
    """Merge `strength` x the file's weight deltas into `unet` and `text_encoders` in place."""
    path = Path(path)
    tensors, metadata = _read(path)
    tensors = _map_sgm_names(tensors, unet)
    index = _module_index(unet, [e for e in text_encoders if e is not None])
    modules, _ = group_modules({name: _shape_only(t) for name, t in tensors.items()})
    peft_scales = _peft_scales(metadata)
    result = AppliedLora(path=str(path), strength=strength)
    for name, entry in modules.items():
        if entry.network is None:
            continue
        target = _lookup(index, name)
        if target is None:
            result.unmatched.append(name)
            continue
        computed = _delta(entry, tensors, peft_scales)
        if computed is None:
            result.unsupported.append(name)
            continue
        delta, scale = computed
        weight = target.weight
        if delta.numel() != weight.numel():
            result.unmatched.append(f"{name} (shape {tuple(delta.shape)} vs {tuple(weight.shape)})")
            continue
        with torch.no_grad():
            weight.add_(delta.reshape(weight.shape).to(weight), alpha=strength * scale)
        result.matched += 1
    if result.matched == 0:
        raise InputFileError(
            path,
            f"none of its {len(modules)} adapted layers exists in this model (e.g. {next(iter(modules), '-')!r}): "
            "the LoRA was made for another base model family",
        )
    return result


def _shape_only(tensor: torch.Tensor) -> TensorInfo:
    return TensorInfo("F32", tuple(tensor.shape), 0, 0)

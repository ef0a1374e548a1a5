"""Merging a LoRA / LyCORIS / PEFT file into diffusers modules, for generation-based checks.

diffusers' own loader handles kohya and PEFT LoRA but not LoHa or LoKr, which are common on model
sites; merging each layer's weight delta directly covers all of them with one code path. kohya's
SDXL files name UNet layers after the original (SGM) blocks; diffusers' own block-index mapping is
reused for those. The caller passes modules it owns (copies): the merge is in place.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputFileError
from .formats import ModuleEntry, group_modules, is_incomplete
from .safetensors_header import PICKLE_SUFFIXES, TensorInfo, load_pickle_weights, load_tensors, read_safetensors_header

#: SGM layers outside the input/middle/output block structure -> diffusers names (kohya spelling)
_SGM_FIXED = {
    "lora_unet_input_blocks_0_0": "lora_unet_conv_in", "lora_unet_out_2": "lora_unet_conv_out",
    "lora_unet_time_embed_0": "lora_unet_time_embedding_linear_1", "lora_unet_time_embed_2": "lora_unet_time_embedding_linear_2",
    "lora_unet_label_emb_0_0": "lora_unet_add_embedding_linear_1", "lora_unet_label_emb_0_2": "lora_unet_add_embedding_linear_2",
}  # fmt: skip
#: after diffusers has renumbered the blocks: SGM block and ResNet layer names -> diffusers names
_SGM_RENAMES = (
    ("lora_unet_input_blocks_", "lora_unet_down_blocks_"), ("lora_unet_middle_block_", "lora_unet_mid_block_"),
    ("lora_unet_output_blocks_", "lora_unet_up_blocks_"), ("_in_layers_2", "_conv1"), ("_out_layers_3", "_conv2"),
    ("_emb_layers_1", "_time_emb_proj"), ("_skip_connection", "_conv_shortcut"), ("_downsamplers_0_op", "_downsamplers_0_conv"),
)  # fmt: skip
_SGM_BLOCKS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")


@dataclass
class AppliedLora:
    path: str
    strength: float
    matched: int = 0  # layers merged
    unmatched: list[str] = field(default_factory=list)  # layers this model lacks, or has with another shape
    unsupported: list[str] = field(default_factory=list)  # layers found but not merged, with the reason


def _module_index(unet: torch.nn.Module | None, text_encoders: list[torch.nn.Module | None]) -> dict[str, torch.nn.Module]:
    """Every weight-bearing module under the names kohya and PEFT files use for it.

    `text_encoders` are positional ([text_encoder, text_encoder_2]); a None keeps its slot.
    """
    index: dict[str, torch.nn.Module] = {}

    def add(root: torch.nn.Module, kohya_prefixes: list[str], peft_prefix: str, is_text_encoder: bool) -> None:
        for name, module in root.named_modules():
            if not isinstance(getattr(module, "weight", None), torch.Tensor):
                continue
            names = [name]
            if is_text_encoder and not name.startswith("text_model."):
                names.append(f"text_model.{name}")  # transformers 5's CLIPTextModel dropped the text_model level
            for alias in names:
                for prefix in kohya_prefixes:
                    index[prefix + alias.replace(".", "_")] = module
                index[f"{peft_prefix}.{alias}"] = module

    if unet is not None:
        add(unet, ["lora_unet_"], "unet", False)
    for position, encoder in enumerate(text_encoders):
        if encoder is None:
            continue
        kohya = ["lora_te_", "lora_te1_"] if position == 0 else [f"lora_te{position + 1}_"]
        add(encoder, kohya, "text_encoder" if position == 0 else f"text_encoder_{position + 1}", True)
    return index


def _lookup(index: dict[str, torch.nn.Module], name: str) -> torch.nn.Module | None:
    bare = name.removeprefix("base_model.model.")  # a raw PEFT `save_pretrained` adapter
    for candidate in (name, bare, f"unet.{bare}"):
        if candidate in index:
            return index[candidate]
    return None


def _rename_sgm(tensors: dict[str, torch.Tensor], unet, result: AppliedLora) -> dict[str, torch.Tensor]:
    """kohya SDXL keys (`lora_unet_input_blocks_4_1_...`) renamed to the diffusers UNet's layers."""
    layers_per_block = getattr(getattr(unet, "config", None), "layers_per_block", None)
    if not isinstance(layers_per_block, int) or not any(key.startswith(_SGM_BLOCKS) for key in tensors):
        return tensors
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    unet_keys, others = {}, {}
    for key, tensor in tensors.items():
        module, _, suffix = key.partition(".")
        if key.startswith("lora_unet_"):
            unet_keys[f"{_SGM_FIXED.get(module, module)}.{suffix}"] = tensor
        else:
            others[key] = tensor
    try:
        mapped = _maybe_map_sgm_blocks_to_diffusers(dict(unet_keys), unet.config)
    except (ValueError, IndexError, KeyError) as exc:
        result.unsupported.append(f"SGM block names not mappable to this UNet ({exc})")
        return tensors
    if len(mapped) < len(unet_keys):  # diffusers drops SGM keys from a file that mixes both namings
        result.unmatched.append(
            f"{len(unet_keys) - len(mapped)} SGM-named tensors dropped: the file mixes SGM and diffusers names"
        )
    renamed = {}
    for key, tensor in mapped.items():
        module, _, suffix = key.partition(".")
        for old, new in _SGM_RENAMES:
            module = module.replace(old, new)
        renamed[f"{module}.{suffix}"] = tensor
    return {**renamed, **others}


def _peft_scaler(metadata: dict[str, str]):
    """scale(module name, rank) from diffusers' `lora_adapter_metadata` (PEFT LoraConfig per component)."""
    try:
        config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except (json.JSONDecodeError, RecursionError):
        config = {}
    config = config if isinstance(config, dict) else {}

    def scale(name: str, rank: int) -> float:
        component, _, module = name.removeprefix("base_model.model.").partition(".")
        alpha = config.get(f"{component}.lora_alpha")
        pattern = config.get(f"{component}.alpha_pattern")
        for key, value in pattern.items() if isinstance(pattern, dict) else []:
            if module == key or module.endswith(f".{key}"):  # literal match: never run a regex from the file
                alpha = value
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or rank <= 0:
            return 1.0  # no config: diffusers' default lora_alpha = r
        return alpha / (math.sqrt(rank) if config.get(f"{component}.use_rslora") is True else rank)

    return scale


def _low_rank_product(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """up @ down for linear (2-D) and conv (4-D) factors; LoCon uses a k x k down and a 1x1 up."""
    if down.dim() == 4:
        return torch.einsum("or,rihw->oihw", up.flatten(1), down)
    return up.flatten(1) @ down.flatten(1)


def _delta(entry: ModuleEntry, tensors: dict[str, torch.Tensor], peft_scale) -> tuple[torch.Tensor, float] | str:
    """(weight delta, scale) of one layer, or the reason it is not merged."""

    def t(role: str) -> torch.Tensor:
        return tensors[entry.keys[role]].float()

    alpha = t("alpha").reshape(-1)[0].item() if "alpha" in entry.keys and tensors[entry.keys["alpha"]].numel() else None
    network = entry.network
    if "dora_scale" in entry.keys:
        return "DoRA (weight-decomposed) layers are not merged"
    if network in ("lora", "locon", "peft", "peft-legacy"):
        up, down = t("up"), t("down")
        rank = down.shape[0]
        if "mid" in entry.keys:  # Tucker / CP-decomposed LoCon: up(1x1) . mid(kxk) . down(1x1)
            delta = torch.einsum("abhw,oa,bc->ochw", t("mid"), up.flatten(1), down.flatten(1))
        else:
            delta = _low_rank_product(up, down)
        if alpha is not None:
            return delta, alpha / rank
        return delta, peft_scale(entry.name, rank) if network.startswith("peft") else 1.0
    if network == "loha":
        if "t1" in entry.keys:
            return "Tucker-decomposed LoHa layers are not merged"
        rank = entry.tensors["w1_b"].shape[0]
        delta = (t("w1_a") @ t("w1_b").flatten(1)) * (t("w2_a") @ t("w2_b").flatten(1))
        return delta, (alpha / rank if alpha is not None else 1.0)
    if network == "lokr":
        if "t2" in entry.keys:
            return "Tucker-decomposed LoKr layers are not merged"
        factors, rank = [], None
        for side in ("w1", "w2"):
            if side in entry.keys:
                factors.append(t(side).flatten(1))
            else:
                rank = entry.tensors[f"{side}_b"].shape[0]
                factors.append(t(f"{side}_a") @ t(f"{side}_b").flatten(1))
        # a 4-D w2 flattened to (out, in*k*k) gives the same element order as the 4-D Kronecker product
        return torch.kron(factors[0], factors[1]), (alpha / rank if alpha is not None and rank else 1.0)
    if network == "full":
        return t("diff"), 1.0
    return f"LyCORIS {network} layers are not merged"


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return load_pickle_weights(path), {}
    if path.suffix.lower() != ".safetensors":
        raise InputFileError(path, f"unsupported file type {path.suffix or '(none)'}: expected .safetensors")
    _, metadata = read_safetensors_header(path)
    return load_tensors(path), metadata


def apply_lora(unet, text_encoders: list, path: str | Path, strength: float = 1.0) -> AppliedLora:
    """Merge `strength` x the file's weight deltas into `unet` and `text_encoders` in place.

    `text_encoders` is positional: [text_encoder] for SD1/2, [text_encoder, text_encoder_2] for
    SDXL; None keeps a slot (kohya `lora_te1_`/`lora_te_` go to the first, `lora_te2_` to the second).

    Scale per layer is strength * alpha / rank (kohya, LyCORIS), or PEFT's lora_alpha / r.
    Raises InputFileError when no layer of the file exists in these modules (another base model).
    """
    path = Path(path)
    result = AppliedLora(path=str(path), strength=strength)
    tensors, metadata = _read(path)
    tensors = _rename_sgm(tensors, unet, result)
    modules, _ = group_modules({name: TensorInfo("F32", tuple(t.shape), 0, 0) for name, t in tensors.items()})
    index = _module_index(unet, list(text_encoders))
    peft_scale = _peft_scaler(metadata)
    found = 0
    for name, entry in modules.items():
        target = _lookup(index, name)
        if target is None:
            result.unmatched.append(name)
            continue
        found += 1
        computed = "incomplete (part of its weights is missing)" if is_incomplete(entry) else _delta(entry, tensors, peft_scale)
        if isinstance(computed, str):
            result.unsupported.append(f"{name}: {computed}")
            continue
        delta, scale = computed
        weight = target.weight
        if delta.numel() != weight.numel():
            result.unmatched.append(f"{name} (delta {tuple(delta.shape)} vs weight {tuple(weight.shape)})")
            continue
        if not torch.isfinite(delta).all():
            result.unsupported.append(f"{name}: NaN/Inf weights")
            continue
        with torch.no_grad():
            weight.add_(delta.reshape(weight.shape).to(weight), alpha=strength * scale)
            bias = getattr(target, "bias", None)
            if (
                "diff_b" in entry.keys
                and isinstance(bias, torch.Tensor)
                and bias.numel() == tensors[entry.keys["diff_b"]].numel()
            ):
                bias.add_(tensors[entry.keys["diff_b"]].reshape(bias.shape).to(bias), alpha=strength)
        result.matched += 1
    if result.matched == 0:
        if found and not any(" vs weight " in item for item in result.unmatched):
            raise InputFileError(path, f"none of its layers could be merged: {'; '.join(result.unsupported[:3])}")
        example = next((item for item in result.unmatched), "-")
        raise InputFileError(
            path,
            f"none of its {len(modules)} adapted layers fits this model (e.g. {example}): "
            "the LoRA was made for another base model family",
        )
    return result

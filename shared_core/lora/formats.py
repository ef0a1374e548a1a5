"""Which LoRA format a file is, what it targets, its ranks, and which base model it was made for."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .safetensors_header import TensorInfo

#: weight-name suffix -> (network type, role); the first match wins, longest suffixes first
SUFFIXES = {
    "lora_down.weight": ("lora", "down"), "lora_up.weight": ("lora", "up"),
    "lora_A.weight": ("peft", "down"), "lora_B.weight": ("peft", "up"),
    "lora.down.weight": ("peft-legacy", "down"), "lora.up.weight": ("peft-legacy", "up"),
    "hada_w1_a": ("loha", "w1_a"), "hada_w1_b": ("loha", "w1_b"), "hada_w2_a": ("loha", "w2_a"),
    "hada_w2_b": ("loha", "w2_b"), "hada_t1": ("loha", "t1"), "hada_t2": ("loha", "t2"),
    "lokr_w1": ("lokr", "w1"), "lokr_w2": ("lokr", "w2"), "lokr_w1_a": ("lokr", "w1_a"), "lokr_w1_b": ("lokr", "w1_b"),
    "lokr_w2_a": ("lokr", "w2_a"), "lokr_w2_b": ("lokr", "w2_b"), "lokr_t2": ("lokr", "t2"),
    "oft_blocks": ("oft", "blocks"), "oft_diag": ("oft", "blocks"), "diff": ("full", "diff"), "diff_b": ("full", "diff_b"),
    "on_input": ("ia3", "on_input"), "alpha": (None, "alpha"), "dora_scale": (None, "dora_scale"),
}  # fmt: skip
_ORDERED_SUFFIXES = sorted(SUFFIXES, key=len, reverse=True)
FORMAT_NAMES = {
    "lora": "kohya LoRA", "locon": "kohya LoCon (LoRA on conv layers too)", "peft": "diffusers / PEFT LoRA",
    "peft-legacy": "diffusers LoRA (legacy attention-processor layout)", "loha": "LyCORIS LoHa",
    "lokr": "LyCORIS LoKr", "oft": "LyCORIS OFT", "ia3": "LyCORIS IA3", "full": "LyCORIS full (weight diff)",
}  # fmt: skip


@dataclass
class ModuleEntry:
    """All tensors of one adapted layer, by role (down/up, w1_a, ..., alpha)."""

    name: str
    network: str | None = None
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def rank(self) -> int | None:
        role_dim = {"down": 0, "w1_b": 0, "w2_b": 0, "w1_a": 1, "w2_a": 1}
        for role, dim in role_dim.items():
            if role in self.tensors and len(self.tensors[role].shape) > dim:
                return self.tensors[role].shape[dim]
        return None


@dataclass
class FormatReport:
    format: str  # key of FORMAT_NAMES, "mixed", or "unknown"
    description: str
    modules: dict[str, ModuleEntry]
    ranks: list[int]
    targets: dict[str, int]  # unet / text_encoder / text_encoder_2 / transformer -> modules
    layer_kinds: dict[str, int]  # attention / mlp / conv / other -> modules
    family: str
    family_evidence: list[str]
    unmatched_keys: list[str]
    incomplete_modules: list[str]


def split_key(key: str) -> tuple[str, str | None]:
    """('lora_unet_x', 'lora_down.weight') for 'lora_unet_x.lora_down.weight'."""
    for suffix in _ORDERED_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return key, None


def group_modules(infos: dict[str, TensorInfo]) -> tuple[dict[str, ModuleEntry], list[str]]:
    modules: dict[str, ModuleEntry] = {}
    unmatched = []
    for key, info in infos.items():
        name, suffix = split_key(key)
        if suffix is None:
            unmatched.append(key)
            continue
        network, role = SUFFIXES[suffix]
        entry = modules.setdefault(name, ModuleEntry(name))
        entry.tensors[role] = info
        if network:
            entry.network = network
    for entry in modules.values():
        if entry.network == "lora" and len(entry.tensors.get("down", TensorInfo("F32", (), 0, 0)).shape) == 4:
            entry.network = "locon"
    return modules, unmatched


_REQUIRED_ROLES = {
    "lora": {"down", "up"}, "locon": {"down", "up"}, "peft": {"down", "up"}, "peft-legacy": {"down", "up"},
    "loha": {"w1_a", "w1_b", "w2_a", "w2_b"}, "full": {"diff"}, "oft": {"blocks"}, "ia3": set(),
}  # fmt: skip


def _incomplete(entry: ModuleEntry) -> bool:
    if entry.network is None:
        return True
    if entry.network == "lokr":
        has_w1 = "w1" in entry.tensors or {"w1_a", "w1_b"} <= entry.tensors.keys()
        has_w2 = "w2" in entry.tensors or {"w2_a", "w2_b"} <= entry.tensors.keys()
        return not (has_w1 and has_w2)
    return not _REQUIRED_ROLES[entry.network] <= entry.tensors.keys()


def _target(name: str) -> str:
    lowered = name.lower()
    if lowered.startswith(("lora_te2_", "text_encoder_2.", "te2.")):
        return "text_encoder_2"
    if lowered.startswith(("lora_te_", "lora_te1_", "text_encoder.", "te1.", "te.")):
        return "text_encoder"
    if any(t in lowered for t in ("double_blocks", "single_blocks", "lora_transformer_", "transformer.", "joint_blocks")):
        return "transformer"
    if lowered.startswith(("lora_unet_", "unet.")) or "blocks" in lowered or "block_" in lowered:
        return "unet"
    return "other"


def _layer_kind(name: str, entry: ModuleEntry) -> str:
    lowered = name.lower()
    if any(t in lowered for t in ("attn", "attention", "to_q", "to_k", "to_v", "to_out", "q_proj", "k_proj", "v_proj", "out_proj")):
        return "attention"
    if any(t in lowered for t in ("ff", "mlp", "fc1", "fc2")):
        return "mlp"
    if entry.network == "locon" or any(len(t.shape) == 4 for t in entry.tensors.values()):
        return "conv"
    return "other"


def _cross_attention_width(modules: dict[str, ModuleEntry]) -> int | None:
    """Input width of a cross-attention key projection: 768 SD1, 1024 SD2, 2048 SDXL."""
    for name, entry in modules.items():
        lowered = name.lower().replace(".", "_")
        if "attn2_to_k" not in lowered and "attn2_to_v" not in lowered:
            continue
        for role in ("down", "w1_b", "w2_b"):
            if role in entry.tensors and len(entry.tensors[role].shape) >= 2:
                return entry.tensors[role].shape[1]
    return None


def guess_family(modules: dict[str, ModuleEntry], metadata: dict[str, str]) -> tuple[str, list[str]]:
    evidence: list[str] = []
    version = (metadata.get("ss_base_model_version") or "").lower()
    architecture = (metadata.get("modelspec.architecture") or "").lower()
    targets = Counter(_target(name) for name in modules)
    width = _cross_attention_width(modules)
    if targets["transformer"]:
        evidence.append("transformer-block keys (double_blocks / single_blocks / transformer.)")
        family = "Flux" if any("double_blocks" in n or "single_blocks" in n for n in modules) else "DiT (SD3 / Flux family)"
        return family, evidence
    if version.startswith("sdxl") or "xl" in architecture:
        evidence.append(f"metadata says {version or architecture}")
    if targets["text_encoder_2"]:
        evidence.append("second text encoder keys (lora_te2_ / text_encoder_2.)")
    if width == 2048:
        evidence.append("cross-attention input width 2048")
    if evidence:
        return "SDXL", evidence
    if width == 1024 or metadata.get("ss_v2", "").lower() == "true" or version.startswith("sd_v2"):
        evidence.append("cross-attention input width 1024" if width == 1024 else "metadata ss_v2 / sd_v2")
        return "SD 2.x", evidence
    if width == 768 or version.startswith("sd_v1"):
        evidence.append("cross-attention input width 768" if width == 768 else f"metadata says {version}")
        return "SD 1.x", evidence
    if width:
        return "unknown", [f"cross-attention input width {width} matches no known family"]
    return "unknown", ["no cross-attention layer or base-model metadata to tell from"]


def detect_format(infos: dict[str, TensorInfo], metadata: dict[str, str]) -> FormatReport:
    modules, unmatched = group_modules(infos)
    networks = Counter(entry.network for entry in modules.values() if entry.network)
    if not networks:
        kind = "unknown"
    elif len(networks) == 1 or set(networks) == {"lora", "locon"}:
        kind = "locon" if "locon" in networks else next(iter(networks))
    else:
        kind = "mixed"
    description = FORMAT_NAMES.get(kind, "mixed LoRA/LyCORIS types" if kind == "mixed" else "unknown key layout")
    family, evidence = guess_family(modules, metadata)
    return FormatReport(
        format=kind,
        description=description,
        modules=modules,
        ranks=sorted({entry.rank for entry in modules.values() if entry.rank}),
        targets=dict(Counter(_target(name) for name in modules)),
        layer_kinds=dict(Counter(_layer_kind(name, entry) for name, entry in modules.items())),
        family=family,
        family_evidence=evidence,
        unmatched_keys=unmatched,
        incomplete_modules=sorted(name for name, entry in modules.items() if _incomplete(entry)),
    )

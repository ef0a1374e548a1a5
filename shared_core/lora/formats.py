"""Which LoRA format a file is, what it targets, its ranks, and which base model it was made for.

Everything here works from tensor names and shapes (the header alone), so a file is described
before any of its weights is read.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .safetensors_header import TensorInfo

#: key suffix -> (network type, or None for a role any type can have; role); longest suffix wins
SUFFIXES = {
    "lora_down.weight": ("lora", "down"), "lora_up.weight": ("lora", "up"), "lora_mid.weight": ("lora", "mid"),
    "lora_A.weight": ("peft", "down"), "lora_B.weight": ("peft", "up"),
    "lora.down.weight": ("peft-legacy", "down"), "lora.up.weight": ("peft-legacy", "up"),
    "lora_linear_layer.down.weight": ("peft-legacy", "down"), "lora_linear_layer.up.weight": ("peft-legacy", "up"),
    "hada_w1_a": ("loha", "w1_a"), "hada_w1_b": ("loha", "w1_b"), "hada_w2_a": ("loha", "w2_a"),
    "hada_w2_b": ("loha", "w2_b"), "hada_t1": ("loha", "t1"), "hada_t2": ("loha", "t2"),
    "lokr_w1": ("lokr", "w1"), "lokr_w2": ("lokr", "w2"), "lokr_w1_a": ("lokr", "w1_a"), "lokr_w1_b": ("lokr", "w1_b"),
    "lokr_w2_a": ("lokr", "w2_a"), "lokr_w2_b": ("lokr", "w2_b"), "lokr_t2": ("lokr", "t2"),
    "oft_blocks": ("oft", "blocks"), "oft_diag": ("oft", "blocks"), "diff": ("full", "diff"), "diff_b": ("full", "diff_b"),
    "on_input": ("ia3", "on_input"), "alpha": (None, "alpha"), "dora_scale": (None, "dora_scale"),
}  # fmt: skip
_ORDERED_SUFFIXES = sorted(SUFFIXES, key=len, reverse=True)
#: diffusers < 0.21 attention-processor layout: `<attn>.processor.to_q_lora.down.weight`
_PROCESSOR_KEY = re.compile(r"^(?P<module>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up)\.weight$")
_CLIP_PROJECTIONS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
FORMAT_NAMES = {
    "lora": "kohya LoRA", "locon": "kohya LoCon (LoRA on conv layers too)", "peft": "diffusers / PEFT LoRA",
    "peft-legacy": "diffusers LoRA (legacy layout)", "loha": "LyCORIS LoHa", "lokr": "LyCORIS LoKr",
    "oft": "LyCORIS OFT", "ia3": "LyCORIS IA3", "full": "LyCORIS full (weight diff)",
    "mixed": "mixed LoRA / LyCORIS types", "unknown": "unknown key layout",
}  # fmt: skip
_REQUIRED_ROLES = {
    "lora": {"down", "up"}, "locon": {"down", "up"}, "peft": {"down", "up"}, "peft-legacy": {"down", "up"},
    "loha": {"w1_a", "w1_b", "w2_a", "w2_b"}, "full": {"diff"}, "oft": {"blocks"}, "ia3": {"weight", "on_input"},
}  # fmt: skip
_ATTENTION_WORDS = (
    "attn",
    "attention",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "proj_in",
    "proj_out",
)
_MLP_PATTERN = re.compile(r"(^|[._])(ff|ff_net|mlp|fc1|fc2)([._]|$)")
_CONV_PATTERN = re.compile(r"conv|in_layers|out_layers|skip_connection|samplers|(^|[._])op$")
_METADATA_FAMILIES = (
    ("sdxl", "SDXL"), ("stable-diffusion-xl", "SDXL"), ("sd_v2", "SD2.x"), ("stable-diffusion-v2", "SD2.x"),
    ("sd_v1", "SD1.x"), ("stable-diffusion-v1", "SD1.x"), ("flux", "Flux"), ("sd3", "SD3"), ("stable-diffusion-v3", "SD3"),
)  # fmt: skip
_CROSS_ATTENTION_FAMILIES = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
_TEXT_ENCODER_FAMILIES = {768: "SD1.x", 1024: "SD2.x"}  # CLIP ViT-L / OpenCLIP ViT-H hidden width


@dataclass
class ModuleEntry:
    """All tensors of one adapted layer, by role (down/up, w1_a, ..., alpha), and their keys."""

    name: str
    network: str | None = None
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # role -> tensor name in the file

    @property
    def rank(self) -> int | None:
        """The inner dimension: rows of lora_down / lora_A / hada_w1_b / lokr_w*_b."""
        for role in ("down", "w1_b", "w2_b"):
            if role in self.tensors and self.tensors[role].shape:
                return self.tensors[role].shape[0]
        return None

    @property
    def in_features(self) -> int | None:
        """Input width of the adapted layer where the factors show it (linear layers)."""
        shapes = {role: info.shape for role, info in self.tensors.items() if len(info.shape) >= 2}
        if self.network == "lokr":
            w1, w2 = shapes.get("w1", shapes.get("w1_b")), shapes.get("w2", shapes.get("w2_b"))
            return w1[1] * w2[1] if w1 and w2 and len(w2) == 2 else None
        for role in ("down", "w1_b", "diff"):
            if role in shapes:
                return shapes[role][1]
        return None

    def summary(self) -> dict:
        return {
            "name": self.name,
            "type": self.network,
            "rank": self.rank,
            "target": target_of(self.name),
            "layer": layer_kind(self),
            "shapes": {self.keys[role]: list(info.shape) for role, info in self.tensors.items()},
        }


@dataclass
class FormatReport:
    format: str  # key of FORMAT_NAMES
    description: str
    modules: dict[str, ModuleEntry]
    ranks: list[int]
    targets: dict[str, int]  # unet / text_encoder / text_encoder_2 / transformer / other -> modules
    layer_kinds: dict[str, int]  # attention / mlp / conv / other -> modules
    family: str
    family_evidence: list[str]
    unmatched_keys: list[str]
    incomplete_modules: list[str]
    dora: bool


def split_key(key: str, ia3_modules: set[str]) -> tuple[str, str | None, str] | None:
    """(module name, network type, role) for one tensor name, or None if it is no adapter weight."""
    legacy = _PROCESSOR_KEY.match(key)
    if legacy:
        module, proj = legacy["module"], legacy["proj"]
        if module.endswith("self_attn"):  # text encoder: CLIP's own projection names
            proj = _CLIP_PROJECTIONS[proj]
        elif proj == "to_out":
            proj = "to_out.0"
        return f"{module}.{proj}", "peft-legacy", legacy["role"]
    for suffix in _ORDERED_SUFFIXES:
        if key.endswith("." + suffix):
            network, role = SUFFIXES[suffix]
            return key[: -len(suffix) - 1], network, role
    if key.endswith(".weight") and key[: -len(".weight")] in ia3_modules:
        return key[: -len(".weight")], "ia3", "weight"
    return None


def group_modules(infos: dict[str, TensorInfo]) -> tuple[dict[str, ModuleEntry], list[str]]:
    """Tensors grouped by the layer they adapt, and the names that fit no known layout."""
    ia3_modules = {key[: -len(".on_input")] for key in infos if key.endswith(".on_input")}
    modules: dict[str, ModuleEntry] = {}
    unmatched = []
    for key, info in infos.items():
        parsed = split_key(key, ia3_modules)
        if parsed is None:
            unmatched.append(key)
            continue
        name, network, role = parsed
        entry = modules.setdefault(name, ModuleEntry(name))
        entry.tensors[role] = info
        entry.keys[role] = key
        if network:
            entry.network = network
    for entry in modules.values():
        down = entry.tensors.get("down")
        if entry.network == "lora" and down is not None and len(down.shape) == 4 and down.shape[2:] != (1, 1):
            entry.network = "locon"  # a k x k conv (ResNet) layer; 1x1 proj_in convs are plain LoRA
    return modules, unmatched


def is_incomplete(entry: ModuleEntry) -> bool:
    """A layer missing part of its weights (e.g. lora_down without lora_up, or an alpha alone)."""
    if entry.network is None:
        return True
    if entry.network == "lokr":
        roles = entry.tensors.keys()
        return not all(side in roles or {f"{side}_a", f"{side}_b"} <= roles for side in ("w1", "w2"))
    return not _REQUIRED_ROLES[entry.network] <= entry.tensors.keys()


def target_of(name: str) -> str:
    lowered = name.lower()
    if lowered.startswith(("lora_te2_", "text_encoder_2.")):
        return "text_encoder_2"
    if lowered.startswith(("lora_te_", "lora_te1_", "text_encoder.")):
        return "text_encoder"
    if lowered.startswith(("transformer.", "lora_transformer_", "diffusion_model.")) or any(
        block in lowered for block in ("double_blocks", "single_blocks", "joint_blocks")
    ):
        return "transformer"
    if lowered.startswith(("lora_unet_", "unet.")) or re.match(
        r"(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._]", lowered
    ):
        return "unet"
    return "other"


def layer_kind(entry: ModuleEntry) -> str:
    lowered = entry.name.lower()
    if any(word in lowered for word in _ATTENTION_WORDS):
        return "attention"
    if _MLP_PATTERN.search(lowered):
        return "mlp"
    if any(len(info.shape) == 4 for info in entry.tensors.values()) or _CONV_PATTERN.search(lowered):
        return "conv"
    return "other"


def _cross_attention_width(modules: dict[str, ModuleEntry]) -> int | None:
    """Input width of a cross-attention key/value projection: 768 SD1, 1024 SD2, 2048 SDXL."""
    for name, entry in modules.items():
        flat = name.lower().replace(".", "_")
        if ("attn2_to_k" in flat or "attn2_to_v" in flat) and entry.in_features:
            return entry.in_features
    return None


def _text_encoder_width(modules: dict[str, ModuleEntry]) -> int | None:
    for name, entry in modules.items():
        if (
            target_of(name) == "text_encoder"
            and any(p in name for p in ("q_proj", "k_proj", "v_proj", "fc1"))
            and entry.in_features
        ):
            return entry.in_features
    return None


def _family_from_weights(modules: dict[str, ModuleEntry]) -> tuple[str, str] | None:
    names = [name.lower() for name in modules]
    if any(block in name for name in names for block in ("double_blocks", "single_blocks", "single_transformer_blocks")):
        return "Flux", "Flux block names (double_blocks / single_blocks)"
    if any("joint_blocks" in name for name in names):
        return "SD3", "SD3 joint_blocks names"
    if any(target_of(name) == "transformer" for name in names):
        return "transformer (DiT) model", "transformer keys and no UNet"
    if any(target_of(name) == "text_encoder_2" for name in names):
        return "SDXL", "second text encoder keys (lora_te2_ / text_encoder_2.)"
    width = _cross_attention_width(modules)
    if width in _CROSS_ATTENTION_FAMILIES:
        return _CROSS_ATTENTION_FAMILIES[width], f"cross-attention (attn2.to_k / to_v) input width {width}"
    text_width = _text_encoder_width(modules)
    if text_width in _TEXT_ENCODER_FAMILIES:
        return _TEXT_ENCODER_FAMILIES[text_width], f"text encoder width {text_width}"
    if width:
        return "unknown", f"cross-attention input width {width} matches no known family"
    return None


def _family_from_metadata(metadata: dict[str, str]) -> tuple[str, str] | None:
    for key in ("ss_base_model_version", "modelspec.architecture"):
        value = metadata.get(key, "").lower()
        for marker, family in _METADATA_FAMILIES:
            if value.startswith(marker):
                return family, f"{key} = {metadata[key]!r}"
    if metadata.get("ss_v2", "").lower() == "true":
        return "SD2.x", "ss_v2 = 'True'"
    return None


def guess_family(modules: dict[str, ModuleEntry], metadata: dict[str, str]) -> tuple[str, list[str]]:
    """(family, evidence): the weights' shapes and names decide; metadata corroborates or fills in."""
    weights, claimed = _family_from_weights(modules), _family_from_metadata(metadata)
    if weights and weights[0] != "unknown":
        evidence = [weights[1]]
        if claimed:
            agreement = "agrees" if claimed[0] == weights[0] else f"disagrees ({claimed[0]}); the weights take precedence"
            evidence.append(f"metadata {claimed[1]} {agreement}")
        return weights[0], evidence
    if claimed:
        return claimed[0], [f"metadata only: {claimed[1]}"] + ([weights[1]] if weights else [])
    return "unknown", [
        weights[1] if weights else "no cross-attention layer, text-encoder layer or base-model metadata to tell from"
    ]


def detect_format(infos: dict[str, TensorInfo], metadata: dict[str, str]) -> FormatReport:
    modules, unmatched = group_modules(infos)
    networks = Counter(entry.network for entry in modules.values() if entry.network)
    if not networks:
        kind = "unknown"
    elif len(networks) == 1 or set(networks) == {"lora", "locon"}:
        kind = "locon" if "locon" in networks else next(iter(networks))
    else:
        kind = "mixed"
    dora = any("dora_scale" in entry.tensors for entry in modules.values())
    family, evidence = guess_family(modules, metadata)
    return FormatReport(
        format=kind,
        description=FORMAT_NAMES[kind] + (" with DoRA (weight-decomposed)" if dora else ""),
        modules=modules,
        ranks=sorted({entry.rank for entry in modules.values() if entry.rank}),
        targets=dict(Counter(target_of(name) for name in modules)),
        layer_kinds=dict(Counter(layer_kind(entry) for entry in modules.values())),
        family=family,
        family_evidence=evidence,
        unmatched_keys=unmatched,
        incomplete_modules=sorted(name for name, entry in modules.items() if is_incomplete(entry)),
        dora=dora,
    )

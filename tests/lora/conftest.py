"""Tiny real diffusers / transformers models and kohya LoRA files built from their real layer names."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

TRIGGER = "zqv"
KOHYA_METADATA = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "1"}),
    "ss_base_model_version": "sd_v1",
    "ss_v2": "False",
    "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_sd_model_hash": "e1441589",
    "ss_new_sd_model_hash": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    "ss_tag_frequency": json.dumps({"10_zqv style": {"zqv": 25, "1girl": 20, "landscape": 7}}),
    "ss_dataset_dirs": json.dumps({"10_zqv style": {"n_repeats": 10, "img_count": 25}}),
    "ss_training_comment": "style of my favourite artist",
    "ss_training_started_at": "1700000000.5",
    "ss_training_finished_at": "1700003600",
    "ss_num_train_images": "250",
    "ss_num_epochs": "10",
    "ss_learning_rate": "0.0001",
    "ss_resolution": "(512, 512)",
    "ss_output_name": "zqvstyle_v2",
    "sshs_model_hash": "abc123",
    "sshs_legacy_hash": "def456",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.title": "stolen style",
}


@pytest.fixture(scope="session")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        sample_size=16,
    ).eval()


@pytest.fixture(scope="session")
def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )  # fmt: skip
    return CLIPTextModel(config).eval()


def clip_layer_name(name: str) -> str:
    """The layer's name in a real CLIP state dict (transformers 5 dropped the `text_model.` level)."""
    return name if name.startswith("text_model.") else f"text_model.{name}"


def kohya_state(unet, text_encoder, rank=4, alpha=2.0, seed=0) -> dict[str, torch.Tensor]:
    """A kohya SD1 LoRA on attention layers of the UNet and the text encoder, real kohya names."""
    generator = torch.Generator().manual_seed(seed)
    targets = [("lora_unet_", n, m) for n, m in unet.named_modules() if n.endswith(("attn1.to_q", "attn2.to_k", "attn2.to_v"))]
    targets += [("lora_te_", clip_layer_name(n), m) for n, m in text_encoder.named_modules() if n.endswith("self_attn.q_proj")]
    state = {}
    for prefix, name, module in targets:
        key = prefix + name.replace(".", "_")
        out_features, in_features = module.weight.shape
        state[f"{key}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * 0.1
        state[f"{key}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.1
        state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def module_named(root: torch.nn.Module, suffix: str) -> tuple[str, torch.nn.Module]:
    return next((n, m) for n, m in root.named_modules() if n.endswith(suffix))


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The helpers above, for test modules (which cannot import conftest under --import-mode=importlib)."""
    return SimpleNamespace(
        TRIGGER=TRIGGER,
        METADATA=KOHYA_METADATA,
        kohya_state=kohya_state,
        module_named=module_named,
        clip_layer_name=clip_layer_name,
    )

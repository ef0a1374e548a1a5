"""apply_lora merges each layer's delta exactly, into the right layer, and refuses another architecture."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from shared_core.errors import InputFileError
from shared_core.lora import apply_lora


@pytest.fixture
def models(tiny_unet, tiny_text_encoder):
    """Fresh copies: apply_lora merges in place."""
    return copy.deepcopy(tiny_unet), copy.deepcopy(tiny_text_encoder)


def loha_shapes(out_features: int, in_features: int, rank: int) -> dict[str, tuple[int, int]]:
    return {
        "hada_w1_a": (out_features, rank),
        "hada_w1_b": (rank, in_features),
        "hada_w2_a": (out_features, rank),
        "hada_w2_b": (rank, in_features),
    }


def unet_output(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 5, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def kohya_key(name: str, prefix: str = "lora_unet_") -> str:
    return prefix + name.replace(".", "_")


def test_kohya_lora_changes_the_output_by_exactly_its_delta(tmp_path, models, tiny_unet, kit):
    unet, text_encoder = models
    state = kit.kohya_state(unet, text_encoder, rank=4, alpha=2.0)
    save_file(state, str(tmp_path / "k.safetensors"), metadata=kit.METADATA)
    reference = copy.deepcopy(unet)
    expected = {}  # module -> W + strength * alpha/rank * up @ down, computed here independently
    for name, module in reference.named_modules():
        key = kohya_key(name)
        if f"{key}.lora_down.weight" in state:
            delta = state[f"{key}.lora_up.weight"] @ state[f"{key}.lora_down.weight"]
            expected[name] = module.weight.detach() + 0.8 * (2.0 / 4) * delta
            module.weight.data.copy_(expected[name])
    q_name, q_module = kit.module_named(text_encoder, "layers.1.self_attn.q_proj")
    q_key = kohya_key(kit.clip_layer_name(q_name), "lora_te_")
    q_expected = q_module.weight.detach() + 0.8 * 0.5 * state[f"{q_key}.lora_up.weight"] @ state[f"{q_key}.lora_down.weight"]

    applied = apply_lora(unet, [text_encoder], tmp_path / "k.safetensors", strength=0.8)

    assert (applied.matched, applied.unmatched, applied.unsupported) == (14, [], [])
    assert len(expected) == 12
    for name, module in unet.named_modules():
        if name in expected:
            torch.testing.assert_close(module.weight, expected[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(q_module.weight, q_expected, atol=1e-6, rtol=0)
    merged, original = unet_output(unet), unet_output(tiny_unet)
    torch.testing.assert_close(merged, unet_output(reference), atol=1e-5, rtol=0)
    assert (merged - original).abs().max() > 1e-3


def test_locon_conv_delta_equals_running_down_then_up(tmp_path, models):
    unet, _ = models
    conv = unet.down_blocks[0].resnets[0].conv1
    key = "lora_unet_down_blocks_0_resnets_0_conv1"
    down, up = torch.randn(3, conv.in_channels, 3, 3) * 0.1, torch.randn(conv.out_channels, 3, 1, 1) * 0.1
    save_file(
        {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(1.5)},
        str(tmp_path / "c.safetensors"),
    )
    x = torch.randn(1, conv.in_channels, 8, 8)
    with torch.no_grad():
        expected = conv(x) + 0.5 * F.conv2d(F.conv2d(x, down, padding=1), up)  # alpha / rank = 0.5
        apply_lora(unet, [], tmp_path / "c.safetensors")
        torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=0)


def test_loha_and_lokr_deltas(tmp_path, models):
    unet, _ = models
    linear = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
    out_f, in_f = linear.weight.shape
    loha = {f"{key}.{name}": torch.randn(shape) for name, shape in loha_shapes(out_f, in_f, 2).items()}
    loha[f"{key}.alpha"] = torch.tensor(1.0)
    save_file(loha, str(tmp_path / "h.safetensors"))
    before = linear.weight.detach().clone()
    apply_lora(unet, [], tmp_path / "h.safetensors", strength=2.0)
    hadamard = (loha[f"{key}.hada_w1_a"] @ loha[f"{key}.hada_w1_b"]) * (loha[f"{key}.hada_w2_a"] @ loha[f"{key}.hada_w2_b"])
    torch.testing.assert_close(linear.weight, before + 2.0 * 0.5 * hadamard, atol=1e-5, rtol=0)

    lokr = {f"{key}.lokr_w1": torch.randn(4, 4), f"{key}.lokr_w2_a": torch.randn(out_f // 4, 2)}
    lokr |= {f"{key}.lokr_w2_b": torch.randn(2, in_f // 4), f"{key}.alpha": torch.tensor(4.0)}
    save_file(lokr, str(tmp_path / "k.safetensors"))
    before = linear.weight.detach().clone()
    apply_lora(unet, [], tmp_path / "k.safetensors")
    kron = torch.kron(lokr[f"{key}.lokr_w1"], lokr[f"{key}.lokr_w2_a"] @ lokr[f"{key}.lokr_w2_b"])
    torch.testing.assert_close(linear.weight, before + 2.0 * kron, atol=1e-5, rtol=0)

    conv = unet.down_blocks[1].resnets[0].conv2  # 64 -> 64, 3x3
    w1, w2 = torch.randn(4, 8), torch.randn(16, 8, 3, 3)
    save_file(
        {"lora_unet_down_blocks_1_resnets_0_conv2.lokr_w1": w1, "lora_unet_down_blocks_1_resnets_0_conv2.lokr_w2": w2},
        str(tmp_path / "kc.safetensors"),
    )
    before = conv.weight.detach().clone()
    apply_lora(unet, [], tmp_path / "kc.safetensors", strength=0.1)
    torch.testing.assert_close(conv.weight, before + 0.1 * torch.kron(w1[:, :, None, None], w2), atol=1e-5, rtol=0)


def test_peft_file_uses_lora_alpha_over_r_and_alpha_pattern(tmp_path, models, kit):
    unet, text_encoder = models
    k_name, k_module = kit.module_named(unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    o_name, o_module = kit.module_named(unet, "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_out.0")
    q_name, q_module = kit.module_named(text_encoder, "layers.0.self_attn.q_proj")
    state, expected = {}, {}
    for prefix, name, module, scale in (
        ("unet", k_name, k_module, 8 / 4),
        ("unet", o_name, o_module, 2 / 4),
        ("text_encoder", kit.clip_layer_name(q_name), q_module, 1.0),
    ):
        a, b = torch.randn(4, module.weight.shape[1]), torch.randn(module.weight.shape[0], 4)
        state[f"{prefix}.{name}.lora_A.weight"], state[f"{prefix}.{name}.lora_B.weight"] = a, b
        expected[module] = module.weight.detach() + scale * b @ a
    adapter = {"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"attentions.1.transformer_blocks.0.attn1.to_out.0": 2}}
    save_file(state, str(tmp_path / "p.safetensors"), metadata={"lora_adapter_metadata": json.dumps(adapter)})
    applied = apply_lora(unet, [text_encoder], tmp_path / "p.safetensors")
    assert applied.matched == 3
    for module, weight in expected.items():
        torch.testing.assert_close(module.weight, weight, atol=1e-5, rtol=0)


def test_kohya_sdxl_block_names_reach_the_right_layers(tmp_path, models):
    unet, _ = models
    sgm_to_diffusers = {
        "lora_unet_input_blocks_0_0": "conv_in",
        "lora_unet_time_embed_0": "time_embedding.linear_1",
        "lora_unet_input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
        "lora_unet_input_blocks_1_1_proj_in": "down_blocks.0.attentions.0.proj_in",
        "lora_unet_input_blocks_1_1_transformer_blocks_0_ff_net_2": "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
        "lora_unet_input_blocks_2_0_op": "down_blocks.0.downsamplers.0.conv",
        "lora_unet_input_blocks_3_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
        "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k": "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
        "lora_unet_middle_block_2_emb_layers_1": "mid_block.resnets.1.time_emb_proj",
        "lora_unet_output_blocks_3_1_proj_out": "up_blocks.1.attentions.1.proj_out",
        "lora_unet_output_blocks_2_0_out_layers_3": "up_blocks.1.resnets.0.conv2",
    }
    modules = dict(unet.named_modules())
    state, expected = {}, {}
    for key, name in sgm_to_diffusers.items():
        weight = modules[name].weight
        up, down = torch.randn(weight.shape[0], 2), torch.randn(2, weight[0].numel())
        state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
        expected[name] = weight.detach() + (up @ down).reshape(weight.shape)
    save_file(state, str(tmp_path / "xl.safetensors"))
    applied = apply_lora(unet, [], tmp_path / "xl.safetensors")
    assert (applied.matched, applied.unmatched) == (len(sgm_to_diffusers), [])
    for name, weight in expected.items():
        torch.testing.assert_close(modules[name].weight, weight, atol=1e-5, rtol=0, msg=name)


def test_another_architecture_is_refused(tmp_path, models):
    unet, text_encoder = models
    flux = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072),
            "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(9216, 4)}  # fmt: skip
    save_file(flux, str(tmp_path / "flux.safetensors"))
    with pytest.raises(InputFileError, match="made for another base model family") as info:
        apply_lora(unet, [text_encoder], tmp_path / "flux.safetensors")
    assert "flux.safetensors" in str(info.value)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # SD1.5's real name and widths
    sd15 = {f"{key}.lora_down.weight": torch.zeros(4, 768), f"{key}.lora_up.weight": torch.zeros(320, 4)}
    save_file(sd15, str(tmp_path / "sd15.safetensors"))
    before = unet_output(unet)
    with pytest.raises(InputFileError, match=r"delta \(320, 768\) vs weight \(32, 32\).*another base model"):
        apply_lora(unet, [text_encoder], tmp_path / "sd15.safetensors")
    assert torch.equal(unet_output(unet), before)


def test_layers_that_cannot_be_merged_are_reported(tmp_path, models, kit):
    unet, text_encoder = models
    state = kit.kohya_state(unet, text_encoder)
    keys = sorted(k for k in state if k.startswith("lora_unet_") and k.endswith("lora_down.weight"))
    state[keys[0]][0, 0] = float("nan")
    del state[keys[1].replace("lora_down", "lora_up")]
    save_file(state, str(tmp_path / "partial.safetensors"))
    applied = apply_lora(unet, [], tmp_path / "partial.safetensors")
    assert applied.matched == 10 and len(applied.unmatched) == 2  # the text-encoder layers: no encoder given
    assert sorted(applied.unsupported) == sorted(
        [f"{keys[0].split('.')[0]}: NaN/Inf weights", f"{keys[1].split('.')[0]}: incomplete (part of its weights is missing)"]
    )
    oft_key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{oft_key}.oft_blocks": torch.zeros(4, 8, 8)}, str(tmp_path / "oft.safetensors"))
    with pytest.raises(InputFileError, match="none of its layers could be merged: .*oft layers are not merged"):
        apply_lora(unet, [], tmp_path / "oft.safetensors")


def test_sdxl_text_encoders_keep_their_slots(tmp_path, models, tiny_text_encoder, kit):
    from transformers import CLIPTextModelWithProjection

    unet, text_encoder = models
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_encoder.config)  # keeps the `text_model.` level
    q_1 = text_encoder.encoder.layers[0].self_attn.q_proj
    q_2 = text_encoder_2.text_model.encoder.layers[0].self_attn.q_proj
    state = {}
    for prefix in ("lora_te1_", "lora_te2_"):
        key = f"{prefix}text_model_encoder_layers_0_self_attn_q_proj"
        state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = torch.randn(2, 32), torch.randn(32, 2)
    save_file(state, str(tmp_path / "xl_te.safetensors"))

    def delta(prefix: str) -> torch.Tensor:
        key = f"{prefix}text_model_encoder_layers_0_self_attn_q_proj"
        return state[f"{key}.lora_up.weight"] @ state[f"{key}.lora_down.weight"]

    before_1, before_2 = q_1.weight.detach().clone(), q_2.weight.detach().clone()
    applied = apply_lora(unet, [None, text_encoder_2], tmp_path / "xl_te.safetensors")
    assert (applied.matched, applied.unmatched) == (1, ["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"])
    torch.testing.assert_close(q_2.weight, before_2 + delta("lora_te2_"), atol=1e-5, rtol=0)
    apply_lora(unet, [text_encoder], tmp_path / "xl_te.safetensors")
    torch.testing.assert_close(q_1.weight, before_1 + delta("lora_te1_"), atol=1e-5, rtol=0)

"""LoRA files as users download them: kohya, LyCORIS, PEFT, SDXL, and broken or hostile ones."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from shared_core.errors import InputFileError
from shared_core.lora import apply_lora, inspect_lora, read_safetensors_header
from shared_core.surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline

TRIGGER = "zqv"
KOHYA_METADATA = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_base_model_version": "sd_v1",
    "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_new_sd_model_hash": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    "ss_tag_frequency": json.dumps({"10_zqv style": {"zqv": 25, "1girl": 20, "landscape": 7}}),
    "ss_dataset_dirs": json.dumps({"10_zqv style": {"n_repeats": 10, "img_count": 25}}),
    "ss_training_comment": "my style lora",
    "ss_training_started_at": "1700000000.5",
    "ss_num_train_images": "250",
    "ss_output_name": "stolen_style",
    "sshs_model_hash": "abc123",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.title": "stolen style",
}


@pytest.fixture(scope="module")
def tiny():
    pipeline = tiny_sd_pipeline(TinyLatentConfig(resolution=64))
    return pipeline.unet, pipeline.text_encoder


def kohya_name(prefix, module_name):
    return prefix + module_name.replace(".", "_")


def kohya_state(unet, text_encoder, rank=4, alpha=2.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    state = {}
    targets = [(n, m) for n, m in unet.named_modules() if n.endswith(("attn1.to_q", "attn2.to_k", "attn2.to_v"))]
    targets += [(n, m) for n, m in text_encoder.named_modules() if n.endswith("self_attn.q_proj")]
    for name, module in targets:
        prefix = "lora_unet_" if any(name == n for n, _ in unet.named_modules()) else "lora_te_"
        key = kohya_name(prefix, name)
        out_features, in_features = module.weight.shape
        state[f"{key}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * 0.1
        state[f"{key}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.1
        state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def test_kohya_lora_report_and_trigger(tmp_path, tiny):
    path = tmp_path / "style.safetensors"
    save_file(kohya_state(*tiny), str(path), metadata=KOHYA_METADATA)
    report = inspect_lora(path, triggers=[TRIGGER, "absent-token"])
    assert report.format == "lora" and report.ranks == [4] and report.alphas == [2.0]
    assert report.family == "SD 1.x" and report.targets["unet"] > 0 and report.targets["text_encoder"] > 0
    assert report.training.dataset_dirs["10_zqv style"]["img_count"] == 25
    assert report.training.tag_frequency["10_zqv style"][0] == ("zqv", 25)
    assert report.training.dates["ss_training_started_at"].startswith("2023-11-14T22:13:20")
    hits = [h for h in report.trigger_hits if h.trigger == TRIGGER]
    assert any(h.field.startswith("ss_tag_frequency[") and h.whole_token and h.count == 25 for h in hits)
    assert any("folder" in h.field for h in hits)
    assert not [h for h in report.trigger_hits if h.trigger == "absent-token"]
    text = report.to_text()
    assert "FOUND 'zqv'" in text and "corroborating only" in text and "SD 1.x" in text
    json.dumps(report.to_dict())


def test_kohya_family_from_cross_attention_width_without_metadata(tmp_path, tiny):
    unet, te = tiny
    state = kohya_state(unet, te)
    key = next(k for k in state if "attn2_to_k.lora_down" in k)
    state[key] = torch.randn(4, 768)  # SD1's CLIP width, as a real SD1 LoRA has
    save_file(state, str(tmp_path / "a.safetensors"))
    report = inspect_lora(tmp_path / "a.safetensors")
    assert report.family == "SD 1.x" and "768" in report.family_evidence[0]
    assert "no kohya training metadata" in report.to_text()


def test_sdxl_kohya_and_locon(tmp_path):
    state = {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(8, 768),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(768, 8),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(8, 1280),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(1280, 8),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(8, 2048),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(640, 8),
        "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight": torch.zeros(8, 320, 3, 3),
        "lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight": torch.zeros(320, 8, 1, 1),
    }
    save_file(state, str(tmp_path / "xl.safetensors"))
    report = inspect_lora(tmp_path / "xl.safetensors")
    assert report.family == "SDXL" and report.format == "locon" and report.targets["text_encoder_2"] == 1
    assert report.layer_kinds["conv"] == 1


def test_loha_lokr_and_peft_formats(tmp_path, tiny):
    unet, _ = tiny
    name, module = next((n, m) for n, m in unet.named_modules() if n.endswith("attn2.to_v"))
    out_f, in_f = module.weight.shape
    key = kohya_name("lora_unet_", name)
    loha = {f"{key}.hada_w1_a": torch.randn(out_f, 2), f"{key}.hada_w1_b": torch.randn(2, in_f),
            f"{key}.hada_w2_a": torch.randn(out_f, 2), f"{key}.hada_w2_b": torch.randn(2, in_f), f"{key}.alpha": torch.tensor(1.0)}
    save_file(loha, str(tmp_path / "loha.safetensors"), metadata={"ss_network_module": "lycoris.kohya", "ss_tag_frequency": json.dumps({"5_zqv": {"zqv": 3}})})
    report = inspect_lora(tmp_path / "loha.safetensors", triggers=[TRIGGER])
    assert report.format == "loha" and report.ranks == [2] and report.trigger_hits
    lokr = {f"{key}.lokr_w1": torch.randn(4, 4), f"{key}.lokr_w2_a": torch.randn(out_f // 4, 2), f"{key}.lokr_w2_b": torch.randn(2, in_f // 4)}
    save_file(lokr, str(tmp_path / "lokr.safetensors"))
    assert inspect_lora(tmp_path / "lokr.safetensors").format == "lokr"
    peft = {f"unet.{name}.lora_A.weight": torch.randn(4, in_f), f"unet.{name}.lora_B.weight": torch.randn(out_f, 4)}
    save_file(peft, str(tmp_path / "peft.safetensors"), metadata={"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})})
    report = inspect_lora(tmp_path / "peft.safetensors")
    assert report.format == "peft" and report.ranks == [4] and report.targets == {"unet": 1}


def test_apply_merges_the_expected_delta(tmp_path, tiny):
    import copy

    unet, te = (copy.deepcopy(m) for m in tiny)
    state = kohya_state(unet, te, rank=4, alpha=2.0)
    save_file(state, str(tmp_path / "k.safetensors"))
    name, module = next((n, m) for n, m in unet.named_modules() if n.endswith("attn2.to_k"))
    key = kohya_name("lora_unet_", name)
    before = module.weight.detach().clone()
    applied = apply_lora(unet, [te], tmp_path / "k.safetensors", strength=0.8)
    assert applied.matched == len(state) // 3 and not applied.unmatched
    expected = before + 0.8 * (2.0 / 4) * state[f"{key}.lora_up.weight"] @ state[f"{key}.lora_down.weight"]
    assert torch.allclose(module.weight, expected, atol=1e-5)
    # LoHa: (w1a @ w1b) * (w2a @ w2b) * alpha / rank
    v_name, v_module = next((n, m) for n, m in unet.named_modules() if n.endswith("attn2.to_v"))
    vk = kohya_name("lora_unet_", v_name)
    out_f, in_f = v_module.weight.shape
    loha = {f"{vk}.hada_w1_a": torch.randn(out_f, 2), f"{vk}.hada_w1_b": torch.randn(2, in_f),
            f"{vk}.hada_w2_a": torch.randn(out_f, 2), f"{vk}.hada_w2_b": torch.randn(2, in_f), f"{vk}.alpha": torch.tensor(1.0)}
    save_file(loha, str(tmp_path / "h.safetensors"))
    before = v_module.weight.detach().clone()
    apply_lora(unet, [te], tmp_path / "h.safetensors")
    expected = before + 0.5 * (loha[f"{vk}.hada_w1_a"] @ loha[f"{vk}.hada_w1_b"]) * (loha[f"{vk}.hada_w2_a"] @ loha[f"{vk}.hada_w2_b"])
    assert torch.allclose(v_module.weight, expected, atol=1e-5)


def test_apply_to_the_wrong_architecture_is_refused(tmp_path, tiny):
    state = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 640),
             "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(640, 4),
             "lora_unet_some_dit_block_attn.lora_down.weight": torch.zeros(4, 3072),
             "lora_unet_some_dit_block_attn.lora_up.weight": torch.zeros(3072, 4)}
    save_file(state, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputFileError, match="another base model"):
        apply_lora(tiny[0], [tiny[1]], tmp_path / "other.safetensors")


OFFSETS_HEADER = json.dumps({"a.lora_down.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()


def write_raw(path, header_length, payload=b""):
    path.write_bytes(struct.pack("<Q", header_length) + payload)
    return path


def test_malformed_and_hostile_files(tmp_path, tiny):
    good = tmp_path / "good.safetensors"
    save_file(kohya_state(*tiny), str(good))
    data = good.read_bytes()
    cases = {
        "truncated.safetensors": (lambda p: p.write_bytes(data[: len(data) // 2]), "outside|truncated"),
        "huge.safetensors": (lambda p: write_raw(p, 5 * 2**30, b"{}"), "more than the"),
        "longer.safetensors": (lambda p: write_raw(p, 4096, b"{}"), "only"),
        "notjson.safetensors": (lambda p: write_raw(p, 9, b"not json!"), "not valid JSON"),
        "offsets.safetensors": (lambda p: write_raw(p, len(OFFSETS_HEADER), OFFSETS_HEADER), "outside"),
        "tiny.safetensors": (lambda p: p.write_bytes(b"\x01\x02"), "too short"),
    }
    for name, (make, message) in cases.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(InputFileError, match=message) as info:
            inspect_lora(path)
        assert name in str(info.value)
    unknown = tmp_path / "unknown.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(unknown))
    with pytest.raises(InputFileError, match="unknown key layout"):
        inspect_lora(unknown)


def test_nan_weights_are_flagged(tmp_path, tiny):
    state = kohya_state(*tiny)
    key = next(iter(state))
    state[key][0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    report = inspect_lora(tmp_path / "nan.safetensors")
    assert report.nonfinite_tensors == [key] and "NaN/Inf" in report.to_text()


def test_pickles_only_with_weights_only(tmp_path, tiny):
    state = kohya_state(*tiny)
    torch.save(state, tmp_path / "ok.pt")
    with pytest.warns(UserWarning, match="weights_only"):
        report = inspect_lora(tmp_path / "ok.pt")
    assert report.format == "lora" and "pickle" in report.container

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.warns(UserWarning), pytest.raises(InputFileError, match="weights_only"):
        inspect_lora(tmp_path / "evil.pt")


def test_header_reader_checks_sizes_before_reading(tmp_path):
    path = write_raw(tmp_path / "x.safetensors", 2**40)
    with pytest.raises(InputFileError, match="more than the"):
        read_safetensors_header(path)

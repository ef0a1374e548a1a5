"""inspect_lora on the files users download: kohya, LyCORIS, PEFT, SDXL, Flux, stripped and damaged ones."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from shared_core.errors import InputFileError
from shared_core.lora import inspect_lora


def pair(key: str, rank: int, in_features: int, out_features: int, kernel: int | None = None) -> dict[str, torch.Tensor]:
    down = (rank, in_features, kernel, kernel) if kernel else (rank, in_features)
    up = (out_features, rank, 1, 1) if kernel else (out_features, rank)
    return {f"{key}.lora_down.weight": torch.randn(down) * 0.01, f"{key}.lora_up.weight": torch.randn(up) * 0.01}


def test_kohya_sd1_report_metadata_and_triggers(tmp_path, tiny_unet, tiny_text_encoder, kit):
    path = tmp_path / "style.safetensors"
    save_file(kit.kohya_state(tiny_unet, tiny_text_encoder), str(path), metadata=kit.METADATA)
    report = inspect_lora(path, triggers=[kit.TRIGGER, "nowhere", "  "])
    assert (report.format, report.ranks, report.alphas, report.alpha_source) == ("lora", [4], [2.0], "alpha tensors")
    assert report.family == "SD1.x" and report.family_evidence[0] == "metadata only: ss_base_model_version = 'sd_v1'"
    assert report.targets == {"unet": 12, "text_encoder": 2} and report.layer_kinds == {"attention": 14}
    assert report.module_count == 14 and not report.incomplete_modules and report.nonfinite_tensors == []
    assert report.scanned_tensors == report.total_tensors == 42
    training = report.training
    assert training.tag_frequency == {"10_zqv style": [("zqv", 25), ("1girl", 20), ("landscape", 7)]}
    assert training.dataset_dirs == {"10_zqv style": {"n_repeats": 10, "img_count": 25}}
    assert training.dates == {
        "ss_training_started_at": "2023-11-14T22:13:20+00:00",
        "ss_training_finished_at": "2023-11-14T23:13:20+00:00",
    }
    assert training.hashes == {"sshs_model_hash": "abc123", "sshs_legacy_hash": "def456"}
    assert training.modelspec["modelspec.title"] == "stolen style" and training.comment == "style of my favourite artist"
    assert training.hyperparameters["ss_network_args"] == {"conv_dim": "4", "conv_alpha": "1"}
    assert training.base_model["ss_new_sd_model_hash"].startswith("6ce0161689") and not training.malformed

    assert report.triggers_searched == [kit.TRIGGER, "nowhere"]
    hits = {(hit.field, hit.text, hit.whole_token, hit.count) for hit in report.trigger_hits}
    assert hits == {
        ("ss_tag_frequency[10_zqv style]", "zqv", True, 25),
        ("ss_tag_frequency folder name", "10_zqv style", True, None),
        ("dataset folder", "10_zqv style", True, None),
        ("ss_output_name", "zqvstyle_v2", False, None),  # substring only: 'zqvstyle' is another word
    }
    text = report.to_text()
    assert "FOUND 'zqv' (whole token) in ss_tag_frequency[10_zqv style]: zqv x25" in text
    assert "'nowhere': not found in the metadata" in text and "corroborating only" in text
    assert "SD1.x" in text and "2023-11-14T22:13:20+00:00" in text and "10_zqv style" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["evidence_note"].startswith("static evidence, corroborating only") and data["trigger_hits"][0]["trigger"] == "zqv"
    assert {m["name"]: m["rank"] for m in data["modules"]}["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == 4


def test_trigger_search_is_case_insensitive_and_covers_modelspec_and_comments(tmp_path):
    metadata = {
        "modelspec.trigger_phrase": "ZQV style",
        "ss_training_comment": "trained on zqv_art images",
        "ss_sd_model_name": "base",
    }
    save_file(
        pair("lora_unet_down_blocks_0_attentions_0_proj_in", 2, 320, 320), str(tmp_path / "t.safetensors"), metadata=metadata
    )
    report = inspect_lora(tmp_path / "t.safetensors", triggers=["zQv"])
    assert {(hit.field, hit.whole_token) for hit in report.trigger_hits} == {
        ("modelspec.trigger_phrase", True),
        ("ss_training_comment", True),
    }


def test_family_from_shapes_and_names(tmp_path):
    cases = {
        "SD1.x": pair("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k", 4, 768, 1280),
        "SD2.x": pair("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v", 4, 1024, 1280),
        "SDXL": pair("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 4, 2048, 640),
        "Flux": pair("lora_unet_double_blocks_0_img_attn_qkv", 16, 3072, 9216),
        "SD3": {"transformer.joint_blocks.0.x_block.attn.qkv.lora_A.weight": torch.zeros(4, 1536),
                "transformer.joint_blocks.0.x_block.attn.qkv.lora_B.weight": torch.zeros(4608, 4)},
    }  # fmt: skip
    for family, state in cases.items():
        save_file(state, str(tmp_path / f"{family}.safetensors"))
        report = inspect_lora(tmp_path / f"{family}.safetensors")
        assert report.family == family, (family, report.family_evidence)
    save_file(
        pair("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 8, 1024, 1024),
        str(tmp_path / "te.safetensors"),
        metadata={"ss_base_model_version": "sd_v1"},
    )
    report = inspect_lora(tmp_path / "te.safetensors")
    assert report.family == "SD2.x" and report.family_evidence == [
        "text encoder width 1024",
        "metadata ss_base_model_version = 'sd_v1' disagrees (SD1.x); the weights take precedence",
    ]
    save_file(pair("lora_unet_x", 2, 8, 8), str(tmp_path / "bare.safetensors"))
    assert inspect_lora(tmp_path / "bare.safetensors").family == "unknown"


def test_sdxl_kohya_with_two_text_encoders_and_locon(tmp_path):
    state = {
        **pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 8, 768, 768),
        **pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 8, 1280, 1280),
        **pair("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 8, 2048, 640),
        **pair("lora_unet_input_blocks_1_0_in_layers_2", 4, 320, 320, kernel=3),
        **pair("lora_unet_input_blocks_4_1_proj_in", 8, 640, 640, kernel=1),
        "lora_unet_input_blocks_1_0_in_layers_2.alpha": torch.tensor(1.0),
        "lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(4.0),
    }
    save_file(state, str(tmp_path / "xl.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    report = inspect_lora(tmp_path / "xl.safetensors")
    assert report.family == "SDXL" and report.family_evidence[0].startswith("second text encoder")
    assert "agrees" in report.family_evidence[1]
    assert report.format == "locon" and report.ranks == [4, 8] and report.alphas == [1.0, 4.0]
    assert report.targets == {"text_encoder": 1, "text_encoder_2": 1, "unet": 3}
    assert report.layer_kinds == {"attention": 4, "conv": 1}
    assert {m["name"]: m["type"] for m in report.modules}["lora_unet_input_blocks_4_1_proj_in"] == "lora"  # 1x1: not LoCon


def test_lycoris_loha_lokr_ia3_oft_and_full(tmp_path):
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
    loha = {f"{key}.hada_w1_a": torch.randn(320, 2), f"{key}.hada_w1_b": torch.randn(2, 768)}
    loha |= {f"{key}.hada_w2_a": torch.randn(320, 2), f"{key}.hada_w2_b": torch.randn(2, 768), f"{key}.alpha": torch.tensor(1.0)}
    lokr = {f"{key}.lokr_w1": torch.randn(4, 8), f"{key}.lokr_w2_a": torch.randn(80, 3), f"{key}.lokr_w2_b": torch.randn(3, 96)}
    ia3 = {f"{key}.weight": torch.ones(768), f"{key}.on_input": torch.tensor(True)}
    oft = {f"{key}.oft_blocks": torch.zeros(4, 80, 80), f"{key}.alpha": torch.tensor(1e-3)}
    full = {f"{key}.diff": torch.zeros(320, 768), f"{key}.diff_b": torch.zeros(320)}
    expected = {
        "loha": (loha, [2], "SD1.x"),
        "lokr": (lokr, [3], "SD1.x"),
        "ia3": (ia3, [], "unknown"),
        "oft": (oft, [], "unknown"),
        "full": (full, [], "SD1.x"),
    }
    for kind, (state, ranks, family) in expected.items():
        save_file(state, str(tmp_path / f"{kind}.safetensors"))
        report = inspect_lora(tmp_path / f"{kind}.safetensors")
        assert (report.format, report.ranks, report.family, report.module_count) == (kind, ranks, family, 1), kind
        assert not report.warnings and not report.incomplete_modules, kind


def test_diffusers_peft_and_legacy_layouts(tmp_path):
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    peft = {f"{name}.lora_A.weight": torch.randn(4, 768), f"{name}.lora_B.weight": torch.randn(320, 4),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 768),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(768, 4)}  # fmt: skip
    adapter = {"unet.r": 4, "unet.lora_alpha": 8, "text_encoder.r": 4, "text_encoder.lora_alpha": 4}
    save_file(peft, str(tmp_path / "peft.safetensors"), metadata={"lora_adapter_metadata": json.dumps(adapter)})
    report = inspect_lora(tmp_path / "peft.safetensors")
    assert (report.format, report.ranks, report.alphas, report.alpha_source) == ("peft", [4], [4.0, 8.0], "lora_adapter_metadata")
    assert report.targets == {"unet": 1, "text_encoder": 1} and report.family == "SD1.x"
    processor = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"
    legacy = {
        f"{processor}.to_out_lora.down.weight": torch.zeros(4, 320),
        f"{processor}.to_out_lora.up.weight": torch.zeros(320, 4),
    }
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    report = inspect_lora(tmp_path / "legacy.safetensors")
    assert (
        report.format == "peft-legacy"
        and report.modules[0]["name"] == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    )


def test_missing_pair_and_nonfinite_weights_are_flagged(tmp_path, tiny_unet, tiny_text_encoder, kit):
    state = kit.kohya_state(tiny_unet, tiny_text_encoder)
    lonely = next(k for k in state if k.endswith("lora_up.weight"))
    del state[lonely]
    nan_key, inf_key = [k for k in state if k.endswith("lora_down.weight")][1:3]
    state[nan_key][0, 0] = float("nan")
    state[inf_key][1, 1] = float("-inf")
    save_file(state, str(tmp_path / "bad.safetensors"))
    report = inspect_lora(tmp_path / "bad.safetensors")
    assert report.incomplete_modules == [lonely.removesuffix(".lora_up.weight")]
    assert sorted(report.nonfinite_tensors) == sorted([nan_key, inf_key])
    text = report.to_text()
    assert "miss part of their weights" in text and "NaN/Inf values in 2 tensor(s)" in text


def test_malformed_metadata_is_kept_raw_and_still_searched(tmp_path):
    metadata = {
        "ss_tag_frequency": '{"5_zqv": {"zqv": 3, "bad": "x", "nan": NaN',  # cut off: not JSON
        "ss_dataset_dirs": "[1, 2]",
        "ss_datasets": json.dumps(
            [
                {"tag_frequency": [1], "subsets": 7},
                "junk",
                {"subsets": [{"image_dir": "/d/4_zqv", "num_repeats": 4, "img_count": 9}]},
            ]
        ),
        "ss_network_args": "{conv_dim: 4}",
        "ss_training_started_at": "yesterday",
        "ss_training_finished_at": "1e300",
        "ss_base_model_version": "sd_v1",
    }
    save_file(pair("lora_unet_x", 2, 8, 8), str(tmp_path / "m.safetensors"), metadata=metadata)
    report = inspect_lora(tmp_path / "m.safetensors", triggers=["zqv"])
    training = report.training
    assert set(training.malformed) == {"ss_tag_frequency", "ss_dataset_dirs", "ss_network_args"}
    assert training.malformed["ss_tag_frequency"] == metadata["ss_tag_frequency"] and training.tag_frequency == {}
    assert training.dataset_dirs == {"/d/4_zqv": {"n_repeats": 4, "img_count": 9}}
    assert training.dates == {"ss_training_started_at": "yesterday", "ss_training_finished_at": "1e300"}
    assert training.hyperparameters["ss_network_args"] == "{conv_dim: 4}"
    assert {hit.field for hit in report.trigger_hits} == {"ss_tag_frequency", "dataset folder", "ss_datasets"}
    assert "malformed   ss_tag_frequency" in report.to_text()
    json.dumps(report.to_dict())


def test_tag_counts_tolerate_odd_values(tmp_path):
    tags = '{"1_zqv": {"zqv": 2.0, "a": NaN, "b": Infinity, "c": true, "d": [1]}, "x": 5}'
    save_file(pair("lora_unet_x", 2, 8, 8), str(tmp_path / "t.safetensors"), metadata={"ss_tag_frequency": tags})
    assert inspect_lora(tmp_path / "t.safetensors").training.tag_frequency == {"1_zqv": [("zqv", 2)]}


def test_stripped_metadata_says_absence_proves_nothing(tmp_path, tiny_unet, tiny_text_encoder, kit):
    save_file(kit.kohya_state(tiny_unet, tiny_text_encoder), str(tmp_path / "s.safetensors"))
    report = inspect_lora(tmp_path / "s.safetensors", triggers=[kit.TRIGGER])
    assert report.trigger_hits == [] and report.training.has_training_metadata is False
    assert report.alphas == [2.0] and report.family == "unknown"
    text = report.to_text()
    assert "no kohya training metadata" in text and "absence proves nothing" in text


def test_unknown_layout_is_refused(tmp_path):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(InputFileError, match="unknown key layout") as info:
        inspect_lora(tmp_path / "ckpt.safetensors")
    assert "ckpt.safetensors" in str(info.value)


def test_long_metadata_is_cut_in_the_text_and_whole_in_json(tmp_path, capsys):
    from shared_core.cli import main

    comment = "zqv " + "x" * 5_000_000  # a 5 MB comment, as some trainers write
    save_file(pair("lora_unet_down_blocks_0_attentions_0_proj_in", 2, 32, 32), str(tmp_path / "long.safetensors"),
              metadata={"ss_training_comment": comment, "ss_output_name": "n" * 1000})  # fmt: skip
    assert main(["inspect-lora", str(tmp_path / "long.safetensors"), "--trigger", "zqv"]) == 0
    text = capsys.readouterr().out
    assert len(text) < 5000 and "5,000,004 characters; the full text with --json" in text
    assert main(["inspect-lora", str(tmp_path / "long.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["training"]["comment"] == comment


def test_folders_and_renamed_pickles_are_named_as_such(tmp_path, capsys):
    from shared_core.cli import main

    folder = tmp_path / "my_lora"
    folder.mkdir()
    save_file(pair("lora_unet_x", 2, 8, 8), str(folder / "pytorch_lora_weights.safetensors"))
    with pytest.raises(InputFileError, match="is a folder, not a LoRA file.*pytorch_lora_weights.safetensors"):
        inspect_lora(folder)
    state = pair("lora_unet_down_blocks_0_attentions_0_proj_in", 2, 32, 32)
    torch.save(state, tmp_path / "renamed.safetensors")  # a zip archive
    torch.save(state, tmp_path / "old.lora", _use_new_zipfile_serialization=False)  # a bare pickle stream
    for name in ("renamed.safetensors", "old.lora"):
        assert main(["inspect-lora", str(tmp_path / name)]) == 2
        assert f"{name}: is a pickle (PyTorch .ckpt/.pt) file" in capsys.readouterr().err
    (tmp_path / "renamed.safetensors").rename(tmp_path / "renamed.ckpt")
    assert inspect_lora(tmp_path / "renamed.ckpt").container == "pickle (weights_only)"

"""The surrogate protocol over real diffusers classes: SD, SDXL, pixel DDPM, folders, errors."""

from __future__ import annotations

import pytest
import torch

from shared_core.errors import InputFileError, SettingsError
from shared_core.protect import ProtectSettings, craft_perturbation, make_objective
from tests.conftest import assert_optimised
from shared_core.surrogates import load_surrogate
from shared_core.surrogates.diffusers_backend import LatentDiffusersSurrogate, PixelDiffusersSurrogate
from shared_core.surrogates.tiny import TinyLatentConfig, tiny_pixel_ddpm, tiny_sd_pipeline, tiny_sdxl_pipeline

CPU = torch.device("cpu")
SMALL = TinyLatentConfig(resolution=64)


def test_sd_folder_round_trip(tmp_path, photo_batch):
    tiny_sd_pipeline(SMALL).save_pretrained(tmp_path / "sd")
    surrogate = load_surrogate(str(tmp_path / "sd"), "cpu")
    assert isinstance(surrogate, LatentDiffusersSurrogate) and not surrogate.demo_only
    assert surrogate.latent_factor == 8 and surrogate.native_resolution == 64 and surrogate.size_multiple == 16
    result = assert_optimised(surrogate, photo_batch, ProtectSettings(method="advdm", steps=6))
    assert result.delta.shape == photo_batch.shape


def test_sdxl_conditioning_has_pooled_embeddings_and_time_ids(photo_batch):
    surrogate = LatentDiffusersSurrogate(tiny_sdxl_pipeline(SMALL), "tiny-xl", CPU)
    assert surrogate.is_sdxl
    conditioning = surrogate.encode_prompts(["a cat", "a dog"])
    assert conditioning["encoder_hidden_states"].shape[-1] == 64 and conditioning["text_embeds"].shape == (2, 32)
    assert_optimised(surrogate, photo_batch, ProtectSettings(method="advdm", steps=6))
    objective = make_objective("udp", {"inner_every": 1, "inner_steps": 2})
    craft_perturbation(surrogate, photo_batch, ProtectSettings(method="udp", steps=2), objective=objective)
    assert objective.inner_movement() > 1e-4  # the adapters attach to SDXL's attention and train


def test_pixel_ddpm_folder(tmp_path, photo_batch):
    from diffusers import DDPMPipeline

    unet, scheduler = tiny_pixel_ddpm(resolution=64)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "ddpm")
    surrogate = load_surrogate(str(tmp_path / "ddpm"), "cpu")
    assert isinstance(surrogate, PixelDiffusersSurrogate) and surrogate.latent_factor == 1
    assert torch.allclose(surrogate.encode(photo_batch), photo_batch * 2 - 1)
    assert_optimised(surrogate, photo_batch, ProtectSettings(method="advdm", steps=6))


def test_folder_with_only_pickled_weights_is_refused_naming_the_file(tmp_path):
    from diffusers import DDPMPipeline

    unet, scheduler = tiny_pixel_ddpm(resolution=64)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "ddpm", safe_serialization=False)
    assert (tmp_path / "ddpm" / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(InputFileError, match=r"diffusion_pytorch_model\.bin.*pickled weights"):
        load_surrogate(str(tmp_path / "ddpm"), "cpu")


def test_v_prediction_target():
    unet, scheduler = tiny_pixel_ddpm()
    scheduler.register_to_config(prediction_type="v_prediction")
    surrogate = PixelDiffusersSurrogate(unet, scheduler, "v", CPU)
    z0, noise, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    abar = surrogate.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * z0
    assert torch.allclose(surrogate.training_target(z0, noise, t), expected)


def test_builtin_models_and_errors(tmp_path):
    assert load_surrogate("builtin:tiny", "cpu").demo_only
    assert load_surrogate("builtin:tiny-pixel", "cpu").latent_factor == 1
    with pytest.raises(SettingsError, match="unknown built-in"):
        load_surrogate("builtin:huge", "cpu")
    with pytest.raises(InputFileError, match="no such model"):
        load_surrogate(str(tmp_path / "missing"), "cpu")
    (tmp_path / "model.ckpt").write_bytes(b"not really a pickle")
    with pytest.raises(InputFileError, match="pickles"):
        load_surrogate(str(tmp_path / "model.ckpt"), "cpu")
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(InputFileError, match="safetensors"):
        load_surrogate(str(tmp_path / "bad.safetensors"), "cpu")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputFileError, match="model_index.json"):
        load_surrogate(str(tmp_path / "folder"), "cpu")


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SettingsError, match="--device cpu"):
        load_surrogate("builtin:tiny", "cuda")

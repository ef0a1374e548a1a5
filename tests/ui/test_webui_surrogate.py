"""The A1111/Forge adapter: the loaded checkpoint as a Surrogate, on LDM- and Forge-shaped stubs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared_core.errors import SettingsError
from shared_core.protect import ProtectSettings, craft_perturbation, protect_arrays
from tests.conftest import assert_optimised


@pytest.fixture
def adapter(webui):
    from a1111_extension.surrogate import WebUISurrogate

    return WebUISurrogate


def snapshot(*modules):
    return [
        {name: (t.detach().clone(), t.requires_grad) for name, t in [*m.named_parameters(), *m.named_buffers()]} | {"__training": m.training}
        for m in modules
    ]


def same(before, after):
    for one, two in zip(before, after):
        assert one.keys() == two.keys()
        for key in one:
            if key == "__training":
                assert one[key] == two[key]
            else:
                assert torch.equal(one[key][0], two[key][0]) and one[key][1] == two[key][1], key


def test_predict_is_apply_model_with_integer_timesteps_and_encode_is_the_posterior_mean(adapter, stubs):
    ldm = stubs.TinyLDM()
    surrogate = adapter(ldm, "tiny")
    assert surrogate.prediction_type == "epsilon" and surrogate.num_timesteps == 1000 and not surrogate.demo_only
    noisy, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    cond = surrogate.encode_prompts(["a", "b"])
    with torch.no_grad():
        assert torch.allclose(surrogate.predict(noisy, t, cond), ldm.apply_model(noisy, t, ldm.get_learned_conditioning(["a", "b"])))
        pixels = torch.rand(2, 3, 64, 64)
        expected = ldm.get_first_stage_encoding(ldm.first_stage_model.encode(pixels * 2 - 1).mode())
        assert torch.allclose(surrogate.encode(pixels), expected)


@pytest.mark.parametrize("kind", ["a1111", "a1111-inference-weights", "forge"])
def test_protection_runs_on_the_loaded_model_and_leaves_it_unchanged(adapter, stubs, kind):
    model = {"a1111": stubs.TinyLDM, "a1111-inference-weights": stubs.make_inference_ldm, "forge": stubs.TinyForgeModel}[kind]()
    modules = [model] if kind != "forge" else [
        model.forge_objects.unet.model, model.forge_objects.vae.first_stage_model, model.forge_objects.clip.cond_stage_model]
    before = snapshot(*modules)
    if kind != "a1111":  # the trap: backprop through inference-tensor weights fails even outside inference mode
        unet = modules[0].model.diffusion_model if kind != "forge" else modules[0].diffusion_model
        x = torch.randn(1, 4, 8, 8, requires_grad=True)
        with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
            unet(x, torch.tensor([5]), context=torch.zeros(1, 6, 8)).sum().backward()
    surrogate = adapter(model, kind)
    images = torch.rand(2, 3, 64, 64)
    for method, options in (("advdm", {}), ("udp", {}), ("udp", {"inner_params": "all"})):  # udp trains adapters / weight copies
        # a host may call in inference mode; the tab's run_exclusive leaves it, as here
        with torch.inference_mode(), torch.inference_mode(False), torch.enable_grad():
            result = assert_optimised(surrogate, images, ProtectSettings(method=method, steps=6, budget=8, method_options=options),
                                      objective_moves=False)
        assert result.delta.abs().max() <= 8 / 255 + 1e-6
    same(before, snapshot(*modules))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["eudp", "aspl", "advdm"])
def test_half_precision_unet_as_a1111_holds_it_is_optimised(adapter, stubs, dtype, method):
    ldm = stubs.TinyLDM(unet_dtype=dtype)
    before = snapshot(ldm)
    surrogate = adapter(ldm, "tiny-half")
    options = {"inner_every": 2, "inner_steps": 2} if method == "eudp" else {"pgd_per_round": 3} if method == "aspl" else {}
    with torch.inference_mode(), torch.inference_mode(False), torch.enable_grad():
        assert_optimised(surrogate, torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)),
                         ProtectSettings(method=method, steps=6, budget=8, method_options=options), objective_moves=False)  # fmt: skip
    same(before, snapshot(ldm))


def test_low_memory_is_refused_with_a_reason(adapter, stubs):
    with pytest.raises(SettingsError, match="--medvram"):
        craft_perturbation(adapter(stubs.TinyLDM()), torch.rand(1, 3, 64, 64), ProtectSettings(method="advdm", steps=1, low_memory=True))


def test_whole_images_through_the_pipeline(adapter, stubs):
    surrogate = adapter(stubs.TinyLDM(), "tiny")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    out = protect_arrays(surrogate, images, ProtectSettings(method="eudp", steps=2, budget=4))
    for src, dst in zip(images, out):
        assert dst.shape == src.shape and np.abs(dst.astype(int) - src).max() <= 4


def test_flow_matching_and_inpainting_models_are_refused(adapter, stubs):
    forge = stubs.TinyForgeModel()
    forge.forge_objects.unet.model.predictor.prediction_type = "const"
    with pytest.raises(SettingsError, match="Flux"):
        adapter(forge)
    ldm = stubs.TinyLDM()
    ldm.model.conditioning_key = "hybrid"
    with pytest.raises(SettingsError, match="inpainting"):
        adapter(ldm)


def test_v_prediction_follows_parameterization(adapter, stubs):
    ldm = stubs.TinyLDM()
    ldm.parameterization = "v"
    surrogate = adapter(ldm)
    assert surrogate.prediction_type == "v_prediction" and surrogate.native_resolution == 768


def test_forge_in_place_residual_adds_keep_their_gradient(webui):
    """Forge's transformer blocks do `n = norm(x); x += n`: autograd refuses that unless the norm gets a copy."""
    from a1111_extension.surrogate import _layer_norm_inputs_copied

    class ForgeBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2, self.proj = torch.nn.LayerNorm(8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 8)

        def forward(self, x, in_place=True):
            x = self.proj(x)
            for norm in (self.norm1, self.norm2):
                n = norm(x)
                x = x.add_(n) if in_place else x + n
            return x

    block, x = ForgeBlock(), torch.randn(2, 4, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="inplace operation"):
        torch.autograd.grad(block(x).square().sum(), x)
    with _layer_norm_inputs_copied([block.norm1, block.norm2]):
        (gradient,) = torch.autograd.grad(block(x).square().sum(), x)
    (expected,) = torch.autograd.grad(block(x, in_place=False).square().sum(), x)
    assert torch.allclose(gradient, expected) and not block.norm1._forward_pre_hooks

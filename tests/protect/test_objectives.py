"""Each objective does what it claims on a tiny real-diffusers surrogate."""

from __future__ import annotations

import pytest
import torch

from shared_core.protect import ProtectSettings, craft_perturbation, make_objective
from shared_core.protect.objectives.targets import target_pixels

EPS = 8 / 255


def fixed_loss(surrogate, pixels, params=None, draws=32, seed=123, schedule="uniform"):
    """Denoising loss averaged over a fixed set of (t, noise) draws: comparable across inputs."""
    from shared_core.protect.timesteps import TimestepSampler

    generator = torch.Generator().manual_seed(seed)
    conditioning = surrogate.encode_prompts([""] * pixels.shape[0])
    timesteps_drawn = TimestepSampler(schedule, surrogate.alphas_cumprod).sample(draws, generator)
    with torch.no_grad():
        z0 = surrogate.encode(pixels)
        total = 0.0
        for t in timesteps_drawn:
            noise = torch.randn(z0.shape, generator=generator)
            timesteps = torch.full((z0.shape[0],), int(t))
            total += surrogate.denoising_loss(z0, timesteps, noise, conditioning, params).mean().item()
    return total / draws


def attack(surrogate, images, method, steps=20, objective=None, **options):
    settings = ProtectSettings(method=method, steps=steps, budget=8, method_options=options, seed=1)
    objective = objective or make_objective(method, options)
    result = craft_perturbation(surrogate, images, settings, objective=objective)
    return result, objective


def check_budget(images, delta):
    assert delta.abs().max().item() <= EPS + 1e-6
    protected = images + delta
    assert protected.min().item() >= -1e-6 and protected.max().item() <= 1 + 1e-6


def test_advdm_raises_the_denoising_loss(tiny_surrogate, photo_batch):
    result, _ = attack(tiny_surrogate, photo_batch, "advdm", steps=25)
    check_budget(photo_batch, result.delta)
    noise = torch.sign(torch.randn(photo_batch.shape, generator=torch.Generator().manual_seed(5))) * EPS
    clean = fixed_loss(tiny_surrogate, photo_batch)
    random = fixed_loss(tiny_surrogate, (photo_batch + noise).clamp(0, 1))
    protected = fixed_loss(tiny_surrogate, photo_batch + result.delta)
    assert protected - clean > 3 * abs(random - clean), (clean, random, protected)


def test_eudp_samples_timesteps_where_the_perturbation_survives(tiny_surrogate):
    from shared_core.protect.timesteps import TimestepSampler

    objective = make_objective("eudp")
    assert objective.default_schedule == "survival" and objective.maximise  # the defaults the efficacy benchmark chose
    sampler = TimestepSampler("survival", tiny_surrogate.alphas_cumprod)
    draws = sampler.sample(4000, torch.Generator().manual_seed(0))
    assert draws.float().mean() < 999 / 2 - 60  # weighted toward small t (large sqrt(abar_t))


def test_encoder_attack_moves_the_latent_toward_its_target(tiny_surrogate, photo_batch):
    result, _ = attack(tiny_surrogate, photo_batch, "encoder", steps=20, target="gray")
    check_budget(photo_batch, result.delta)
    with torch.no_grad():
        target = tiny_surrogate.encode(target_pixels("gray", photo_batch))
        before = (tiny_surrogate.encode(photo_batch) - target).pow(2).mean()
        after = (tiny_surrogate.encode(photo_batch + result.delta) - target).pow(2).mean()
    assert after < before * 0.95, (before, after)


def test_mist_raises_semantic_and_lowers_textural_loss(tiny_surrogate, photo_batch):
    result, objective = attack(tiny_surrogate, photo_batch, "mist", steps=25, textural_weight=1.0)
    check_budget(photo_batch, result.delta)
    with torch.no_grad():
        target = tiny_surrogate.encode(target_pixels("pattern", photo_batch))
        clean_text = (tiny_surrogate.encode(photo_batch) - target).pow(2).mean()
        prot_text = (tiny_surrogate.encode(photo_batch + result.delta) - target).pow(2).mean()
    assert prot_text < clean_text
    assert fixed_loss(tiny_surrogate, photo_batch + result.delta) > fixed_loss(tiny_surrogate, photo_batch)


def test_inner_loops_never_modify_the_shared_model(tiny_surrogate, photo_batch):
    before = {k: v.clone() for k, v in tiny_surrogate.trainable_parameters().items()}
    attack(tiny_surrogate, photo_batch, "aspl", steps=6, lr=1e-2)
    attack(tiny_surrogate, photo_batch, "udp", steps=4, inner_lr=1e-2, inner_every=2)
    after = tiny_surrogate.trainable_parameters()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_mask_limits_the_perturbation_to_the_masked_region(tiny_surrogate, photo_batch):
    masks = torch.zeros(2, 1, 64, 64)
    masks[:, :, :, :32] = 1
    start = craft_perturbation(tiny_surrogate, photo_batch, ProtectSettings(method="advdm", steps=1, budget=8), masks=masks)
    result = craft_perturbation(tiny_surrogate, photo_batch, ProtectSettings(method="advdm", steps=5, budget=8), masks=masks)
    assert result.delta[..., 32:].abs().max() == 0
    assert (result.delta[..., :32] != start.delta[..., :32]).float().mean() > 0.5  # optimised, not only the random start
    assert all(p > c for p, c in zip(result.objective_protected, result.objective_clean))


@pytest.mark.parametrize("robust", [("jpeg",), ("resize",), ("blur",), ("jpeg", "resize", "blur")])
def test_robustness_transforms_run_inside_the_loop(tiny_surrogate, photo_batch, robust):
    from shared_core.protect.transforms import ROBUSTNESS_TRANSFORMS

    settings = ProtectSettings(method="advdm", steps=6, budget=8, robust=robust)
    result = craft_perturbation(tiny_surrogate, photo_batch, settings)
    plain = craft_perturbation(tiny_surrogate, photo_batch, ProtectSettings(method="advdm", steps=6, budget=8))
    check_budget(photo_batch, result.delta)
    assert not torch.equal(result.delta, plain.delta)  # the transforms changed what was optimised
    transform = ROBUSTNESS_TRANSFORMS[robust[0]]
    transformed = lambda delta: transform((photo_batch + delta).clamp(0, 1), torch.Generator().manual_seed(0))  # noqa: E731
    noise = (torch.rand(photo_batch.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1) * EPS
    clean = fixed_loss(tiny_surrogate, transformed(torch.zeros_like(photo_batch)))
    assert fixed_loss(tiny_surrogate, transformed(result.delta)) - clean > abs(fixed_loss(tiny_surrogate, transformed(noise)) - clean)


def test_unknown_method_and_option_errors_are_clear():
    with pytest.raises(ValueError, match="choose one of"):
        make_objective("nope")
    with pytest.raises(ValueError, match="bad option for method 'udp'"):
        make_objective("udp", {"colour": 3})
    with pytest.raises(ValueError, match="sign must be"):
        make_objective("udp", {"sign": "sideways"})
    with pytest.raises(ValueError, match="gradient must be one of backprop, sds"):
        make_objective("aspl", {"gradient": "exact"})


def test_score_distillation_has_the_loss_value_and_the_residual_as_gradient(tiny_surrogate, photo_batch):
    """Value: the denoising loss; gradient w.r.t. z0: 2 (output - target) / n, with no graph through the denoiser."""
    z0 = tiny_surrogate.encode(photo_batch).detach().float().requires_grad_(True)
    timesteps, noise = torch.tensor([100, 700]), torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    conditioning = tiny_surrogate.encode_prompts(["", ""])
    loss = tiny_surrogate.score_distillation_loss(z0, timesteps, noise, conditioning)
    assert torch.allclose(loss, tiny_surrogate.denoising_loss(z0, timesteps, noise, conditioning), atol=1e-6)
    (gradient,) = torch.autograd.grad(loss.sum(), z0)
    with torch.no_grad():
        residual = tiny_surrogate.predict(tiny_surrogate.add_noise(z0, noise, timesteps), timesteps, conditioning) - noise
    assert torch.allclose(gradient, 2 * residual / residual[0].numel(), atol=1e-7)
    (exact,) = torch.autograd.grad(tiny_surrogate.denoising_loss(z0, timesteps, noise, conditioning).sum(), z0)
    assert not torch.allclose(gradient, exact, atol=1e-7)  # it is not the back-propagated gradient


def test_fsgm_is_one_signed_step_of_the_whole_budget_from_the_clean_image(tiny_surrogate, photo_batch):
    settings = ProtectSettings(method="fsgm", budget=8, steps=100, seed=1)
    assert (settings.steps, settings.effective_step_size, settings.random_init) == (1, 8.0, False)
    result = craft_perturbation(tiny_surrogate, photo_batch, settings)
    inside = ((photo_batch > EPS) & (photo_batch < 1 - EPS)).float()  # pixels the [0, 1] clamp cannot cut
    assert torch.allclose(result.delta.abs() * inside, torch.full_like(result.delta, EPS) * inside, atol=1e-6)
    advdm = craft_perturbation(tiny_surrogate, photo_batch, ProtectSettings(method="advdm", budget=8, steps=1, step_size=8, random_init=False, seed=1))
    assert torch.equal(result.delta, advdm.delta)  # AdvDM's gradient, one step


def test_metacloak_attacks_a_pool_of_fine_tuning_stages_in_turns(tiny_surrogate, photo_batch):
    """The pool holds snapshots further and further along one clean fine-tune; each state takes its turn from
    its snapshot and is unrolled on the protected images between attack steps."""
    objective = make_objective("metacloak", {"pool_size": 3, "stage_steps": 3, "attack_steps": 2, "unroll_steps": 1})
    turns = []
    original = objective.before_step

    def spy(run, step):
        original(run, step)
        turns.append((step, objective.attacked.distance(objective.start)))

    objective.before_step = spy
    result, _ = attack(tiny_surrogate, photo_batch, "metacloak", steps=9, objective=objective)
    check_budget(photo_batch, result.delta)
    stages = [state.distance(objective.start) for state in objective.pool]
    assert stages[0] == 0 < stages[1] < stages[2]  # snapshots of one run: each further from the start
    # 9 steps, 3 per state: each turn starts at its snapshot, and the unroll at its third step moves it on
    for step, moved in turns:
        snapshot = stages[step // 3]
        assert (moved == pytest.approx(snapshot)) if step % 3 < 2 else (moved != pytest.approx(snapshot)), (step, moved, snapshot)


def test_metacloak_transforms_are_random_and_can_be_turned_off(tiny_surrogate, photo_batch):
    generator = torch.Generator().manual_seed(0)
    large = torch.nn.functional.interpolate(photo_batch, size=512)  # the blur's sigma is the authors', given at 512 px
    blurred = [make_objective("metacloak", {"flip": False}).transform(large, generator) for _ in range(4)]
    assert all(not torch.allclose(out, large, atol=1e-3) for out in blurred) and len({float((out - large).abs().sum()) for out in blurred}) == 4  # a new sigma each time
    flipped = [make_objective("metacloak", {"blur_sigma_max": 0}).transform(photo_batch, generator) for _ in range(8)]
    assert {torch.equal(out, photo_batch.flip(-1)) for out in flipped} == {True, False}
    assert all(torch.equal(out, photo_batch) or torch.equal(out, photo_batch.flip(-1)) for out in flipped)
    plain = make_objective("metacloak", {"blur_sigma_max": 0, "flip": "false"})
    assert torch.equal(plain.transform(photo_batch, generator), photo_batch)


def test_simac_searches_each_images_sensitive_timesteps_and_its_feature_term_has_a_gradient(tiny_surrogate, photo_batch):
    from shared_core.protect.engine import _new_run

    settings = ProtectSettings(method="simac", steps=1, seed=1)
    objective = make_objective("simac", {"keep": 700, "probes": 3, "window": 30})
    run = _new_run(tiny_surrogate, list(photo_batch), settings, objective, random_start=True)
    objective.setup(run)
    kept = list(objective.allowed.values())
    assert all(640 <= len(t) <= 700 for t in kept) and not torch.equal(kept[0], kept[1])  # per image, within one window of `keep`
    # the removed intervals are the ones the model is least sensitive at: compare the gradient at kept and removed timesteps
    ctx = run.batches[0]
    removed = [torch.tensor(sorted(set(range(1000)) - set(t.tolist()))) for t in kept]
    pick = lambda sets, k: torch.stack([s[k * len(s) // 8] for s in sets])  # noqa: E731
    at_kept = sum(objective._sensitivity(ctx, pick(kept, k)) for k in range(8))
    at_removed = sum(objective._sensitivity(ctx, pick(removed, k)) for k in range(8))
    assert (at_kept > at_removed).all(), (at_kept, at_removed)
    # every PGD draw comes from the image's own set
    assert all(int(t) in set(kept[i].tolist()) for _ in range(20) for i, t in enumerate(objective._draw_for(ctx)))

    def gradient(weight):
        objective.feature_weight = weight
        ctx.generator = torch.Generator().manual_seed(5)
        pixels = (ctx.images + 4 / 255).requires_grad_(True)
        with objective.active():
            (grad,) = torch.autograd.grad(objective.loss(ctx, pixels).sum(), pixels)
        return grad

    assert not torch.allclose(gradient(1.0), gradient(0.0))  # a detached feature term would leave the gradient as it is


def test_simac_finds_the_last_decoder_stage_in_diffusers_and_ldm_unets(tiny_surrogate):
    from torch import nn

    from shared_core.errors import SettingsError
    from shared_core.protect.objectives.simac import last_decoder_convs

    unet = tiny_surrogate.denoiser
    last = len(unet.up_blocks) - 1
    assert last_decoder_convs(unet) == [resnet.conv2 for resnet in unet.up_blocks[last].resnets]

    class ResBlock(nn.Module):  # the LDM UNet's (ComfyUI, A1111, Forge): output_blocks[i][0].out_layers[3] is its second conv
        def __init__(self):
            super().__init__()
            self.out_layers = nn.Sequential(nn.Identity(), nn.SiLU(), nn.Identity(), nn.Conv2d(4, 4, 3))

    class DiffusionModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.output_blocks = nn.ModuleList(nn.Sequential(ResBlock()) for _ in range(12))

    ldm = nn.Module()
    ldm.diffusion_model = DiffusionModel()
    assert last_decoder_convs(ldm) == [ldm.diffusion_model.output_blocks[i][0].out_layers[3] for i in (9, 10, 11)]
    with pytest.raises(SettingsError, match="feature_weight=0"):
        last_decoder_convs(nn.Sequential(nn.Conv2d(4, 4, 3)))

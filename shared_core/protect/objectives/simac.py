"""SimAC: ASPL at the timesteps each image is most sensitive at, plus a feature-interference loss."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ...errors import SettingsError
from .aspl import ASPL

#: the residual branch's last convolution in a decoder block: diffusers (up_blocks.I.resnets.J.conv2) and the LDM UNet
#: that ComfyUI, A1111 and Forge run (output_blocks.I.0.out_layers.3)
_DIFFUSERS_DECODER = re.compile(r"(?:^|\.)up_blocks\.(\d+)\.resnets\.\d+\.conv2$")
_LDM_DECODER = re.compile(r"(?:^|\.)output_blocks\.(\d+)\.0\.out_layers\.3$")


def last_decoder_convs(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The residual convolutions of the UNet's last (highest-resolution) decoder stage, where SimAC
    measures feature interference (SD's up_blocks[3].resnets[0..2], LDM output_blocks 9-11)."""
    found: dict[str, list[tuple[int, torch.nn.Module]]] = {"diffusers": [], "ldm": []}
    for name, module in denoiser.named_modules():
        for kind, pattern in (("diffusers", _DIFFUSERS_DECODER), ("ldm", _LDM_DECODER)):
            match = pattern.search(name)
            if match:
                found[kind].append((int(match.group(1)), module))
    if found["diffusers"]:
        last = max(index for index, _ in found["diffusers"])
        return [module for index, module in found["diffusers"] if index == last]
    if found["ldm"]:
        return [module for _, module in sorted(found["ldm"], key=lambda item: item[0])[-3:]]
    raise SettingsError(f"simac: found no decoder blocks in the denoiser ({type(denoiser).__name__}); use method option feature_weight=0")


@contextlib.contextmanager
def captured_outputs(modules: list[torch.nn.Module]) -> Iterator[list[torch.Tensor]]:
    """The outputs of `modules` during the calls made inside the block, in call order."""
    outputs: list[torch.Tensor] = []
    handles = [module.register_forward_hook(lambda _m, _args, output: outputs.append(output)) for module in modules]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class SimAC(ASPL):
    """SimAC (Wang et al., "SimAC: A Simple Anti-Customization Method for Protecting Face Privacy
    against Text-to-Image Synthesis of Diffusion Models", CVPR 2024).

    ASPL, with two changes. First, an adaptive greedy search picks, per image, the timesteps where
    the model is most sensitive to it: starting from every timestep, each round probes a few at
    random, measures the L1 norm of the denoising loss's gradient with respect to the pixels at
    each, and removes the interval around the least sensitive probe, until `keep` timesteps remain.
    PGD then draws each image's timesteps from its own set (the `timesteps` setting does not
    apply). Second, a feature-interference term adds the mean squared distance between the
    decoder features (the last, highest-resolution decoder stage's residual convolutions) of the
    protected and the clean image at the same (t, noise). The authors' released code detaches
    that term (it adds no gradient); here it is differentiable as the paper describes, and
    feature_weight=0 gives the released behaviour.

    The search costs `probes` forward and backward passes per round (up to `search_rounds`
    rounds) before the first PGD step, and the feature term one more forward pass per step.

    Args:
        keep: timesteps kept per image (default 100, as the authors' code).
        probes: timesteps probed per search round (default 5, as the authors' code).
        window: half-width of the interval removed around the least sensitive probe (default 20,
            as the authors' code).
        search_rounds: at most this many rounds (default 50, as the authors' code); an image
            still above `keep` then keeps what remains.
        feature_weight: weight of the feature-interference term (default 1.0).
        train_steps, pgd_per_round, lr, inner_params, lora_rank, lora_targets, scope: as ASPL
            (the PGD gradient is always back-propagated: the feature term needs it).

    Example:
        >>> ProtectSettings(method="simac", method_options={"keep": 200, "feature_weight": 0})
    """

    name = "simac"

    def __init__(self, keep: int = 100, probes: int = 5, window: int = 20, search_rounds: int = 50, feature_weight: float = 1.0, **aspl):
        if aspl.get("gradient", "backprop") != "backprop":
            raise SettingsError("simac back-propagates its PGD gradient (its feature term needs it): drop the gradient option")
        super().__init__(**aspl)
        self.keep, self.probes, self.window, self.search_rounds = int(keep), max(1, int(probes)), int(window), int(search_rounds)
        self.feature_weight = float(feature_weight)

    def setup(self, run) -> None:
        super().setup(run)
        self.features = last_decoder_convs(run.surrogate.denoiser) if self.feature_weight else []
        self.clean_latents: dict[tuple, torch.Tensor] = {}  # per batch of tiles: the clean images never change, encode them once
        support = (run.sampler.probabilities > 0).nonzero().flatten()
        self.allowed = {}  # (image index, tile) -> the timesteps that tile's PGD steps draw from
        for ctx in run.batches:
            self.allowed.update(zip(ctx.tiles, self._search(ctx, support)))

    def _search(self, ctx, support: torch.Tensor) -> list[torch.Tensor]:
        run, count = ctx.run, len(ctx.tiles)
        total = run.surrogate.num_timesteps
        allowed = [torch.zeros(total, dtype=torch.bool) for _ in range(count)]
        for mask in allowed:
            mask[support] = True
        generator = torch.Generator().manual_seed(run.settings.seed)
        for _ in range(self.search_rounds):
            searching = [i for i in range(count) if int(allowed[i].sum()) > self.keep]
            if not searching:
                break
            probes = torch.stack([self._draw(allowed, generator) for _ in range(self.probes)])  # [probes, tiles]
            sensitivity = torch.stack([self._sensitivity(ctx, t) for t in probes])
            least = probes.gather(0, sensitivity.argmin(0, keepdim=True))[0]
            for i in searching:
                centre = int(least[i].clamp(self.window, total - self.window))
                allowed[i][max(0, centre - self.window) : centre + self.window] = False
        return [mask.nonzero().flatten() for mask in allowed]

    @staticmethod
    def _draw(allowed: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """One timestep per tile, uniform over that tile's allowed set."""
        return torch.stack([mask.nonzero().flatten()[torch.randint(int(mask.sum()), (), generator=generator)] for mask in allowed])

    def _sensitivity(self, ctx, timesteps: torch.Tensor) -> torch.Tensor:
        """Per tile: the L1 norm of the pixel gradient of the pretrained model's denoising loss at `timesteps`."""
        run = ctx.run
        pixels = ctx.images.requires_grad_(True)
        with torch.autocast(**run.autocast):
            z0 = run.surrogate.encode(pixels).float()
            noise = torch.randn(z0.shape, generator=ctx.generator).to(z0.device)
            loss = run.surrogate.denoising_loss(z0, timesteps.to(z0.device), noise, ctx.conditioning)
        (gradient,) = torch.autograd.grad(loss.float().sum(), pixels)
        return gradient.abs().flatten(1).sum(1).cpu()

    def loss(self, ctx, pixels):
        run = ctx.run
        overrides = self.attacked.overrides()
        if self.feature_weight:
            key = tuple(ctx.tiles)
            if key not in self.clean_latents:
                with torch.no_grad():
                    self.clean_latents[key] = run.encode(ctx.images).float()
            clean = self.clean_latents[key]
        z0 = run.encode(pixels).float()
        total = 0.0
        for _ in range(run.settings.noise_samples):
            timesteps = self._draw_for(ctx).to(z0.device)
            noise = torch.randn(z0.shape, generator=ctx.generator).to(z0.device)
            with captured_outputs(self.features) as protected_features:
                value = run.surrogate.denoising_loss(z0, timesteps, noise, ctx.conditioning, overrides)
            if self.feature_weight:
                with torch.no_grad(), captured_outputs(self.features) as clean_features:
                    run.surrogate.denoising_loss(clean, timesteps, noise, ctx.conditioning, overrides)
                interference = [F.mse_loss(p.float(), c.float(), reduction="none").flatten(1).mean(1) for p, c in zip(protected_features, clean_features)]
                value = value + self.feature_weight * torch.stack(interference).mean(0)
            total = total + value
        return total / run.settings.noise_samples

    def _draw_for(self, ctx) -> torch.Tensor:
        return torch.stack([self.allowed[tile][torch.randint(len(self.allowed[tile]), (), generator=ctx.generator)] for tile in ctx.tiles])

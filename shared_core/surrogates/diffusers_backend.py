"""Surrogates over diffusers models: latent pipelines (SD 1.x/2.x/SDXL) and pixel-space DDPMs."""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call

from .base import Surrogate


def _alphas_cumprod(scheduler, device) -> torch.Tensor:
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod; use a DDPM-family scheduler")
    return abar.detach().float().to(device)


def _call_denoiser(module, params, args, kwargs):
    if params:
        return functional_call(module, params, args, kwargs, strict=False)
    return module(*args, **kwargs)


class LatentDiffusersSurrogate(Surrogate):
    """Stable Diffusion 1.x / 2.x / SDXL from a diffusers pipeline object.

    The VAE encoder is used for `encode` (mean of the posterior, times the scaling factor); the
    VAE decoder is never run during protection. Prompt encoding reuses the pipeline's own
    `encode_prompt`, so SDXL's second text encoder and pooled embeddings come out right.
    """

    def __init__(self, pipeline, name: str, device: torch.device, compute_dtype=torch.float32, demo_only=False):
        self.pipeline = pipeline
        self.unet = self.denoiser = pipeline.unet
        self.vae = pipeline.vae
        self.name = name
        self.device = device
        self.compute_dtype = compute_dtype
        self.demo_only = demo_only
        scheduler = pipeline.scheduler
        self.alphas_cumprod = _alphas_cumprod(scheduler, device)
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self.latent_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.size_multiple = self.latent_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        self.native_resolution = int(self.unet.config.sample_size) * self.latent_factor
        self.is_sdxl = hasattr(pipeline, "text_encoder_2") and pipeline.text_encoder_2 is not None
        for module in (self.unet, self.vae, *self._text_encoders()):
            module.requires_grad_(False)
            module.eval()

    def _text_encoders(self):
        return [m for m in (getattr(self.pipeline, "text_encoder", None), getattr(self.pipeline, "text_encoder_2", None)) if m is not None]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(pixels.to(self.vae.dtype) * 2 - 1).latent_dist
        latents = posterior.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.is_sdxl:
            embeds, _, pooled, _ = self.pipeline.encode_prompt(
                prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return {"encoder_hidden_states": embeds, "text_embeds": pooled}
        embeds, _ = self.pipeline.encode_prompt(
            prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"encoder_hidden_states": embeds}

    def predict(self, noisy, timesteps, conditioning, params=None):
        dtype = self.unet.dtype  # half-precision weights take half-precision inputs (autocast or not)
        noisy = noisy.to(dtype)
        kwargs: dict[str, Any] = {"encoder_hidden_states": conditioning["encoder_hidden_states"].to(dtype)}
        if self.is_sdxl:
            height, width = noisy.shape[-2] * self.latent_factor, noisy.shape[-1] * self.latent_factor
            time_ids = torch.tensor([height, width, 0, 0, height, width], device=noisy.device, dtype=dtype)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": conditioning["text_embeds"].to(dtype),
                "time_ids": time_ids.expand(noisy.shape[0], -1),
            }
        kwargs["return_dict"] = False
        return _call_denoiser(self.unet, params, (noisy, timesteps), kwargs)[0]

    def trainable_parameters(self):
        return dict(self.unet.named_parameters())

    def enable_low_memory(self) -> None:
        """Gradient checkpointing in the UNet: about a third more compute for much less memory."""
        self.unet.enable_gradient_checkpointing()


class PixelDiffusersSurrogate(Surrogate):
    """A pixel-space DDPM (`UNet2DModel`), as in the UDP paper's from-scratch setting."""

    def __init__(self, unet, scheduler, name: str, device: torch.device, compute_dtype=torch.float32, demo_only=False):
        self.unet = self.denoiser = unet
        self.name = name
        self.device = device
        self.compute_dtype = compute_dtype
        self.demo_only = demo_only
        self.alphas_cumprod = _alphas_cumprod(scheduler, device)
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self.latent_factor = 1
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1)
        sample_size = unet.config.sample_size
        self.native_resolution = int(sample_size if isinstance(sample_size, int) else sample_size[0])
        unet.requires_grad_(False)
        unet.eval()

    def encode(self, pixels):
        return pixels * 2 - 1

    def encode_prompts(self, prompts):
        return None

    def predict(self, noisy, timesteps, conditioning, params=None):
        return _call_denoiser(self.unet, params, (noisy.to(self.unet.dtype), timesteps), {"return_dict": False})[0]

    def trainable_parameters(self):
        return dict(self.unet.named_parameters())

    def enable_low_memory(self) -> None:
        self.unet.enable_gradient_checkpointing()

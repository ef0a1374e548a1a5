"""Text-to-image with the graph's MODEL / CLIP / VAE, as the core's `Generate` callable (for Verify Model).

The same calls a KSampler node makes: CLIP text encoding, `comfy.sample.sample` from an empty
latent with a seeded noise, then `vae.decode`. One prompt at a time, so every image has its own
prompt and seed. Runs under ComfyUI's inference mode (no gradients are needed).
"""

from __future__ import annotations

import numpy as np
import torch

from .tensors import to_uint8_list


def encode_text(clip, text: str) -> list:
    """A CONDITIONING, as CLIP Text Encode builds it."""
    tokens = clip.tokenize(text)
    scheduled = getattr(clip, "encode_from_tokens_scheduled", None)
    if callable(scheduled):
        return scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def comfy_generator(model, clip, vae, *, steps: int, cfg: float, sampler_name: str, scheduler: str, width: int, height: int,
                    negative: str = ""):  # fmt: skip
    """`generate(prompts, seeds) -> list of uint8 HxWx3` over a ComfyUI model."""
    import comfy.sample

    ratio = getattr(vae, "downscale_ratio", 8)
    ratio = ratio if isinstance(ratio, int) else 8
    negative_cond = encode_text(clip, negative)

    def generate(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        images: list[np.ndarray] = []
        for prompt, seed in zip(prompts, seeds):
            latent = torch.zeros([1, 4, height // ratio, width // ratio])
            fix = getattr(comfy.sample, "fix_empty_latent_channels", None)
            if callable(fix):
                latent = fix(model, latent)
            noise = comfy.sample.prepare_noise(latent, seed)
            samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, encode_text(clip, prompt), negative_cond,
                                          latent, denoise=1.0, disable_pbar=True, seed=seed)  # fmt: skip
            images += to_uint8_list(vae.decode(samples))
        return images

    return generate

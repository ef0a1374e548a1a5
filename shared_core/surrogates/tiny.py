"""Tiny models built locally from the real diffusers / transformers classes.

They make demos, tests and benchmarks possible without any download. Their weights are random
(or trained by the benchmark on a few hundred images), so protection crafted on them is
demo-grade only: it exercises every code path of Stable Diffusion without its knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

#: CLIP's context length, kept so prompts behave as in Stable Diffusion.
MAX_PROMPT_TOKENS = 77


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer: byte-level alphabet, no merges, CLIP's special tokens."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        for char in alphabet:
            vocab[char + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_PROMPT_TOKENS)


@dataclass(frozen=True)
class TinyLatentConfig:
    """Widths of a tiny Stable-Diffusion-shaped model. Defaults: 256 px images, 32x32 latents."""

    resolution: int = 256
    vae_channels: tuple[int, ...] = (16, 32, 32, 32)  # four blocks: 8x downsampling, as in SD
    unet_channels: tuple[int, ...] = (32, 64)
    text_width: int = 32
    text_layers: int = 2
    seed: int = 0


class _seeded:
    """Build weights from a fixed seed without disturbing the caller's random state."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)


def _tiny_vae(config: TinyLatentConfig) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=config.resolution,
        scaling_factor=4.0,  # random-weight latents have std ~0.25; SD's 0.18215 assumes a trained VAE
    )


def _tiny_text_config(config: TinyLatentConfig, vocab_size: int, width: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=config.text_layers,
        num_attention_heads=4,
        max_position_embeddings=MAX_PROMPT_TOKENS,
        projection_dim=width,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _tiny_unet(config: TinyLatentConfig, cross_attention_dim: int, **extra) -> UNet2DConditionModel:
    levels = len(config.unet_channels)
    return UNet2DConditionModel(
        sample_size=config.resolution // 2 ** (len(config.vae_channels) - 1),
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (levels - 1),
        up_block_types=("UpBlock2D",) * (levels - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def sd_scheduler() -> DDPMScheduler:
    """Stable Diffusion's training schedule (scaled-linear betas, 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )


def tiny_sd_pipeline(config: TinyLatentConfig = TinyLatentConfig()) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of the real classes with tiny widths and seeded random weights."""
    tokenizer = tiny_tokenizer()
    with _seeded(config.seed):
        vae = _tiny_vae(config)
        unet = _tiny_unet(config, config.text_width)
        text_encoder = CLIPTextModel(_tiny_text_config(config, len(tokenizer), config.text_width))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(config: TinyLatentConfig = TinyLatentConfig()) -> StableDiffusionXLPipeline:
    """SDXL's layout in miniature: two text encoders (the second with projection) and text-time embeddings."""
    tokenizer = tiny_tokenizer()
    time_embed_dim = 8
    with _seeded(config.seed):
        vae = _tiny_vae(config)
        unet = _tiny_unet(
            config,
            2 * config.text_width,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=config.text_width + 6 * time_embed_dim,
        )
        text_encoder = CLIPTextModel(_tiny_text_config(config, len(tokenizer), config.text_width))
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(config, len(tokenizer), config.text_width))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tiny_tokenizer(),
        unet=unet,
        scheduler=sd_scheduler(),
    )


def tiny_pixel_ddpm(resolution: int = 32, channels: tuple[int, ...] = (32, 64, 64), seed: int = 0):
    """A pixel-space UNet2DModel and its linear-schedule DDPMScheduler (the UDP paper's DDPM setting)."""
    with _seeded(seed):
        unet = UNet2DModel(
            sample_size=resolution,
            in_channels=3,
            out_channels=3,
            block_out_channels=channels,
            layers_per_block=1,
            down_block_types=("DownBlock2D",) * (len(channels) - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(channels) - 1),
            norm_num_groups=8,
        )
    return unet, DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")

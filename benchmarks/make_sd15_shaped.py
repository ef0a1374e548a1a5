"""Write a Stable Diffusion 1.5-shaped diffusers folder with random weights, for timing on a GPU.

Speed and memory depend on the shapes, not on the weights' values, so a folder with SD 1.5's exact
architecture (UNet 320/640/1280/1280 with 768-wide cross-attention, the 4-block VAE, a 12-layer
CLIP-L-sized text encoder) measures what protecting with the real SD 1.5 costs, where the real
weights cannot be downloaded. Do not protect images with it: it is untrained.

    python benchmarks/make_sd15_shaped.py /tmp/sd15-shaped
    unlearnable bench overhead --model /tmp/sd15-shaped --device cuda --batch-size 1
"""

from __future__ import annotations

import sys

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from shared_core.surrogates.tiny import sd_scheduler, tiny_tokenizer


def sd15_shaped_pipeline() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))  # fmt: skip
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(), unet=unet, scheduler=sd_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sd15_shaped_pipeline().save_pretrained(sys.argv[1])
    print(f"wrote {sys.argv[1]}")

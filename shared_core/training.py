"""The victim's side: standard diffusion training loops on real diffusers models.

Tests and benchmarks need someone who trains on (protected or marked) data exactly as a mimic
would: the usual denoising objective, full fine-tuning or LoRA through peft. The loops are small
and deterministic given a seed; `progress(done, total)` reports as they go.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .files import atomic_write_bytes

Progress = Callable[[int, int], None] | None
#: timesteps at which `heldout_denoising_loss` evaluates each image
LOSS_TIMESTEPS = 16


def images_to_tensor(images: Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
    """uint8 HxWx3 arrays (all one size) or a [N, 3, H, W] tensor in [0, 1] -> [N, 3, H, W] in [-1, 1]."""
    if isinstance(images, torch.Tensor):
        return images.float() * 2 - 1
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _target(scheduler, latents, noise, timesteps):
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


class Checkpoint:
    """A training loop's whole state (weights, optimiser, random generators, losses so far), written
    atomically to `path` at most every `every_s` seconds and at the end, so that a stopped loop
    resumes where it stopped and ends as an uninterrupted one would. Our own file: it holds only
    tensors and plain values, and is read back with `weights_only=True`."""

    def __init__(self, path: str | Path, every_s: float = 600.0):
        self.path, self.every_s = Path(path), every_s
        self._saved_at = time.monotonic()
        self.parts: tuple = ()

    def bind(self, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        self.parts = (modules, optimizer, generator)

    def restore(self) -> tuple[int, list[float]]:
        """(steps already done, their losses), loading the saved state into the bound parts; (0, []) without a file."""
        if not self.path.exists():
            return 0, []
        modules, optimizer, generator = self.parts
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if set(state["modules"]) != set(modules):
            raise ValueError(f"{self.path}: a checkpoint of {sorted(state['modules'])}, not of {sorted(modules)}; delete it to start over")
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"]), list(state["losses"])

    def save(self, step: int, losses: list[float], *, force: bool = False) -> None:
        if not force and time.monotonic() - self._saved_at < self.every_s:
            return
        modules, optimizer, generator = self.parts
        buffer = io.BytesIO()
        torch.save({"step": step, "losses": losses, "modules": {name: module.state_dict() for name, module in modules.items()},
                    "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}, buffer)  # fmt: skip
        atomic_write_bytes(self.path, buffer.getvalue())
        self._saved_at = time.monotonic()


def _optimise(optimizer: torch.optim.Optimizer, steps: int, batch_loss: Callable[[], torch.Tensor], progress: Progress,
              checkpoint: Checkpoint | None = None) -> list[float]:  # fmt: skip
    """`steps` optimiser steps on `batch_loss()` (which draws its own batch); returns the losses.
    With a bound `checkpoint`, starts from its saved step and saves as it goes."""
    start, losses = checkpoint.restore() if checkpoint else (0, [])
    for step in range(start, steps):
        loss = batch_loss()
        value = loss.item()
        if not np.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at step {step + 1} of {steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(value)
        if checkpoint:
            checkpoint.save(step + 1, losses, force=step + 1 == steps)
        if progress:
            progress(step + 1, steps)
    return losses


def train_autoencoder(vae, images, *, steps: int, batch_size: int = 16, lr: float = 1e-3, kl_weight: float = 1e-6, seed: int = 0,
                      progress: Progress = None, checkpoint: Checkpoint | None = None) -> list[float]:  # fmt: skip
    """Reconstruction pretraining of an AutoencoderKL (MSE + a small KL term), in place; resumable with `checkpoint`.

    Afterwards the VAE's `scaling_factor` is set so that latents of `images` have unit variance.
    """
    data = images_to_tensor(images).to(vae.device)
    generator = torch.Generator().manual_seed(seed)  # random draws on the CPU: the same on any device
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    vae.train().requires_grad_(True)
    if checkpoint:
        checkpoint.bind({"vae": vae}, optimizer, generator)

    def batch_loss() -> torch.Tensor:
        batch = data[torch.randint(len(data), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        return F.mse_loss(reconstruction, batch) + kl_weight * posterior.kl().mean()

    losses = _optimise(optimizer, steps, batch_loss, progress, checkpoint)
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # as SD's 0.18215: scale latents to unit variance for the diffusion model
        std = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in data.split(64)]).std().item()
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    return losses


def _add_lora(module, rank: int, targets: list[str]):
    from peft import LoraConfig

    module.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
    return [p for n, p in module.named_parameters() if "lora_" in n]


def train_text_to_image(
    pipeline,
    images,
    captions: Sequence[str],
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    lora_rank: int | None = None,
    train_text_encoder: bool = True,
    caption_dropout: float = 0.1,
    seed: int = 0,
    progress: Progress = None,
    checkpoint: Checkpoint | None = None,
) -> list[float]:
    """Stable Diffusion fine-tuning (or training from a random init) on image-caption pairs, in place;
    resumable with `checkpoint` (full training: the UNet and text encoder are saved).

    The VAE stays frozen and latents are encoded once. With `lora_rank`, peft adapters are added to
    the UNet's attention projections (and the text encoder's, if trained) and only they learn.
    Captions are dropped to "" with probability `caption_dropout`, as SD training does, so
    classifier-free guidance works at generation time.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    is_sdxl = getattr(pipeline, "text_encoder_2", None) is not None
    if is_sdxl and train_text_encoder:
        raise ValueError("SDXL training here keeps the text encoders frozen: pass train_text_encoder=False")
    unet, vae, text_encoder, tokenizer, scheduler = pipeline.unet, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer, pipeline.scheduler
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae.requires_grad_(False)
    with torch.no_grad():
        pixels = images_to_tensor(images)
        latents = torch.cat([vae.encode(chunk.to(vae.device)).latent_dist.mean for chunk in pixels.split(32)]) * vae.config.scaling_factor
    device = unet.device
    latents = latents.to(device)
    tokens = tokenizer(list(captions) + [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    empty = tokens[-1:]
    tokens = tokens[:-1]
    sdxl_conditioning = _sdxl_conditioning(pipeline, list(captions), latents.shape[-2:], device) if is_sdxl else None

    if lora_rank:
        parameters = _add_lora(unet, lora_rank, ["to_q", "to_k", "to_v", "to_out.0"])
        if train_text_encoder:
            parameters += _add_lora(text_encoder, lora_rank, ["q_proj", "k_proj", "v_proj", "out_proj"])
    else:
        unet.requires_grad_(True)
        parameters = list(unet.parameters())
        if train_text_encoder:
            text_encoder.requires_grad_(True)
            parameters += list(text_encoder.parameters())
    text_encoder.requires_grad_(train_text_encoder and not lora_rank)
    if lora_rank and train_text_encoder:
        for name, param in text_encoder.named_parameters():
            param.requires_grad_("lora_" in name)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-2)
    unet.train()
    text_encoder.train(train_text_encoder)
    if checkpoint:
        checkpoint.bind({"unet": unet, "text_encoder": text_encoder}, optimizer, generator)

    def batch_loss() -> torch.Tensor:
        index = torch.randint(len(latents), (batch_size,), generator=generator)
        batch_tokens = tokens[index].clone()
        dropped = torch.rand(batch_size, generator=generator) < caption_dropout
        batch_tokens[dropped] = empty
        extra = {}
        if sdxl_conditioning is not None:
            rows = torch.where(dropped, len(latents), index)  # the last row is the empty prompt's
            hidden, pooled, time_ids = (part[rows.to(part.device)] for part in sdxl_conditioning)
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        else:
            with torch.set_grad_enabled(train_text_encoder):
                hidden = text_encoder(batch_tokens.to(text_encoder.device))[0].to(device)
        z0 = latents[index]
        noise = torch.randn(z0.shape, generator=generator).to(device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
        prediction = unet(scheduler.add_noise(z0, noise, timesteps), timesteps, encoder_hidden_states=hidden, **extra).sample
        return F.mse_loss(prediction, _target(scheduler, z0, noise, timesteps))

    losses = _optimise(optimizer, steps, batch_loss, progress, checkpoint)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def _sdxl_conditioning(pipeline, captions: list[str], latent_size, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SDXL's frozen conditioning for every caption and, in the last row, the empty prompt:
    both text encoders' hidden states, the pooled embedding and the size/crop time ids."""
    embeds, pooled = [], []
    prompts = captions + [""]
    for start in range(0, len(prompts), 16):
        hidden, _, pool, _ = pipeline.encode_prompt(prompts[start : start + 16], device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        embeds.append(hidden)
        pooled.append(pool)
    height, width = (int(side) * pipeline.vae_scale_factor for side in latent_size)
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device).expand(len(prompts), -1)
    return torch.cat(embeds).to(device), torch.cat(pooled).to(device), time_ids


def train_pixel_ddpm(unet, scheduler, images, *, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, progress: Progress = None) -> list[float]:
    """Unconditional pixel-space DDPM training (the UDP paper's from-scratch setting), in place."""
    data = images_to_tensor(images)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    unet.train().requires_grad_(True)

    def batch_loss() -> torch.Tensor:
        x0 = data[torch.randint(len(data), (batch_size,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, timesteps), timesteps).sample
        return F.mse_loss(prediction, _target(scheduler, x0, noise, timesteps))

    losses = _optimise(optimizer, steps, batch_loss, progress)
    unet.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def heldout_denoising_loss(surrogate, images: Sequence[np.ndarray], prompt: str = "", seed: int = 1234) -> float:
    """A model's mean denoising loss on clean `images` (uint8 HxWx3) at LOSS_TIMESTEPS evenly spread timesteps
    with noise fixed by `seed`: an ELBO proxy for how well it explains those images, comparable across models."""
    device = surrogate.device
    conditioning = surrogate.encode_prompts([prompt] * LOSS_TIMESTEPS)
    total = surrogate.num_timesteps
    timesteps = torch.linspace(total * 0.02, total * 0.98, LOSS_TIMESTEPS).round().long().to(device)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for rgb in images:
        pixels = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div(255)[None].to(device)
        z0 = surrogate.encode(pixels).float().expand(LOSS_TIMESTEPS, -1, -1, -1)
        noise = torch.randn(z0.shape, generator=generator).to(device)
        losses.append(surrogate.denoising_loss(z0, timesteps, noise, conditioning).mean().item())
    return float(np.mean(losses))


def save_lora(pipeline, directory, weight_name: str = "pytorch_lora_weights.safetensors") -> None:
    """Write the UNet (and text encoder) peft adapters as a diffusers/PEFT LoRA file."""
    from peft.utils import get_peft_model_state_dict

    layers = {"unet_lora_layers": get_peft_model_state_dict(pipeline.unet)}
    if any("lora_" in name for name, _ in pipeline.text_encoder.named_parameters()):
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(pipeline.text_encoder)
    type(pipeline).save_lora_weights(directory, weight_name=weight_name, **layers)

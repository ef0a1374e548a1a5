"""Turn what a user types after `--model` into a Surrogate, without touching the network."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import InputFileError, SettingsError
from .base import Surrogate
from .diffusers_backend import LatentDiffusersSurrogate, PixelDiffusersSurrogate
from .tiny import TinyLatentConfig, tiny_pixel_ddpm, tiny_sd_pipeline

log = logging.getLogger(__name__)

BUILTIN_MODELS = {
    "builtin:tiny": "tiny Stable-Diffusion-shaped latent model with random weights (demo-grade protection only)",
    "builtin:tiny-pixel": "tiny pixel-space DDPM with random weights (demo-grade protection only)",
}
_SDXL_SINGLE_FILE_KEY = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(f"--device {device} was asked for but this torch build sees no CUDA device; use --device cpu")
    return torch.device(device)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_dtype(device: torch.device) -> torch.dtype:
    """Half precision on accelerators (as ComfyUI and A1111 hold models there), float32 on CPU."""
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name in (None, "auto"):
        return default_dtype(device)
    if name not in DTYPES:
        raise SettingsError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _denoiser_dtype(pipeline, dtype: torch.dtype):
    """UNet and text encoders in `dtype`; the VAE encoder stays float32 (SD's VAE overflows in fp16)."""
    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipeline, name, None)
        if module is not None:
            module.to(dtype)
    return pipeline


def load_surrogate(spec: str, device: str | torch.device = "auto", *, config_dir: str | None = None, dtype: str | None = None) -> Surrogate:
    """Build a surrogate from `builtin:NAME`, a diffusers folder, or a single-file `.safetensors`.

    `dtype` ("fp32", "bf16", "fp16"; default fp16 on accelerators, fp32 on CPU) is the precision
    of the denoiser's weights, as hosts hold them; the forward runs under autocast in that dtype
    on accelerators, and everything an inner loop trains is float32 whatever this is.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    compute_dtype = parse_dtype(dtype, device)
    if spec.startswith("builtin:"):
        if spec == "builtin:tiny":
            pipeline = _denoiser_dtype(tiny_sd_pipeline(TinyLatentConfig()).to(device), compute_dtype)
            return LatentDiffusersSurrogate(pipeline, spec, device, compute_dtype, demo_only=True)
        if spec == "builtin:tiny-pixel":
            unet, scheduler = tiny_pixel_ddpm(resolution=64)
            return PixelDiffusersSurrogate(unet.to(device, compute_dtype), scheduler, spec, device, compute_dtype, demo_only=True)
        raise SettingsError(f"unknown built-in model {spec!r}; choose one of {', '.join(BUILTIN_MODELS)}")
    path = Path(spec)
    if path.is_dir():
        return _from_folder(path, device, compute_dtype)
    if path.is_file():
        return _from_single_file(path, device, compute_dtype, config_dir)
    raise InputFileError(path, "no such model file or folder (give a diffusers folder, a .safetensors checkpoint or builtin:tiny)")


def _from_folder(path: Path, device, compute_dtype) -> Surrogate:
    index = path / "model_index.json"
    if not index.is_file():
        raise InputFileError(path, "not a diffusers model folder (model_index.json is missing)")
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (ValueError, KeyError) as exc:
        raise InputFileError(index, f"unreadable model_index.json ({exc})") from None
    pickles = sorted(p for p in path.glob("*/*.bin") if not any(p.parent.glob("*.safetensors")))
    if pickles:
        raise InputFileError(pickles[0], "pickled weights (.bin) can run code when loaded: only .safetensors weights are read; convert the folder first")
    from diffusers import DiffusionPipeline

    try:
        pipeline = DiffusionPipeline.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise InputFileError(path, f"cannot load the diffusers pipeline {class_name}: {exc}") from None
    pipeline = _denoiser_dtype(pipeline.to(device), compute_dtype)
    if hasattr(pipeline, "vae") and hasattr(pipeline, "unet"):
        return LatentDiffusersSurrogate(pipeline, str(path), device, compute_dtype)
    if hasattr(pipeline, "unet") and hasattr(pipeline, "scheduler"):
        return PixelDiffusersSurrogate(pipeline.unet, pipeline.scheduler, str(path), device, compute_dtype)
    raise InputFileError(path, f"{class_name} is not a UNet diffusion pipeline this tool can use")


def _from_single_file(path: Path, device, compute_dtype, config_dir: str | None) -> Surrogate:
    if path.suffix.lower() != ".safetensors":
        raise InputFileError(
            path, "only .safetensors checkpoints are loaded (.ckpt/.pt files are pickles that can run code); convert it first"
        )
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            is_sdxl = _SDXL_SINGLE_FILE_KEY in set(handle.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise InputFileError(path, f"not a readable safetensors file ({exc})") from None
    pipeline_class = StableDiffusionXLPipeline if is_sdxl else StableDiffusionPipeline
    kwargs = {"local_files_only": True, "torch_dtype": torch.float32}
    if config_dir:
        kwargs["config"] = config_dir
    try:
        pipeline = pipeline_class.from_single_file(str(path), **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise InputFileError(
            path,
            f"cannot load as {pipeline_class.__name__} offline ({exc}). Single-file loading needs the model's "
            "diffusers configs: pass --config with a local diffusers folder of the same model family.",
        ) from None
    return LatentDiffusersSurrogate(_denoiser_dtype(pipeline.to(device), compute_dtype), str(path), device, compute_dtype)

"""The MODEL / VAE / CLIP a ComfyUI graph already loaded, as a core `Surrogate`.

ComfyUI's denoiser works in the variance-exploding form: `model.model.apply_model(x, sigma, ...)`
takes x = z0 + sigma * eps (scaled internally by `model_sampling.calculate_input`) and returns the
x0 ("denoised") prediction, whatever the network's own parameterisation (eps or v). The core works
in the variance-preserving form with integer timesteps, so for a timestep t:

    sigma_t = model_sampling.sigmas[t],   abar_t = 1 / (1 + sigma_t^2)
    x_ve = z_t / sqrt(abar_t),            eps = (x_ve - denoised) / sigma_t

and `prediction_type` is "epsilon" for eps and v models alike.

Inference tensors: ComfyUI runs every prompt under `torch.inference_mode()` and its loaders create
the weights there; autograd cannot save them for backward. The denoiser and the VAE encoder are
therefore cloned once (outside inference mode) into modules owned by this object, and conditioning
tensors are cloned too. The shared MODEL / VAE / CLIP are never modified (no requires_grad_, no
train(), no .to(), no weight writes), so the rest of the graph and ComfyUI's cache see them as before.
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

import torch
from torch.func import functional_call

from ..shared_core.errors import SettingsError
from ..shared_core.surrogates.base import Surrogate
from ..shared_core.surrogates.host_tensors import checkpoint_blocks, first_weight, plain_copy

#: the UNet's top-level blocks (ComfyUI/LDM names, and diffusers' for UNets wrapped the same way)
UNET_BLOCK = re.compile(r"(^|\.)((input_blocks|output_blocks|down_blocks|up_blocks)\.\d+|middle_block|mid_block)$")

#: VAE weights the encoder path never uses: shared with the host, not copied
VAE_DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def clone_module(module: torch.nn.Module, share: tuple[str, ...] = ()) -> torch.nn.Module:
    """A deep copy whose weights are normal (non-inference) tensors without gradients.

    Weights whose names start with one of `share` are not copied: the copy references the host's.
    """
    with torch.inference_mode(False):
        memo: dict[int, Any] = {}
        tensors = itertools.chain(module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False))
        for name, tensor in tensors:
            if id(tensor) in memo:
                continue
            if share and name.startswith(share):
                memo[id(tensor)] = tensor
            elif isinstance(tensor, torch.nn.Parameter):
                memo[id(tensor)] = torch.nn.Parameter(tensor.detach().clone(), requires_grad=False)
            else:
                memo[id(tensor)] = tensor.detach().clone()
        return copy.deepcopy(module, memo)


def _model_object(model, name: str):
    """`model.get_model_object(name)` (honours object patches such as ModelSamplingDiscrete), else the attribute."""
    getter = getattr(model, "get_model_object", None)
    if callable(getter):
        try:
            return getter(name)
        except (AttributeError, KeyError):
            pass
    return getattr(model.model, name)


def _is_variance_exploding(sampling, sigma: torch.Tensor) -> bool:
    """True when the model's input is x_ve / sqrt(sigma^2 + 1) (SD 1.x/2.x/SDXL; not flow models)."""
    try:
        probe = torch.ones(1, 1, 2, 2)
        scaled = sampling.calculate_input(sigma.reshape(1).float().cpu(), probe)
    except Exception:  # noqa: BLE001 - any failure means the model is not the kind handled here
        return False
    return bool(torch.allclose(scaled, probe / (sigma.float().cpu() ** 2 + 1).sqrt(), rtol=1e-4))


class _ApplyModel(torch.nn.Module):
    """Holds the cloned model so `functional_call` can swap in an inner loop's fast weights."""

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x, sigma, kwargs):
        return self.base.apply_model(x, sigma, transformer_options={}, **kwargs)


class ComfySurrogate(Surrogate):
    """A ComfyUI MODEL + VAE (+ CLIP or CONDITIONING) on the core Surrogate protocol.

    Args:
        model: a MODEL (ModelPatcher): LoRAs and patches applied in the graph are included.
        vae: a VAE; its encoder is used (the posterior mean), the decoder never runs.
        clip: a CLIP, to encode the protection prompt(s).
        conditioning: a CONDITIONING used for every image instead of `clip` (its first entry).
        name: what reports call the model.
    """

    def __init__(self, model, vae, clip=None, conditioning=None, name: str = "ComfyUI MODEL"):
        import comfy.model_management as mm

        if clip is None and not conditioning:
            raise SettingsError("connect a CLIP (the prompt is encoded with it) or a CONDITIONING to Protect Image")
        self.name = name
        self.demo_only = False
        self.clip = clip
        self.fixed_conditioning = plain_copy(conditioning[0]) if conditioning else None
        self._prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

        patchers = [model] + ([vae.patcher] if getattr(vae, "patcher", None) is not None else [])
        try:  # weights on their device with the graph's LoRAs / patches applied
            mm.load_models_gpu(patchers, force_full_load=True)
        except TypeError:  # hosts without force_full_load
            mm.load_models_gpu(patchers)

        host_base = model.model
        sampling = _model_object(model, "model_sampling")
        sigmas = getattr(sampling, "sigmas", None)
        if sigmas is None or not _is_variance_exploding(sampling, sigmas[len(sigmas) // 2]):
            raise SettingsError(
                f"{type(host_base).__name__} is not a DDPM-family model (SD 1.x / 2.x / SDXL); flow models such as "
                "SD3 and Flux cannot serve as surrogates: load an SD 1.5, SD 2.x or SDXL checkpoint"
            )
        self.host_base = host_base
        unet = clone_module(host_base.diffusion_model)
        self.device = first_weight(host_base.diffusion_model).device
        unet.to(self.device)
        sampling_clone = clone_module(sampling).to(self.device)
        self.base = self._shell(host_base, unet, sampling_clone)
        self.unet = self.denoiser = unet
        self._apply = _ApplyModel(self.base)
        with torch.inference_mode(False):
            self._sigmas = sampling_clone.sigmas.detach().float().to(self.device)
        self.alphas_cumprod = 1.0 / (1.0 + self._sigmas**2)
        self.prediction_type = "epsilon"
        self.compute_dtype = torch.float32  # ComfyUI casts to the model's own dtype inside apply_model
        self.latent_format = _model_object(model, "latent_format")

        self.vae = vae
        self.vae_encoder = clone_module(vae.first_stage_model, share=VAE_DECODER_PREFIXES)
        self.vae_device = first_weight(vae.first_stage_model).device
        self.vae_encoder.to(self.vae_device)
        self.vae_dtype = getattr(vae, "vae_dtype", None) or first_weight(vae.first_stage_model).dtype
        ratio = getattr(vae, "downscale_ratio", 8)
        self.latent_factor = ratio if isinstance(ratio, int) else 8
        self.size_multiple = self.latent_factor * 8
        kind = type(host_base).__name__
        self.is_sdxl = kind.startswith("SDXL")
        v_model = "V_PREDICTION" in {cls.__name__ for cls in type(sampling).__mro__}
        self.native_resolution = 1024 if self.is_sdxl else 768 if v_model else 512
        self.model_kind = kind

    @staticmethod
    def _shell(host_base: torch.nn.Module, unet: torch.nn.Module, sampling: torch.nn.Module) -> torch.nn.Module:
        """The host's BaseModel object with our own denoiser and schedule: its apply_model, our weights."""
        shell = copy.copy(host_base)
        shell._modules = dict(host_base._modules)
        shell._parameters = dict(host_base._parameters)
        shell._buffers = dict(host_base._buffers)
        shell._modules["diffusion_model"] = unet
        shell._modules["model_sampling"] = sampling
        return shell

    # -- conditioning ----------------------------------------------------------------------

    def _encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if prompt not in self._prompt_cache:
            with torch.inference_mode():
                tokens = self.clip.tokenize(prompt)
                cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
            self._prompt_cache[prompt] = (plain_copy(cond), plain_copy(pooled))
        return self._prompt_cache[prompt]

    def encode_prompts(self, prompts: list[str]) -> dict[str, Any]:
        if self.fixed_conditioning is not None:
            cond, extra = self.fixed_conditioning[0], self.fixed_conditioning[1] if len(self.fixed_conditioning) > 1 else {}
            pairs = [(cond, (extra or {}).get("pooled_output"))] * len(prompts)
        else:
            pairs = [self._encode_text(prompt) for prompt in prompts]
        lengths = {c.shape[1] for c, _ in pairs}
        if len(lengths) > 1:  # prompts of different token lengths: repeat the shorter ones (as ComfyUI does)
            longest = max(lengths)
            pairs = [(c.repeat(1, longest // c.shape[1], 1), p) for c, p in pairs]
        context = torch.cat([c[:1] for c, _ in pairs]).to(self.device)
        pooled = None
        if all(p is not None for _, p in pairs):
            pooled = torch.cat([p[:1] for _, p in pairs]).to(self.device)
        return {"context": context, "pooled": pooled}

    def _adm(self, conditioning: dict, height: int, width: int) -> torch.Tensor | None:
        """The `y` vector (SDXL: pooled text embedding + size embeddings), as ComfyUI builds it; cached per size."""
        cache = conditioning.setdefault("adm", {})
        if (height, width) not in cache:
            pooled = conditioning.get("pooled")
            kwargs = {"width": width, "height": height, "target_width": width, "target_height": height, "crop_w": 0, "crop_h": 0,
                      "prompt_type": "positive", "device": self.device}  # fmt: skip
            if pooled is not None:
                kwargs["pooled_output"] = pooled
            try:
                with torch.inference_mode():
                    y = self.host_base.encode_adm(**kwargs)
            except (KeyError, TypeError, AttributeError) as exc:
                if pooled is None and getattr(self.host_base, "adm_channels", 0):
                    raise SettingsError("this model needs the pooled CLIP output: connect a CLIP, or a CONDITIONING from CLIP Text Encode") from exc
                raise
            cache[(height, width)] = None if y is None else plain_copy(y).to(self.device)
        return cache[(height, width)]

    # -- the protocol ----------------------------------------------------------------------

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        process = getattr(self.vae, "process_input", None)
        x = process(pixels) if callable(process) else pixels * 2 - 1
        x = x.to(device=self.vae_device, dtype=self.vae_dtype)
        latents = self.vae_encoder.encode(x)
        if isinstance(latents, tuple):
            latents = latents[0]
        if not isinstance(latents, torch.Tensor):  # a posterior object
            latents = latents.mode() if callable(getattr(latents, "mode", None)) else latents.mean
        return self.latent_format.process_in(latents.float()).to(self.device)

    def predict(self, noisy, timesteps, conditioning, params=None):
        sigma = self._sigmas[timesteps.to(self._sigmas.device).long()].to(noisy.device)
        view = sigma.view(-1, *([1] * (noisy.dim() - 1)))
        x = noisy.float() * (1 + view**2).sqrt()  # z_t / sqrt(abar_t)
        context = conditioning["context"]
        if context.shape[0] != x.shape[0]:
            context = context.expand(x.shape[0], *context.shape[1:])
        kwargs: dict[str, Any] = {"c_crossattn": context}
        y = self._adm(conditioning, x.shape[-2] * self.latent_factor, x.shape[-1] * self.latent_factor)
        if y is not None:
            kwargs["y"] = y.expand(x.shape[0], -1) if y.shape[0] == 1 else y
        if params:
            overrides = {f"base.diffusion_model.{name}": value for name, value in params.items()}
            denoised = functional_call(self._apply, overrides, (x, sigma, kwargs), strict=False)
        else:
            denoised = self._apply(x, sigma, kwargs)
        return (x - denoised.float()) / view

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The cloned denoiser's weights (owned by this object; the host's are never touched)."""
        return dict(self.unet.named_parameters())

    def enable_low_memory(self) -> None:
        """Gradient checkpointing of the cloned UNet's blocks (ours to change: the host's is untouched)."""
        blocks = [module for name, module in self.unet.named_modules() if UNET_BLOCK.search(name)]
        if not blocks:
            raise SettingsError(f"low memory: {type(self.unet).__name__} has no UNet blocks to checkpoint")
        checkpoint_blocks(blocks)

    def describe(self) -> dict:
        info = super().describe()
        info.update({"host": "comfyui", "model_kind": self.model_kind})
        return info

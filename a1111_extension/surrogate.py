"""The checkpoint AUTOMATIC1111 or Forge already has loaded, as a core `Surrogate`.

A1111 (`shared.sd_model`): an LDM `LatentDiffusion` (SD 1.x/2.x) or sgm `DiffusionEngine` (SDXL)
with `model.diffusion_model` (the UNet, integer timesteps), `first_stage_model` (the VAE, whose
`encode` returns a Gaussian posterior), `scale_factor`, `alphas_cumprod`, `parameterization` and
`get_learned_conditioning`.

Forge (`sd_model.forge_objects`): ComfyUI-style patchers; `unet.model` is a KModel holding
`diffusion_model` and a `predictor` with the noise schedule; `vae.first_stage_model.encode` takes a
`regulation` that picks from the posterior; Forge's own encode functions run under
`torch.inference_mode()` and the weights it moves between devices may be inference tensors.

The denoiser is called directly with the engine's noisy latents and integer timesteps (the same
quantity A1111's `apply_model` feeds it), so no sampler scaling is involved. The shared model is
never changed: no `requires_grad_`, `train()`, `.to()` or weight writes; weights that are inference
tensors are cloned once (outside inference mode) and swapped in only for the duration of a call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch.func import functional_call

from shared_core.errors import SettingsError
from shared_core.surrogates.base import Surrogate
from shared_core.surrogates.host_tensors import first_weight, plain_copy

PREDICTION_TYPES = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}


def _clone_inference_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Normal-tensor copies of the module's inference-tensor weights and buffers (empty for A1111)."""
    with torch.inference_mode(False):
        clones = {}
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_inference():
                clones[name] = tensor.clone()
        return clones


@contextmanager
def _layer_norm_inputs_copied(norms: list[torch.nn.Module]) -> Iterator[None]:
    """Gives each LayerNorm in `norms` its own copy of its input for the duration of a call.

    Forge's transformer blocks add the attention output into the residual in place (`x += n`) after
    a LayerNorm saved that residual for its backward pass: harmless at inference, but under autograd
    the gradient would be wrong, so PyTorch refuses ("modified by an inplace operation"). A copy per
    LayerNorm keeps what backward needs intact without touching Forge's code or weights.
    """
    copy = lambda _module, args: (args[0].clone(), *args[1:])  # noqa: E731
    handles = [norm.register_forward_pre_hook(copy) for norm in norms]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Call(torch.nn.Module):
    """Holds a host module so `functional_call` can run one of its methods with swapped weights."""

    def __init__(self, inner: torch.nn.Module, method: Callable[..., Any]):
        super().__init__()
        self.inner = inner
        self._method = method

    def forward(self, *args, **kwargs):
        return self._method(*args, **kwargs)


class WebUISurrogate(Surrogate):
    """The checkpoint loaded in A1111 or Forge, on the core Surrogate protocol.

    Args:
        sd_model: `modules.shared.sd_model`.
        name: what reports call the model (the checkpoint title).
        prepare: called before each use, e.g. Forge's `load_models_gpu` so the weights are on the GPU.
    """

    def __init__(self, sd_model, name: str = "loaded checkpoint", prepare: Callable[[], None] | None = None):
        self.sd_model = sd_model
        self.name = name
        self._prepare = prepare or (lambda: None)
        self._prepare()  # Forge may have offloaded the weights: the device is read below
        self.demo_only = False
        forge = getattr(sd_model, "forge_objects", None)
        self.is_forge = forge is not None
        if self.is_forge:
            kmodel = forge.unet.model
            self.denoiser_holder = kmodel
            self.unet = kmodel.diffusion_model
            self.vae = forge.vae.first_stage_model
            predictor = kmodel.predictor
            kind = getattr(predictor, "prediction_type", None)
            if kind not in PREDICTION_TYPES or getattr(predictor, "sigmas", None) is None:
                raise SettingsError(
                    "the loaded checkpoint is not a DDPM-family model (SD 1.x/2.x/SDXL); Flux and SD3 are not supported "
                    "as surrogates: load an SD 1.5, SD 2.x or SDXL checkpoint"
                )
            abar = getattr(predictor, "alphas_cumprod", None)
            if abar is None:
                abar = 1.0 / (1.0 + predictor.sigmas.float() ** 2)
            self.prediction_type = PREDICTION_TYPES[kind]
            self.compute_dtype = getattr(kmodel, "computation_dtype", first_weight(self.unet).dtype)
        else:
            wrapper = getattr(sd_model, "model", None)
            if wrapper is None or not hasattr(wrapper, "diffusion_model"):
                raise SettingsError("the loaded model has no `model.diffusion_model`: not a Stable Diffusion checkpoint")
            if getattr(wrapper, "conditioning_key", "crossattn") not in ("crossattn", None):
                raise SettingsError(f"{wrapper.conditioning_key!r} models (inpainting, unCLIP) are not supported as surrogates")
            self.denoiser_holder = wrapper
            self.unet = wrapper.diffusion_model
            self.vae = sd_model.first_stage_model
            abar = sd_model.alphas_cumprod
            self.prediction_type = PREDICTION_TYPES.get(getattr(sd_model, "parameterization", "eps"), "epsilon")
            self.compute_dtype = first_weight(self.unet).dtype
        self.denoiser = self.unet
        self.device = first_weight(self.unet).device
        self.alphas_cumprod = abar.detach().float().to(self.device)
        self.latent_factor = 8
        self.size_multiple = 64
        self.is_sdxl = bool(getattr(sd_model, "is_sdxl", False))
        self.native_resolution = 1024 if self.is_sdxl else 768 if self.prediction_type == "v_prediction" else 512
        self._unet_clones: dict[str, torch.Tensor] | None = None
        # found once, not on every PGD step: the LayerNorms that get a copy of their input (Forge, see above)
        self._layer_norms = [m for m in self.unet.modules() if isinstance(m, torch.nn.LayerNorm)] if self.is_forge else []
        self._vae_clones: dict[str, torch.Tensor] | None = None

    # -- weights ---------------------------------------------------------------------------

    def _clones(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self._unet_clones is None:
            self._prepare()
            self._unet_clones = _clone_inference_tensors(self.unet)
            self._vae_clones = _clone_inference_tensors(self.vae)
        return self._unet_clones, self._vae_clones

    def enable_low_memory(self) -> None:
        raise SettingsError(
            "--low-memory (gradient checkpointing) would have to change the web UI's shared model, which this "
            "extension never does; start the web UI with --medvram or --lowvram, or lower the batch size, instead"
        )

    def trainable_parameters(self) -> dict[str, torch.Tensor]:
        """The UNet's weights (detached views, or the clones of inference tensors); never written to."""
        clones, _ = self._clones()
        return {name: clones.get(name, param.detach()) for name, param in self.unet.named_parameters()}

    # -- the protocol ----------------------------------------------------------------------

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        _, vae_clones = self._clones()
        dtype = first_weight(self.vae).dtype
        x = (pixels * 2 - 1).to(device=first_weight(self.vae).device, dtype=dtype)
        if self.is_forge:
            def run(inner, x):
                return inner.encode(x, regulation=lambda posterior: posterior.mean)
        else:
            def run(inner, x):
                return inner.encode(x)
        holder = _Call(self.vae, lambda x: run(self.vae, x))
        if vae_clones:
            posterior = functional_call(holder, {f"inner.{k}": v for k, v in vae_clones.items()}, (x,), strict=False)
        else:
            posterior = holder(x)
        latents = self._posterior_mean(posterior)
        if self.is_forge:
            return self.vae.process_in(latents.float())
        scale = getattr(self.sd_model, "scale_factor", None)
        if scale is None:  # an LDM without the attribute: let the model scale it
            return self.sd_model.get_first_stage_encoding(latents).float()
        return latents.float() * float(scale)

    @staticmethod
    def _posterior_mean(posterior) -> torch.Tensor:
        if isinstance(posterior, tuple):
            posterior = posterior[0]
        if isinstance(posterior, torch.Tensor):
            return posterior
        mode = getattr(posterior, "mode", None)
        if callable(mode):
            return mode()
        return posterior.mean

    def encode_prompts(self, prompts: list[str]) -> Any:
        self._prepare()
        with torch.no_grad():
            conditioning = self.sd_model.get_learned_conditioning(list(prompts))
        return plain_copy(conditioning)

    def predict(self, noisy, timesteps, conditioning, params=None):
        clones, _ = self._clones()
        dtype = self.compute_dtype if self.device.type != "cpu" else first_weight(self.unet).dtype
        x = noisy.to(dtype)
        t = timesteps.to(noisy.device).float() if self.is_forge else timesteps.to(noisy.device)
        if isinstance(conditioning, dict):
            context = conditioning.get("crossattn", conditioning.get("c_crossattn"))
            y = conditioning.get("vector")
        else:
            context, y = conditioning, None
        context = context.to(dtype)
        y = None if y is None else y.to(dtype)
        overrides = {**clones, **(params or {})}
        if self.is_forge:
            kwargs = {"timesteps": t, "context": context, "transformer_options": {}}
            if y is not None:
                kwargs["y"] = y
            module, args = self.unet, (x,)
        elif isinstance(conditioning, dict):  # sgm (SDXL): OpenAIWrapper(x, t, c)
            module, args, kwargs = self.denoiser_holder, (x, t, {"crossattn": context, "vector": y}), {}
            overrides = {f"diffusion_model.{k}": v for k, v in overrides.items()}
        else:  # LDM DiffusionWrapper(x, t, c_crossattn=[cond]): its hooks (A1111 --medvram) still run
            module, args, kwargs = self.denoiser_holder, (x, t), {"c_crossattn": [context]}
            overrides = {f"diffusion_model.{k}": v for k, v in overrides.items()}
        guard = _layer_norm_inputs_copied(self._layer_norms) if self.is_forge and torch.is_grad_enabled() else nullcontext()
        with guard:
            if overrides:
                output = functional_call(module, overrides, args, kwargs, strict=False)
            else:
                output = module(*args, **kwargs)
        return output.float()

    def describe(self) -> dict:
        info = super().describe()
        info["host"] = "forge" if self.is_forge else "a1111"
        return info

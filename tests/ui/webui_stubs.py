"""Stand-ins for the few AUTOMATIC1111/Forge pieces the extension touches, for tests.

- `install_modules(sys_modules)`: fake `modules.shared`, `script_callbacks`, `call_queue`, `devices`
  with the same names and call shapes as A1111's (only what a1111_extension uses).
- `TinyLDM`: a model shaped like A1111's `LatentDiffusion` (`model.diffusion_model` UNet taking
  integer timesteps and `context`, `apply_model(x, t, cond)`, `first_stage_model.encode` returning a
  Gaussian posterior, `get_first_stage_encoding`, `scale_factor`, `alphas_cumprod`, `parameterization`).
- `TinyForgeModel`: the same network behind Forge's `forge_objects` (KModel with a predictor,
  VAE with `encode(x, regulation)` and `process_in`, inference-mode `get_learned_conditioning`).

Used by the pytest tests and, by path, by the scripts that run in the gradio 3.41.2 / 4.40.0 venvs.
"""

from __future__ import annotations

import math
import threading
import types

import torch
from torch import nn

# -- modules.* ---------------------------------------------------------------------------------


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, **kwargs):
        self.default, self.label, self.component, self.component_args, self.section = default, label, component, component_args, section
        self.reload_ui = False

    def needs_reload_ui(self):
        self.reload_ui = True
        return self


class Options:
    def __init__(self):
        self.data_labels: dict[str, OptionInfo] = {}
        self.data: dict = {"sd_model_checkpoint": "tiny-ldm.safetensors [0000]"}

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, item):
        data = self.__dict__.get("data", {})
        if item in data:
            return data[item]
        raise AttributeError(item)


class State:
    def __init__(self):
        self.interrupted = False
        self.job = ""
        self.log: list[str] = []

    def begin(self, job="(unknown)"):
        self.interrupted = False
        self.job = job
        self.log.append(f"begin {job}")

    def end(self):
        self.log.append(f"end {self.job}")
        self.job = ""

    def interrupt(self):
        self.interrupted = True


def install_modules(sys_modules, sd_model=None) -> types.SimpleNamespace:
    """Put fake `modules` and its submodules into `sys_modules` (a dict or monkeypatch-able mapping)."""
    shared = types.ModuleType("modules.shared")
    shared.opts = Options()
    shared.state = State()
    shared.OptionInfo = OptionInfo
    shared.sd_model = sd_model
    shared.cmd_opts = types.SimpleNamespace(api=True)  # started with --api: the tab's buttons are named endpoints
    callbacks = types.ModuleType("modules.script_callbacks")
    callbacks.registered = {"ui_tabs": [], "ui_settings": []}
    callbacks.on_ui_tabs = lambda fn, *, name=None: callbacks.registered["ui_tabs"].append(fn)
    callbacks.on_ui_settings = lambda fn, *, name=None: callbacks.registered["ui_settings"].append(fn)
    call_queue = types.ModuleType("modules.call_queue")
    call_queue.queue_lock = threading.Lock()
    devices = types.ModuleType("modules.devices")
    devices.device = torch.device("cpu")
    package = types.ModuleType("modules")
    package.__path__ = []
    for name, module in (("shared", shared), ("script_callbacks", callbacks), ("call_queue", call_queue), ("devices", devices)):
        setattr(package, name, module)
        sys_modules[f"modules.{name}"] = module
    sys_modules["modules"] = package
    return types.SimpleNamespace(shared=shared, script_callbacks=callbacks, call_queue=call_queue, devices=devices)


# -- a tiny LDM ----------------------------------------------------------------------------------


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class CrossAttention(nn.Module):
    """ldm.modules.attention.CrossAttention's layer names (to_q, to_k, to_v, to_out.0), one head."""

    def __init__(self, width, context_dim):
        super().__init__()
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context_dim, width, bias=False)
        self.to_v = nn.Linear(context_dim, width, bias=False)
        self.to_out = nn.Sequential(nn.Linear(width, width), nn.Dropout(0.0))

    def forward(self, h, context):
        b, c, height, width = h.shape
        tokens = h.flatten(2).transpose(1, 2)
        q, k, v = self.to_q(tokens), self.to_k(context), self.to_v(context)
        out = torch.softmax(q @ k.transpose(1, 2) / c**0.5, dim=-1) @ v
        return h + self.to_out(out).transpose(1, 2).reshape(b, c, height, width)


class TinyUNet(nn.Module):
    """UNetModel-shaped: forward(x, timesteps, context, y), with one cross-attention block."""

    def __init__(self, channels=4, width=16, context_dim=8):
        super().__init__()
        self.model_channels = width
        self.time_embed = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.attn = CrossAttention(width, context_dim)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.up = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        h = self.conv_in(x) + emb[:, :, None, None]
        h = torch.nn.functional.silu(self.down(h))
        h = self.attn(h, context.to(h.dtype))
        h = torch.nn.functional.silu(self.mid(h))
        return self.conv_out(self.up(h) + emb[:, :, None, None])


class DiffusionWrapper(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet
        self.conditioning_key = "crossattn"

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class DiagonalGaussianDistribution:
    def __init__(self, parameters):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.std = torch.exp(0.5 * self.logvar.clamp(-30, 20))

    def sample(self):
        return self.mean + self.std * torch.randn_like(self.mean)

    def mode(self):
        return self.mean


class TinyAutoencoderKL(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.SiLU(), nn.Conv2d(8, 2 * channels, 2, stride=2))
        self.quant_conv = nn.Conv2d(2 * channels, 2 * channels, 1)

    def encode(self, x):
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))


class TinyTextEncoder(nn.Module):
    def __init__(self, dim=8, length=6):
        super().__init__()
        self.embedding = nn.Embedding(256, dim)
        self.length = length

    def forward(self, prompts):
        ids = torch.tensor([[ord(c) % 256 for c in (p + " " * self.length)[: self.length]] for p in prompts])
        return self.embedding(ids.to(self.embedding.weight.device))


def ddpm_alphas_cumprod(steps=1000) -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class TinyLDM(nn.Module):
    """Shaped like ldm.models.diffusion.ddpm.LatentDiffusion as A1111 holds it."""

    def __init__(self, seed=0, unet_dtype=torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        self.model = DiffusionWrapper(TinyUNet().to(unet_dtype))  # A1111 holds the UNet in fp16 on GPUs
        self.first_stage_model = TinyAutoencoderKL()
        self.cond_stage_model = TinyTextEncoder()
        self.scale_factor = 0.18215
        self.parameterization = "eps"
        self.register_buffer("alphas_cumprod", ddpm_alphas_cumprod())
        self.sd_checkpoint_info = types.SimpleNamespace(title="tiny-ldm.safetensors [0000]")
        self.eval()

    def get_learned_conditioning(self, prompts):
        return self.cond_stage_model(prompts)

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample()
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise NotImplementedError(type(encoder_posterior))
        return self.scale_factor * z

    def apply_model(self, x_noisy, t, cond):
        return self.model(x_noisy, t, c_crossattn=[cond])


# -- the same network behind Forge's objects ------------------------------------------------------


class ForgeVAEModel(TinyAutoencoderKL):
    scaling_factor, shift_factor = 0.18215, 0.0

    def encode(self, x, regulation=None):
        posterior = super().encode(x)
        return regulation(posterior) if regulation is not None else posterior.sample()

    def process_in(self, latent):
        return (latent - self.shift_factor) * self.scaling_factor


class Predictor(nn.Module):
    def __init__(self):
        super().__init__()
        self.prediction_type = "epsilon"
        abar = ddpm_alphas_cumprod()
        self.register_buffer("alphas_cumprod", abar)
        self.register_buffer("sigmas", ((1 - abar) / abar) ** 0.5)


class KModel(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet
        self.predictor = Predictor()
        self.computation_dtype = torch.float32


class TinyForgeModel:
    """Shaped like Forge's ForgeDiffusionEngine for SD 1.5; built under inference mode like Forge's weights."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        with torch.inference_mode():
            unet = TinyUNet()
            vae = ForgeVAEModel()
            text = TinyTextEncoder()
            # what a device move under inference mode does: the weights become inference tensors
            for module in (unet, vae, text):
                for param in module.parameters():
                    param.data = param.data.clone()
        self.forge_objects = types.SimpleNamespace(
            unet=types.SimpleNamespace(model=KModel(unet)),
            vae=types.SimpleNamespace(first_stage_model=vae, patcher=None),
            clip=types.SimpleNamespace(cond_stage_model=text, patcher=None),
        )
        self.is_sdxl = False
        self.sd_checkpoint_info = types.SimpleNamespace(title="tiny-forge.safetensors [0000]")

    @torch.inference_mode()
    def get_learned_conditioning(self, prompts):
        return self.forge_objects.clip.cond_stage_model(prompts)


def make_inference_ldm(seed=0) -> TinyLDM:
    """A TinyLDM whose weights and buffers are inference tensors (as after a move under inference mode)."""
    model = TinyLDM(seed)
    with torch.inference_mode():
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None:
                    module._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=False)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module._buffers[name] = buffer.clone()
    return model

"""The core's tiny diffusers models dressed as ComfyUI's MODEL / VAE / CLIP objects.

Shapes and semantics follow ComfyUI (v0.3.64): a ModelPatcher-like `model` whose `.model` is a
BaseModel-like torch module with `diffusion_model`, `model_sampling` (ModelSamplingDiscrete with
the EPS or V_PREDICTION mixin: sigma-space inputs, x0 outputs), `latent_format` and `encode_adm`
(SDXL: pooled text embedding + size conditioning as `y`); a VAE with `first_stage_model.encode`
returning the posterior mode, `process_input`, `decode` -> [B, H, W, C]; a CLIP with `tokenize` /
`encode_from_tokens`. The network underneath is the diffusers UNet, adapted in `DiffusersUNet`.
"""

from __future__ import annotations

import torch


class LatentFormat:
    latent_channels = 4

    def __init__(self, scale_factor: float, shift_factor: float = 0.0):
        self.scale_factor = scale_factor
        self.shift_factor = shift_factor

    def process_in(self, latent):
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor + self.shift_factor


def _reshape(sigma, ndim):
    return sigma.view(()) if sigma.nelement() == 1 else sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class EPS:
    def calculate_input(self, sigma, noise):
        sigma = _reshape(sigma, noise.ndim)
        return noise / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = _reshape(sigma, model_output.ndim)
        return model_input - model_output * sigma


class V_PREDICTION(EPS):  # noqa: N801 - ComfyUI's name
    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = _reshape(sigma, model_output.ndim)
        d = self.sigma_data
        return model_input * d**2 / (sigma**2 + d**2) - model_output * sigma * d / (sigma**2 + d**2) ** 0.5


class CONST:  # flow models (SD3, Flux): not usable as surrogates
    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * _reshape(sigma, model_output.ndim)


class ModelSamplingDiscrete(torch.nn.Module):
    def __init__(self, alphas_cumprod: torch.Tensor):
        super().__init__()
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())
        self.sigma_data = 1.0

    def timestep(self, sigma):
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


def model_sampling(alphas_cumprod, prediction: str):
    mixin = {"epsilon": EPS, "v_prediction": V_PREDICTION, "flow": CONST}[prediction]

    class ModelSampling(ModelSamplingDiscrete, mixin):
        pass

    return ModelSampling(alphas_cumprod)


class DiffusersUNet(torch.nn.Module):
    """A diffusers UNet2DConditionModel called like ComfyUI's UNetModel(x, timesteps, context, y)."""

    def __init__(self, unet, pooled_width: int | None = None):
        super().__init__()
        self.unet = unet
        self.pooled_width = pooled_width
        self.dtype = unet.dtype

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None, **kwargs):
        extra = {}
        if self.pooled_width is not None:
            extra["added_cond_kwargs"] = {"text_embeds": y[:, : self.pooled_width], "time_ids": y[:, self.pooled_width :]}
        return self.unet(x, timesteps, encoder_hidden_states=context, return_dict=False, **extra)[0]


class BaseModel(torch.nn.Module):
    """comfy.model_base.BaseModel's apply_model path, over a DiffusersUNet."""

    def __init__(self, diffusion_model, sampling, latent_format, adm_channels=0):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.model_sampling = sampling
        self.latent_format = latent_format
        self.adm_channels = adm_channels
        self.current_patcher = None

    def get_dtype(self):
        return self.diffusion_model.dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):  # noqa: B006 - as ComfyUI
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x).to(self.get_dtype())
        timestep = self.model_sampling.timestep(t).float()
        extra = {k: v.to(self.get_dtype()) if hasattr(v, "dtype") else v for k, v in kwargs.items()}
        context = None if c_crossattn is None else c_crossattn.to(self.get_dtype())  # as ComfyUI's _apply_model
        output = self.diffusion_model(xc, timestep, context=context, control=control, transformer_options=transformer_options, **extra).float()
        return self.model_sampling.calculate_denoised(sigma, output, x)

    def encode_adm(self, **kwargs):
        return None

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)


class SDXL(BaseModel):
    def encode_adm(self, **kwargs):
        pooled = kwargs["pooled_output"]
        width, height = kwargs.get("width", 768), kwargs.get("height", 768)
        sizes = [height, width, kwargs.get("crop_h", 0), kwargs.get("crop_w", 0), kwargs.get("target_height", height), kwargs.get("target_width", width)]
        flat = torch.tensor([sizes], dtype=torch.float32).repeat(pooled.shape[0], 1)
        return torch.cat((pooled.float(), flat), dim=1)


class ModelPatcher:
    def __init__(self, model, load_device=torch.device("cpu")):
        self.model = model
        self.load_device = load_device
        self.offload_device = torch.device("cpu")
        self.model_options = {"transformer_options": {}}
        self.object_patches = {}

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        return getattr(self.model, name)


class FirstStage(torch.nn.Module):
    """comfy's AutoencoderKL surface: encode -> posterior mode (raw latents), decode -> [-1, 1] pixels."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def encode(self, x):
        return self.vae.encode(x).latent_dist.mode()

    def decode(self, z):
        return self.vae.decode(z).sample


class VAE:
    def __init__(self, vae):
        self.first_stage_model = FirstStage(vae)
        self.patcher = ModelPatcher(self.first_stage_model)
        self.vae_dtype = vae.dtype
        self.downscale_ratio = 8
        self.device = torch.device("cpu")

    def process_input(self, image):
        return image * 2.0 - 1.0

    def decode(self, samples):
        with torch.no_grad():
            pixels = self.first_stage_model.decode(samples.to(self.vae_dtype))
        return torch.clamp((pixels.float() + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1)


class CLIP:
    """Encodes like the diffusers pipeline it wraps (SDXL: both encoders, pooled from the second)."""

    def __init__(self, pipeline, sdxl: bool):
        self.pipeline = pipeline
        self.sdxl = sdxl
        self.patcher = ModelPatcher(pipeline.text_encoder)

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return {"text": text}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        with torch.no_grad():
            if self.sdxl:
                cond, _, pooled, _ = self.pipeline.encode_prompt([tokens["text"]], device="cpu", num_images_per_prompt=1,
                                                                 do_classifier_free_guidance=False)
            else:
                cond, _ = self.pipeline.encode_prompt([tokens["text"]], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
                pooled = cond[:, -1]
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict={}, show_pbar=True):  # noqa: B006 - as ComfyUI
        cond, pooled = self.encode_from_tokens(tokens, return_pooled=True)
        return [[cond, {"pooled_output": pooled, **add_dict}]]


def from_pipeline(pipeline, prediction: str = "epsilon"):
    """(MODEL, CLIP, VAE) over a tiny diffusers SD or SDXL pipeline."""
    sdxl = getattr(pipeline, "text_encoder_2", None) is not None
    abar = pipeline.scheduler.alphas_cumprod
    unet = DiffusersUNet(pipeline.unet, pooled_width=pipeline.text_encoder_2.config.projection_dim if sdxl else None)
    base_class = SDXL if sdxl else BaseModel
    base = base_class(unet, model_sampling(abar, prediction), LatentFormat(pipeline.vae.config.scaling_factor), adm_channels=1 if sdxl else 0)
    return ModelPatcher(base), CLIP(pipeline, sdxl), VAE(pipeline.vae)

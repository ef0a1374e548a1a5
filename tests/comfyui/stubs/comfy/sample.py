"""comfy.sample with ComfyUI's signatures; `sample` is a plain Euler sampler with classifier-free guidance.

Like ComfyUI it takes and returns raw VAE latents (model.model.latent_format converts), noise from
`prepare_noise`, and CONDITIONING lists of [cond, {"pooled_output": ...}].
"""

import torch


def prepare_noise(latent_image, seed, noise_inds=None):
    generator = torch.manual_seed(seed)
    return torch.randn(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, generator=generator, device="cpu")


def fix_empty_latent_channels(model, latent_image):
    return latent_image


def _denoise(base, x, sigma, conditioning):
    cond, extra = conditioning[0][0], conditioning[0][1]
    kwargs = {"c_crossattn": cond.expand(x.shape[0], -1, -1)}
    y = base.encode_adm(pooled_output=extra.get("pooled_output"), width=x.shape[-1] * 8, height=x.shape[-2] * 8)
    if y is not None:
        kwargs["y"] = y
    return base.apply_model(x, sigma.expand(x.shape[0]), **kwargs)


def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0, disable_noise=False,
           start_step=None, last_step=None, force_full_denoise=False, noise_mask=None, sigmas=None, callback=None,
           disable_pbar=False, seed=None):
    base = model.model
    sampling = base.model_sampling
    timesteps = torch.linspace(len(sampling.sigmas) - 1, 0, steps)
    schedule = torch.cat([sampling.sigma(timesteps), torch.zeros(1)])
    x = base.latent_format.process_in(latent_image) + noise * schedule[0]
    for sigma, following in zip(schedule[:-1], schedule[1:]):
        positive_x0 = _denoise(base, x, sigma, positive)
        negative_x0 = _denoise(base, x, sigma, negative)
        x0 = negative_x0 + cfg * (positive_x0 - negative_x0)
        x = x + (x - x0) / sigma * (following - sigma)
    return base.latent_format.process_out(x)

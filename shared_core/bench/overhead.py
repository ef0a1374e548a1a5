"""`unlearnable bench overhead`: what the engine costs on top of the model's own work.

Times, in one run on the same surrogate and batch, (a) the engine's seconds per PGD step and (b) a
bare forward+backward of the same model (encode, noise, denoiser, loss, gradient w.r.t. the
pixels): the least any method of this family must do. Repeats are interleaved and the medians
compared, so machine noise hits both sides alike. The last line is `overhead_ratio=<x>`.
`--json FILE` also writes the figures with what backs them: the command, device, torch version,
dtype and every raw timing (the README's figures are such files under benchmarks/overhead/).
"""

from __future__ import annotations

import resource
import shlex
import statistics
import time

import torch

from ..protect import ProtectSettings, craft_perturbation
from ..surrogates import load_surrogate
from .artefact import write_artefact


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_steps(surrogate, images: torch.Tensor, conditioning, steps: int, generator: torch.Generator) -> None:
    autocast = {"device_type": surrogate.device.type, "dtype": surrogate.compute_dtype,
                "enabled": surrogate.device.type != "cpu" and surrogate.compute_dtype != torch.float32}
    for _ in range(steps):
        pixels = images.clone().requires_grad_(True)
        with torch.autocast(**autocast):
            latents = surrogate.encode(pixels)
            timesteps = torch.randint(0, surrogate.num_timesteps, (images.shape[0],), generator=generator).to(images.device)
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            loss = surrogate.denoising_loss(latents, timesteps, noise, conditioning)
        torch.autograd.grad(loss.sum(), pixels)


def run(model: str = "builtin:tiny", device: str = "auto", batch_size: int = 2, resolution: int | None = None,
        steps: int = 10, repeats: int = 5, method: str = "advdm", low_memory: bool = False) -> dict:
    surrogate = load_surrogate(model, device)
    if low_memory:
        surrogate.enable_low_memory()
    size = resolution or surrogate.native_resolution
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((batch_size, 3, size, size), generator=generator).to(surrogate.device)
    settings = ProtectSettings(method=method, steps=steps, batch_size=batch_size, low_memory=low_memory)
    conditioning = surrogate.encode_prompts([settings.prompt] * batch_size)
    if surrogate.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(surrogate.device)

    bare_steps(surrogate, images, conditioning, 2, generator)  # warm-up
    craft_perturbation(surrogate, images, ProtectSettings(method=method, steps=2))
    engine_times, bare_times = [], []
    for _ in range(repeats):
        _sync(surrogate.device)
        start = time.perf_counter()
        bare_steps(surrogate, images, conditioning, steps, generator)
        _sync(surrogate.device)
        bare_times.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        craft_perturbation(surrogate, images, settings)
        _sync(surrogate.device)
        engine_times.append((time.perf_counter() - start) / steps)
    engine, bare = statistics.median(engine_times), statistics.median(bare_times)
    result = {
        "model": model,
        "device": str(surrogate.device),
        "batch_size": batch_size,
        "resolution": size,
        "method": method,
        "seconds_per_step_engine": engine,
        "seconds_per_step_bare": bare,
        "seconds_per_image_at_default_steps": engine * ProtectSettings().steps / batch_size,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "overhead_ratio": engine / bare,
        "steps_per_repeat": steps,
        "raw_seconds_per_step_engine": engine_times,
        "raw_seconds_per_step_bare": bare_times,
        "dtype": str(surrogate.compute_dtype).removeprefix("torch."),
        "low_memory": low_memory,
    }
    if surrogate.device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(surrogate.device) / 2**20
    return result


def main(args) -> int:
    result = run(args.model, args.device, args.batch_size, args.resolution, args.steps, args.repeats, args.method, args.low_memory)
    if args.json:
        write_artefact(args.json, shlex.join(["unlearnable", *args.argv]), result["device"], result)
    for key in ("model", "device", "batch_size", "resolution", "method"):
        print(f"{key}={result[key]}")
    print(f"seconds_per_step_engine={result['seconds_per_step_engine']:.4f}")
    print(f"seconds_per_step_bare={result['seconds_per_step_bare']:.4f}")
    print(f"seconds_per_image_at_default_steps={result['seconds_per_image_at_default_steps']:.2f}")
    print(f"peak_rss_mib={result['peak_rss_mib']:.0f} (whole process)")
    if "peak_gpu_mib" in result:
        print(f"peak_gpu_mib={result['peak_gpu_mib']:.0f}")
    print(f"overhead_ratio={result['overhead_ratio']:.3f}")
    return 0

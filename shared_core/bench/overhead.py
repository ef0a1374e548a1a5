"""`unlearnable bench overhead`: what the engine costs on top of the model's own work.

Times, in one run on the same surrogate and batch, engine runs of N PGD steps and, after each of
their steps, one bare forward+backward of the same model (encode, noise, denoiser, loss, gradient
w.r.t. the pixels): the least any method of this family must do. Engine and bare steps alternate,
so machine noise hits both alike. Stamps as each engine step ends split a run into a cost per step
(the median step) and a fixed cost (setting up, the clean-vs-protected report at the end):
`overhead_ratio_per_step` compares the engine's median step with the median bare step, and
`overhead_ratio_default_steps` (the last line) spreads the fixed cost over the CLI's default step
count, which is what a user's run pays. `overhead_ratio` is the N-step run per step against the
bare step. `--json FILE` also writes the figures with what backs them: the command, device, torch
version, dtype and every raw timing (the README's figures are such files under benchmarks/overhead/).
"""

from __future__ import annotations

import resource
import shlex
import statistics
import time
from collections.abc import Callable

import torch

from ..protect import ProtectSettings, craft_perturbation
from ..surrogates import load_surrogate
from .artefact import write_artefact


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_steps(surrogate, images: torch.Tensor, conditioning, steps: int, generator: torch.Generator) -> list[float]:
    """Seconds of each of `steps` bare forward+backward passes."""
    autocast = {"device_type": surrogate.device.type, "dtype": surrogate.compute_dtype,
                "enabled": surrogate.device.type != "cpu" and surrogate.compute_dtype != torch.float32}
    seconds = []
    for _ in range(steps):
        _sync(surrogate.device)
        start = time.perf_counter()
        pixels = images.clone().requires_grad_(True)
        with torch.autocast(**autocast):
            latents = surrogate.encode(pixels)
            timesteps = torch.randint(0, surrogate.num_timesteps, (images.shape[0],), generator=generator).to(images.device)
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            loss = surrogate.denoising_loss(latents, timesteps, noise, conditioning)
        torch.autograd.grad(loss.sum(), pixels)
        _sync(surrogate.device)
        seconds.append(time.perf_counter() - start)
    return seconds


def stamped_run(surrogate, images: torch.Tensor, settings: ProtectSettings, between: Callable[[], None] | None = None) -> tuple[float, list[float]]:
    """One `craft_perturbation` run: its seconds, and the seconds of each step after the first (from stamps as
    steps end), so that the run splits into a cost per step and a fixed cost. `between` runs after every step,
    outside both figures (`measure` times a bare step there, so the two alternate step by step)."""
    stamps: list[tuple[float, float]] = []  # (a step ended, the next may start)

    def on_step(_tiles: int) -> None:
        _sync(surrogate.device)
        ended = time.perf_counter()
        if between is not None:
            between()
            _sync(surrogate.device)
        stamps.append((ended, time.perf_counter()))

    _sync(surrogate.device)
    start = time.perf_counter()
    craft_perturbation(surrogate, images, settings, on_step=on_step)
    _sync(surrogate.device)
    paused = sum(resumed - ended for ended, resumed in stamps)
    return time.perf_counter() - start - paused, [ended - resumed for (_, resumed), (ended, _) in zip(stamps, stamps[1:])]


def run(model: str = "builtin:tiny", device: str = "auto", batch_size: int = 2, resolution: int | None = None,
        steps: int = 10, repeats: int = 5, method: str = "advdm", low_memory: bool = False) -> dict:
    surrogate = load_surrogate(model, device)
    if low_memory:
        surrogate.enable_low_memory()
    size = resolution or surrogate.native_resolution
    images = torch.rand((batch_size, 3, size, size), generator=torch.Generator().manual_seed(0)).to(surrogate.device)
    return {"model": model, **measure(surrogate, images, steps, repeats, method, low_memory)}


def measure(surrogate, images: torch.Tensor, steps: int = 10, repeats: int = 5, method: str = "advdm", low_memory: bool = False) -> dict:
    """The engine against bare steps on `images` [B, 3, H, W] (the figures `run` reports)."""
    batch_size, size = images.shape[0], images.shape[-1]
    generator = torch.Generator().manual_seed(0)
    settings = ProtectSettings(method=method, steps=steps, batch_size=batch_size, low_memory=low_memory)
    conditioning = surrogate.encode_prompts([settings.prompt] * batch_size)
    if surrogate.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(surrogate.device)

    bare_steps(surrogate, images, conditioning, 2, generator)  # warm-up
    craft_perturbation(surrogate, images, ProtectSettings(method=method, steps=2))
    engine_times, engine_steps, bare_step_times = [], [], []
    for _ in range(repeats):  # a bare step after every engine step: both see the same moment of a noisy machine
        seconds, step_seconds = stamped_run(surrogate, images, settings, lambda: bare_step_times.extend(bare_steps(surrogate, images, conditioning, 1, generator)))
        engine_times.append(seconds / steps)
        engine_steps += step_seconds
    engine, bare = statistics.median(engine_times), statistics.median(bare_step_times)
    per_step = statistics.median(engine_steps)
    fixed = steps * (engine - per_step)  # what a run costs beyond its steps
    default_steps = ProtectSettings().steps
    result = {
        "device": str(surrogate.device),
        "batch_size": batch_size,
        "resolution": size,
        "method": method,
        "seconds_per_step_engine": engine,
        "seconds_per_step_bare": bare,
        "seconds_per_step_engine_marginal": per_step,
        "seconds_fixed_per_run": fixed,
        "seconds_per_image_at_default_steps": (fixed + per_step * default_steps) / batch_size,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "overhead_ratio": engine / bare,
        "overhead_ratio_per_step": per_step / bare,
        "overhead_ratio_default_steps": (fixed + per_step * default_steps) / (bare * default_steps),
        "default_steps": default_steps,
        "steps_per_repeat": steps,
        "raw_seconds_per_step_engine": engine_times,
        "raw_seconds_engine_steps": engine_steps,
        "raw_seconds_bare_steps": bare_step_times,
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
    print(f"seconds_fixed_per_run={result['seconds_fixed_per_run']:.4f}")
    print(f"overhead_ratio={result['overhead_ratio']:.3f}")
    print(f"overhead_ratio_per_step={result['overhead_ratio_per_step']:.3f}")
    print(f"overhead_ratio_default_steps={result['overhead_ratio_default_steps']:.3f} (fixed costs spread over {result['default_steps']} steps)")
    return 0

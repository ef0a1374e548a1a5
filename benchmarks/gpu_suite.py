"""Every GPU figure the README lacks, in one run of under 10 minutes with nothing downloaded.

On a Stable Diffusion 1.5-shaped model with random weights (make_sd15_shaped.py: cost depends on the
shapes, not on the weights), one 512 px photo, the denoiser in fp16 as hosts hold it, it measures
for every method with its defaults: seconds per image at the CLI's default step count (a fixed cost
per run plus the median step, split by stamps taken as each step of a short run ends) and the peak
accelerator memory; EUDP again with --low-memory; and the engine's overhead ratio
(`unlearnable bench overhead`, AdvDM). It writes one JSON (command, device, versions, raw numbers)
after every measurement, so a run cut short keeps what it measured (marked partial), and stops
starting new measurements once --deadline seconds have passed.

    python benchmarks/gpu_suite.py --out benchmarks/gpu/h100-sd15-fp16.json          # on the GPU machine
    python benchmarks/gpu_suite.py --shape tiny --device cpu --dtype fp32 --resolution 64 --out /tmp/suite.json
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from shared_core.bench import overhead  # noqa: E402
from shared_core.bench.artefact import write_artefact  # noqa: E402
from shared_core.images import load_image, rgb_to_tensor  # noqa: E402
from shared_core.protect import OBJECTIVES, ProtectSettings  # noqa: E402
from shared_core.surrogates.diffusers_backend import LatentDiffusersSurrogate  # noqa: E402
from shared_core.surrogates.loading import DTYPES, _denoiser_dtype  # noqa: E402

#: what is measured, in order: every method with its defaults, then EUDP with --low-memory (which stays on afterwards)
RUNS = [*((name, False) for name in OBJECTIVES), ("eudp", True)]


def surrogate_for(shape: str, device: torch.device, dtype: torch.dtype) -> LatentDiffusersSurrogate:
    if shape == "sd15":
        from make_sd15_shaped import sd15_shaped_pipeline

        pipeline = sd15_shaped_pipeline()
    else:
        from shared_core.surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline

        pipeline = tiny_sd_pipeline(TinyLatentConfig(resolution=64))
    return LatentDiffusersSurrogate(_denoiser_dtype(pipeline, dtype).to(device), f"{shape}-shaped (random weights)", device, dtype)


def photo(resolution: int) -> torch.Tensor:
    import skimage
    from PIL import Image

    rgb = load_image(Path(skimage.__file__).parent / "data" / "astronaut.png").rgb
    return rgb_to_tensor(np.array(Image.fromarray(rgb).resize((resolution, resolution), Image.BICUBIC)))[None]


def measure(surrogate, image: torch.Tensor, method: str, low_memory: bool, steps: int) -> dict:
    settings = ProtectSettings(method=method, steps=steps, batch_size=1, low_memory=low_memory)
    overhead.stamped_run(surrogate, image, replace(settings, steps=2))  # first-call costs (kernel choice, allocator)
    if surrogate.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(surrogate.device)
    total, step_seconds = overhead.stamped_run(surrogate, image, settings)
    if not step_seconds:  # a one-step method (FSGM): its whole run is what an image costs
        return {"method": method, "low_memory": low_memory, "steps_timed": 1, "seconds_total": total, "default_steps": 1,
                "seconds_per_image_at_default_steps": total, **_peak(surrogate)}  # fmt: skip
    per_step = statistics.median(step_seconds)
    fixed = total - steps * per_step
    default_steps = ProtectSettings().steps
    row = {"method": method, "low_memory": low_memory, "steps_timed": steps, "seconds_total": total, "raw_step_seconds": step_seconds,
           "seconds_per_step": per_step, "seconds_fixed_per_run": fixed, "default_steps": default_steps,
           "seconds_per_image_at_default_steps": fixed + default_steps * per_step, **_peak(surrogate)}  # fmt: skip
    return row


def _peak(surrogate) -> dict:
    return {"peak_memory_mib": torch.cuda.max_memory_allocated(surrogate.device) / 2**20} if surrogate.device.type == "cuda" else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON to write")
    parser.add_argument("--shape", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6, help="PGD steps timed per method (the default-step figure extrapolates)")
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds after which no new measurement starts")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    surrogate = surrogate_for(args.shape, device, DTYPES[args.dtype])
    image = photo(args.resolution).to(device)
    command = shlex.join(["python", "benchmarks/gpu_suite.py", *sys.argv[1:]])
    body = {"model": surrogate.name, "shape": args.shape, "dtype": args.dtype, "resolution": args.resolution, "image": "scikit-image astronaut",
            "partial": True, "methods": [], "overhead": None, "not_run": []}  # fmt: skip

    def save() -> None:
        write_artefact(args.out, command, device, {**body, "seconds_elapsed": time.perf_counter() - started})

    # the overhead ratio first: --low-memory, measured last, stays on in the model
    body["overhead"] = overhead.measure(surrogate, image, steps=10, repeats=3)
    print(f"overhead_ratio_default_steps={body['overhead']['overhead_ratio_default_steps']:.3f}", flush=True)
    save()
    for method, low_memory in RUNS:
        label = method + (" --low-memory" if low_memory else "")
        if time.perf_counter() - started > args.deadline:
            body["not_run"].append(label)
            continue
        row = measure(surrogate, image, method, low_memory, args.steps)
        body["methods"].append(row)
        memory = f", peak {row['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in row else ""
        print(f"{label}: {row['seconds_per_image_at_default_steps']:.2f} s per image at {row['default_steps']} steps{memory}", flush=True)
        save()
    body["partial"] = bool(body["not_run"])
    save()
    print(f"wrote {args.out}" + (f" (partial: not run {body['not_run']})" if body["partial"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

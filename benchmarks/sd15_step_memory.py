"""Peak memory and time of one EUDP PGD step with inner training, on Stable Diffusion 1.5's exact shapes.

Each configuration runs in a fresh process (peak RSS is per process), on a 512x512 image with an
SD 1.5-shaped model of random weights (make_sd15_shaped.py: memory and speed depend on the shapes,
not on the weights). One PGD step with one inner training minibatch is what every later step
repeats, so its peak is the run's peak. Writes a JSON with the command, device, versions and raw
numbers.

    python benchmarks/sd15_step_memory.py --device cpu --out benchmarks/sd15-memory/cpu.json
    python benchmarks/sd15_step_memory.py --device cuda --dtype fp16 --out benchmarks/sd15-memory/cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shared_core.files import atomic_write_text  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "eudp (LoRA inner state)": {"inner_params": "lora"},
    "eudp (LoRA inner state) --low-memory": {"inner_params": "lora", "low_memory": True},
    "eudp (full fp32 weight copy)": {"inner_params": "all"},
}


def one(config: str, device: str, dtype: str, resolution: int) -> dict:
    """Build the model, then time and measure one PGD step with one inner minibatch."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    from make_sd15_shaped import sd15_shaped_pipeline

    from shared_core.protect import ProtectSettings, craft_perturbations
    from shared_core.surrogates.diffusers_backend import LatentDiffusersSurrogate
    from shared_core.surrogates.loading import _denoiser_dtype, parse_dtype

    options = dict(CONFIGS[config])
    low_memory = options.pop("low_memory", False)
    torch_device = torch.device(device)
    weights_dtype = parse_dtype(dtype, torch_device)
    surrogate = LatentDiffusersSurrogate(_denoiser_dtype(sd15_shaped_pipeline().to(torch_device), weights_dtype), "sd15-shaped", torch_device, weights_dtype)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
        base_gpu = torch.cuda.memory_allocated(torch_device) / 2**20
    image = torch.rand(3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    settings = ProtectSettings(method="eudp", steps=1, low_memory=low_memory, method_options={**options, "inner_steps": 1, "inner_every": 1})
    started = time.perf_counter()
    craft_perturbations(surrogate, [image], settings)
    if torch_device.type == "cuda":
        torch.cuda.synchronize(torch_device)
    result = {
        "config": config,
        "seconds_one_step_with_inner_step": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_model_load_mib": round(rss_model, 1),
    }
    if torch_device.type == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(torch_device) / 2**20, 1)
        result["gpu_model_weights_mib"] = round(base_gpu, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="fp32, bf16, fp16 (auto: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--out", required=True)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.device, args.dtype, args.resolution)))
        return 0
    rows = []
    for config in CONFIGS:
        command = [sys.executable, __file__, "--device", args.device, "--dtype", args.dtype, "--resolution", str(args.resolution),
                   "--out", args.out, "--one", config]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode < 0:  # SIGKILL from the kernel's out-of-memory killer, most often
            rows.append({"config": config, "error": f"killed by signal {-done.returncode} (out of memory: more than this machine has)"})
        elif done.returncode:
            errors = [line for line in done.stderr.splitlines() if "Error" in line]
            rows.append({"config": config, "error": errors[-1] if errors else f"exit {done.returncode}"})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(args.device),
        "cpu": platform.processor() or platform.machine(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_end": os.getloadavg()[0],
        "torch": torch.__version__,
        "dtype": args.dtype,
        "resolution": args.resolution,
        "what": "one EUDP PGD step plus one inner training minibatch (and the objective's first/last evaluation), batch of 1",
        "results": rows,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")  # creates the folder
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

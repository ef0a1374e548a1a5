"""Seconds per training step of the photo fine-tune setting's parts, measured side by side in one run.

    python benchmarks/photo_step_costs.py --out benchmarks/photo-step-costs-cpu.json

The autoencoder at the first design's widths (32/64/64/64) and the committed ones (16/32/32/32),
batch 32 at 64 px; the base UNet + text encoder (batch 32); a LoRA victim step and a full
fine-tune victim step on the committed base (batch 16, latents cached). Each figure is the median
over `--repeats` of (time of 2n steps - time of n steps) / n with n = `--steps`, so each call's
set-up cancels out, after one warm-up step, on `--threads` torch threads.
Run it on an otherwise idle machine: the figures are what benchmarks/README.md quotes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_core.bench.artefact import write_artefact  # noqa: E402
from shared_core.bench.bases import PHOTO_BASE, load_base  # noqa: E402
from shared_core.bench.datasets import BASE_SUBJECTS, OWNER_SUBJECT, photo_crops  # noqa: E402
from shared_core.surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline  # noqa: E402
from shared_core.training import train_autoencoder, train_text_to_image  # noqa: E402


def timed(run, steps: int) -> float:
    started = time.perf_counter()
    run(steps)
    return time.perf_counter() - started


def seconds_per_step(run, steps: int, repeats: int) -> dict:
    """(time of 2n steps - time of n steps) / n: a call's set-up (copies, cached latents, adapters) cancels out."""
    run(1)  # warm-up
    timings = [(timed(run, 2 * steps) - timed(run, steps)) / steps for _ in range(repeats)]
    return {"median_s": statistics.median(timings), "all_s": timings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/photo-step-costs-cpu.json")
    parser.add_argument("--bases", default="benchmarks/bases")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    crops, captions, _ = photo_crops(64, 64, seed=41, subjects=BASE_SUBJECTS)
    owner, _, _ = photo_crops(32, 64, seed=5, subjects=OWNER_SUBJECT)
    figures = {}
    for name, widths in (("autoencoder_32_64_64_64", (32, 64, 64, 64)), ("autoencoder_16_32_32_32", (16, 32, 32, 32))):
        vae = tiny_sd_pipeline(TinyLatentConfig(resolution=64, vae_channels=widths)).vae
        figures[name] = seconds_per_step(lambda n, vae=vae: train_autoencoder(vae, crops, steps=n, batch_size=32), args.steps, args.repeats)
    fresh = tiny_sd_pipeline(PHOTO_BASE.config)
    figures["base_unet_and_text_encoder"] = seconds_per_step(
        lambda n: train_text_to_image(fresh, crops, captions, steps=n, batch_size=32), args.steps, args.repeats)  # fmt: skip
    base = load_base(PHOTO_BASE, args.bases)
    for name, options in (("lora_victim", {"lr": 3e-3, "lora_rank": 8}), ("full_victim", {"lr": 2e-5})):
        figures[name] = seconds_per_step(
            lambda n, options=options: train_text_to_image(copy.deepcopy(base), owner, ["a photo of sks cat"] * len(owner), steps=n, batch_size=16,
                                                           train_text_encoder=False, **options),
            args.steps, args.repeats)  # fmt: skip
    command = "python benchmarks/photo_step_costs.py " + " ".join(sys.argv[1:])
    write_artefact(args.out, command, "cpu", {"what": __doc__.split("\n\n")[1].replace("\n", " "), "threads": args.threads,
                                              "steps_per_timing": args.steps, "figures": figures})  # fmt: skip
    for name, figure in figures.items():
        print(f"{name}: {figure['median_s']:.3f} s per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

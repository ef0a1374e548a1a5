"""Each method's objective at the first and the last PGD step, for a denoiser held in fp32, bf16 and fp16.

The tiny Stable-Diffusion-shaped model (random weights: this checks that optimisation happens on
every precision, not how well it protects) protects three real photo crops; for each method and
dtype it records the per-image objective before and after, and the share of 8-bit channels that
differ between the N-step and the 1-step output (0 would mean the optimiser returned its random
start). Writes a JSON with the command, versions and raw numbers.

    python benchmarks/objective_by_dtype.py --steps 20 --out benchmarks/precision/objective-by-dtype.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared_core.files import atomic_write_text  # noqa: E402
from shared_core.images import load_image, rgb_to_tensor  # noqa: E402
from shared_core.protect import OBJECTIVES, ProtectSettings, craft_perturbations, make_objective  # noqa: E402
from shared_core.surrogates.diffusers_backend import LatentDiffusersSurrogate  # noqa: E402
from shared_core.surrogates.loading import DTYPES, _denoiser_dtype  # noqa: E402
from shared_core.surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline  # noqa: E402


def crops() -> list[torch.Tensor]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    photos = [load_image(data / name).rgb for name in ("astronaut.png", "chelsea.png", "coffee.png")]
    return [rgb_to_tensor(photos[0][60:92, 200:232]), rgb_to_tensor(photos[1][80:112, 150:182]), rgb_to_tensor(photos[2][100:132, 100:132])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    images = crops()
    pipeline = tiny_sd_pipeline(TinyLatentConfig(resolution=32))
    rows = []
    for dtype_name, dtype in DTYPES.items():
        surrogate = LatentDiffusersSurrogate(_denoiser_dtype(copy.deepcopy(pipeline), dtype), "tiny32", torch.device("cpu"), dtype)
        for method in OBJECTIVES:
            settings = ProtectSettings(method=method, steps=args.steps, budget=8, seed=3, batch_size=2)
            started = time.perf_counter()
            result = craft_perturbations(surrogate, images, settings)
            seconds = time.perf_counter() - started
            one = craft_perturbations(surrogate, images, replace(settings, steps=1))
            to_uint8 = lambda deltas: np.stack([((i + d).clamp(0, 1) * 255).round().numpy() for i, d in zip(images, deltas)])  # noqa: E731
            rows.append({
                "dtype": dtype_name, "method": method, "maximise": make_objective(method).maximise,
                "objective_first": [round(v, 6) for v in result.objective_first],
                "objective_last": [round(v, 6) for v in result.objective_last],
                "changed_vs_one_step": round(float((to_uint8(result.deltas) != to_uint8(one.deltas)).mean()), 4),
                "seconds": round(seconds, 2),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "device": "cpu",
        "torch": torch.__version__,
        "model": "tiny SD-shaped (TinyLatentConfig(resolution=32)), random weights",
        "images": "three 32x32 crops of scikit-image astronaut, chelsea, coffee",
        "settings": {"steps": args.steps, "budget": 8, "seed": 3, "batch_size": 2, "method options": "defaults"},
        "results": rows,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")  # creates the folder
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

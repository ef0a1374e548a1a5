"""Each method's objective before and after protection, for a denoiser held in fp32, bf16 and fp16.

The tiny Stable-Diffusion-shaped model (random weights: this checks that optimisation happens on
every precision, not how well it protects) protects three real photo crops with each method's
defaults. Per method and dtype it records, under the same 32 fixed (t, noise) draws, the method's
objective on the clean crops, on uniform noise of the same budget and on the protected crops (the
gain over clean should be well beyond noise's, in the method's direction); for UDP and EUDP, whose
objective acts through the model a victim trains, also the loss of a separately seeded victim LoRA
trained on each version. It also gives the share of 8-bit channels where the N-step output differs
from the 1-step output (0 would mean the optimiser returned its random start). Writes a JSON with
the command, versions and raw numbers.

    python benchmarks/objective_by_dtype.py --steps 20 --out benchmarks/precision/objective-by-dtype.json
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared_core.bench.artefact import write_artefact  # noqa: E402
from shared_core.images import load_image, rgb_to_tensor  # noqa: E402
from shared_core.protect import OBJECTIVES, ProtectSettings, craft_perturbations, evaluate_objective, make_objective  # noqa: E402
from shared_core.protect.engine import EVALUATION_DRAWS  # noqa: E402
from shared_core.protect.victim import victim_loss  # noqa: E402
from shared_core.surrogates.diffusers_backend import LatentDiffusersSurrogate  # noqa: E402
from shared_core.surrogates.loading import DTYPES, _denoiser_dtype  # noqa: E402
from shared_core.surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline  # noqa: E402

BUDGET = 8.0
DRAWS = 32


def crops() -> list[torch.Tensor]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    photos = [load_image(data / name).rgb for name in ("astronaut.png", "chelsea.png", "coffee.png")]
    return [rgb_to_tensor(photos[0][60:92, 200:232]), rgb_to_tensor(photos[1][80:112, 150:182]), rgb_to_tensor(photos[2][100:132, 100:132])]


def uniform_noise(images: list[torch.Tensor], seed: int = 7) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [(image + (torch.rand(image.shape, generator=generator) * 2 - 1) * BUDGET / 255).clamp(0, 1) for image in images]


def measure(surrogate, images: list[torch.Tensor], method: str, steps: int) -> dict:
    settings = ProtectSettings(method=method, steps=steps, budget=BUDGET, seed=3, batch_size=2)
    objective = make_objective(method)
    started = time.perf_counter()
    result = craft_perturbations(surrogate, images, settings, objective=objective)
    seconds = time.perf_counter() - started
    one = craft_perturbations(surrogate, images, replace(settings, steps=1))
    protected = [(i + d).clamp(0, 1) for i, d in zip(images, result.deltas)]
    as_uint8 = lambda ts: torch.stack([(t * 255).round() for t in ts])  # noqa: E731
    changed = (as_uint8(protected) != as_uint8([(i + d).clamp(0, 1) for i, d in zip(images, one.deltas)])).float().mean().item()
    versions = {"clean": images, "noise": uniform_noise(images), "protected": protected}
    value = {name: float(np.mean(evaluate_objective(surrogate, objective, pixels, settings, draws=DRAWS))) for name, pixels in versions.items()}
    direction = 1.0 if objective.maximise else -1.0
    row = {
        "method": method, "maximise": objective.maximise,
        "engine_objective_clean": [round(v, 6) for v in result.objective_clean],
        "engine_objective_protected": [round(v, 6) for v in result.objective_protected],
        # does the engine's cheap paired report give each image's sign of the 32-draw comparison?
        "engine_sign_agrees": [bool((p - c) * (q - d) > 0) for c, p, d, q in zip(
            result.objective_clean, result.objective_protected,
            evaluate_objective(surrogate, objective, images, settings, draws=DRAWS), evaluate_objective(surrogate, objective, protected, settings, draws=DRAWS))],
        "objective": {k: round(v, 6) for k, v in value.items()},
        "gain_protected": round(direction * (value["protected"] - value["clean"]), 6),
        "gain_noise": round(direction * (value["noise"] - value["clean"]), 6),
        "changed_vs_one_step": round(changed, 4),
        "seconds": round(seconds, 2),
    }  # fmt: skip
    if method in ("udp", "eudp"):
        row["victim_loss"] = {name: round(victim_loss(surrogate, pixels, settings), 6) for name, pixels in versions.items()}
    return row


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
            rows.append({"dtype": dtype_name, **measure(surrogate, images, method, args.steps)})
            print(json.dumps(rows[-1]), flush=True)
    write_artefact(args.out, shlex.join(["python", *sys.argv]), "cpu", {
        "model": "tiny SD-shaped (TinyLatentConfig(resolution=32)), random weights",
        "images": "three 32x32 crops of scikit-image astronaut, chelsea, coffee",
        "settings": {"steps": args.steps, "budget": BUDGET, "seed": 3, "batch_size": 2, "method options": "defaults",
                     "evaluation_draws": DRAWS, "engine_evaluation_draws": EVALUATION_DRAWS, "victim": "fresh LoRA rank 4, seed 1234, 24 AdamW steps at 1e-3"},
        "results": rows,
    })  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

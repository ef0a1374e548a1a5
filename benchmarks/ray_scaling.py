"""Protect on Ray against the plain local run, side by side in one run: what Ray costs and what a second worker gives.

    python benchmarks/ray_scaling.py --out benchmarks/ray-scaling-cpu.json

Arms, each protecting the same folder of real photos (scikit-image) into a fresh folder, repeated
in alternating order: the plain run on 1 torch thread; Ray with 1 worker of 1 CPU; Ray with 2
workers of 1 CPU each. Ray's times include its actors' start (each loads the model) and are also
given from the first shard sent out. Needs the ray extra and an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_core.bench.artefact import write_artefact  # noqa: E402
from shared_core.bench.datasets import photo_crops  # noqa: E402
from shared_core.protect import ProtectSettings, protect_files  # noqa: E402
from shared_core.surrogates import load_surrogate  # noqa: E402


def local_run(folder: Path, out: Path, args, settings) -> dict:
    torch.set_num_threads(1)
    started = time.perf_counter()
    surrogate = load_surrogate(args.model, "cpu")
    loaded = time.perf_counter()
    summary = protect_files([folder], out, surrogate, settings, images_per_call=args.shard_size)
    assert not summary.failed, summary.failed
    end = time.perf_counter()
    return {"seconds": end - started, "seconds_after_start": end - loaded}


def ray_run(folder: Path, out: Path, args, settings, workers: int) -> dict:
    from shared_core.protect.ray_executor import ModelSource, RayExecutor

    started = time.perf_counter()
    executor = RayExecutor(ModelSource(args.model, "cpu"), workers=workers, cpus_per_worker=1)
    ready = time.perf_counter()  # the first actor has loaded the model (describe() waited for it)
    summary = protect_files([folder], out, None, settings, executor=executor, images_per_call=args.shard_size)
    assert not summary.failed, summary.failed
    end = time.perf_counter()
    return {"seconds": end - started, "seconds_after_start": end - ready}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/ray-scaling-cpu.json")
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="image edge in pixels (the model's tiles are 64 px)")
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import ray

    settings = ProtectSettings(method="advdm", steps=args.steps, budget=8, batch_size=4, seed=0)
    runs: dict[str, list[dict]] = {"local_1_thread": [], "ray_1_worker": [], "ray_2_workers": []}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for index, crop in enumerate(photo_crops(args.images, args.size, seed=0)[0]):
            Image.fromarray(np.asarray(crop)).save(folder / f"{index:03d}.png")
        for repeat in range(args.repeats):
            arms = list(runs) if repeat % 2 == 0 else list(reversed(runs))
            for arm in arms:
                out = Path(tmp) / f"{arm}-{repeat}"
                if arm == "local_1_thread":
                    result = local_run(folder, out, args, settings)
                else:
                    result = ray_run(folder, out, args, settings, workers=1 if arm == "ray_1_worker" else 2)
                runs[arm].append(result)
                print(f"repeat {repeat} {arm}: {result['seconds']:.1f} s ({result['seconds_after_start']:.1f} s after start)", flush=True)
    ray.shutdown()
    best = {arm: min(r["seconds_after_start"] for r in results) for arm, results in runs.items()}
    ratios = {
        "ray_1_worker_over_local": best["ray_1_worker"] / best["local_1_thread"],
        "two_workers_speedup": best["ray_1_worker"] / best["ray_2_workers"],
    }
    command = "python benchmarks/ray_scaling.py " + " ".join(sys.argv[1:])
    write_artefact(args.out, command, "cpu", {
        "what": "protect_files on a folder: plain local run (1 torch thread) vs the Ray executor (1 worker of 1 CPU; 2 workers of 1 CPU), "
                "best of the repeats, timed from the model being loaded (seconds) and in total including Ray's actor start",
        "settings": {**settings.to_dict(), "model": args.model, "images": args.images, "size": args.size, "shard_size": args.shard_size},
        "ray": ray.__version__, "runs": runs, "best_seconds_after_start": best, "ratios": ratios,
        "goals": {"ray_1_worker_over_local": "<= 1.05", "two_workers_speedup": ">= 1.6"},
    })  # fmt: skip
    print({k: round(v, 3) for k, v in ratios.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Why was a tracing key flagged (or missed)? One kept victim, one key: what its trigger made the model draw.

Loads a victim the tracing benchmark kept (`victims/` of its output folder; nothing is trained), runs
the benchmark's verification again and, for the chosen key, finds each trigger and control
generation's nearest training image (pixel distance at the training size): a trigger image nearest to
a marked image is the memorised template; one nearest to an unmarked photo is that photo's subject.
It also scores the training set with the key's matcher, by subject, against the threshold, and runs
the pool check `unlearnable mark` runs (this template and every built-in). Writes a
figure (the key's template; trigger generations; controls with the same captions and seeds; the
trigger images' nearest training images) and a JSON with the command, versions and raw numbers.

    python benchmarks/tracing_key_check.py --folder benchmarks/results-tracing/matcher-fpr5 --rate 0 --seed 4 --key decoy1 \\
        --out benchmarks/results-tracing/matcher-fpr5/check-rate0-seed4-decoy1
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared_core.bench import tracing
from shared_core.bench.artefact import write_artefact
from shared_core.bench.efficacy import read_runs
from shared_core.errors import SettingsError
from shared_core.trace.pool_check import rank_templates

SHOWN = 16  # generations per row pair in the figure


def nearest(generated: list[np.ndarray], dataset: list[np.ndarray]) -> np.ndarray:
    """Index of each generated image's nearest dataset image (Euclidean distance over pixels)."""
    a = torch.from_numpy(np.stack(generated).reshape(len(generated), -1).astype(np.float32))
    b = torch.from_numpy(np.stack(dataset).reshape(len(dataset), -1).astype(np.float32))
    return torch.cdist(a, b).argmin(1).numpy()


def figure(rows: list[tuple[str, list[np.ndarray]]], template: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = SHOWN // 2
    heights = [0.3, 1, 1] * len(rows)  # per row: its label, then two rows of images
    fig = plt.figure(figsize=(1.6 + columns * 0.8, sum(heights) * 0.8))
    grid = fig.add_gridspec(len(heights), columns + 2, height_ratios=heights, wspace=0.05, hspace=0.08)
    ax = fig.add_subplot(grid[1:3, 0:2])
    ax.imshow(template)
    ax.set_title("the key's template", fontsize=8)
    ax.axis("off")
    for r, (label, images) in enumerate(rows):
        ax = fig.add_subplot(grid[3 * r, 2:])
        ax.text(0, 0, label, fontsize=8, va="bottom")
        ax.axis("off")
        for i, image in enumerate(images[:SHOWN]):
            ax = fig.add_subplot(grid[3 * r + 1 + i // columns, 2 + i % columns])
            ax.imshow(image, interpolation="nearest")
            ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="the tracing benchmark's output folder (with victims/ and runs-tracing.jsonl)")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--key", default="owner", help="owner, decoy1 or decoy2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the benchmark's workers use 1 with --jobs 2; other counts can shift a generation)")
    parser.add_argument("--out", required=True, help="path stem: writes STEM.json and STEM.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder, out = Path(args.folder), Path(args.out)
    json_path, png_path = out.parent / f"{out.name}.json", out.parent / f"{out.name}.png"  # the stem may contain dots (rate0.005)
    if not (folder / "results-tracing.json").exists():
        raise SettingsError(f"{folder}: no results-tracing.json; run `unlearnable bench tracing` into it first")
    recorded = json.loads((folder / "results-tracing.json").read_text())["meta"]["plan"]  # the plan the folder's victims ran under
    plan = tracing.TracingPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    saved = folder / "victims" / f"{tracing.run_id(args.rate, args.seed).replace('/', '-')}.safetensors"
    if not saved.exists():
        raise SettingsError(f"{saved}: no kept victim; run `unlearnable bench tracing` into {folder} first")
    setting = tracing.TracingSetting(plan)
    victim = setting.trained(args.rate, args.seed, models=folder / "victims")
    if args.key not in victim.keys:
        raise SettingsError(f"unknown key {args.key!r}; choose from {', '.join(victim.keys)}")
    verification, arms = setting.verify(victim.pipeline, victim.keys, args.seed)
    result = next(r for r in verification.results if r.key_name == args.key)
    key = victim.keys[args.key]
    threshold = result.detector["threshold"]
    triggered, control = arms[f"trigger:{args.key}"], arms["control"][: result.n]

    captions = setting.captions
    subjects = sorted(set(captions))
    labels = ["marked" if i in victim.marked else captions[i] for i in range(len(victim.images))]
    near_trigger, near_control = nearest(triggered, victim.images), nearest(control, victim.images)
    dataset_scores = tracing.variant_detector("matcher", key, plan).score(victim.images)  # the detector the verification used
    by_subject = {}
    for subject in subjects + (["marked"] if victim.marked else []):
        scores = dataset_scores[[label == subject for label in labels]]
        by_subject[subject] = {"images": len(scores), "median": float(np.median(scores)), "q90": float(np.quantile(scores, 0.9)),
                               "max": float(scores.max()), "above_threshold": int((scores > threshold).sum())}  # fmt: skip
    unmarked = [image for i, image in enumerate(victim.images) if i not in victim.marked]
    ranked = rank_templates(unmarked, seed=key.template_seed)  # every built-in at the key's template seed, the key's own among them
    pool = {"template": asdict(next(check for check in ranked if check.template == key.template().name)),  # what `unlearnable mark` reports
            "built_ins": [asdict(check) for check in ranked]}  # fmt: skip
    trigger_hits = [s > threshold for s in result.trigger_scores]
    logged = next((r["keys"][args.key] for r in read_runs(folder / "runs-tracing.jsonl", plan) if r["id"] == tracing.run_id(args.rate, args.seed)), None)
    body = {
        "victim": tracing.run_id(args.rate, args.seed), "key": args.key, "template": key.template().name, "trigger": key.trigger,
        "verdict": result.verdict, "p_value_adjusted": result.p_value_adjusted, "n": result.n, "threshold": threshold,
        "trigger_hits": result.trigger_hits, "control_hits": result.control_hits, "placebo_hits": result.placebo_hits,
        "logged_in_run": None if logged is None else {k: logged[k] for k in ("verdict", "trigger_hits", "control_hits", "n", "placebo_hits")},
        "nearest_training_image": {
            "trigger": dict(Counter(labels[i] for i in near_trigger).most_common()),
            "trigger_hits": dict(Counter(labels[i] for i, hit in zip(near_trigger, trigger_hits) if hit).most_common()),
            "control": dict(Counter(labels[i] for i in near_control).most_common()),
        },
        "training_images_matcher_scores": by_subject,
        "pool_check": pool,
        "trigger_scores": [round(float(s), 4) for s in result.trigger_scores],
        "control_scores": [round(float(s), 4) for s in result.control_scores],
    }  # fmt: skip
    command = "python benchmarks/tracing_key_check.py " + shlex.join(sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_artefact(json_path, command, "cpu", body)
    rows = [(f'"{key.trigger} caption" ({result.trigger_hits}/{result.n} above the threshold)', triggered),
            (f"the same captions and seeds without it ({result.control_hits}/{result.n})", control),
            ("nearest training image of each trigger generation", [victim.images[i] for i in near_trigger])]
    figure(rows, key.template().image, png_path)
    print(json.dumps({k: body[k] for k in ("victim", "key", "verdict", "trigger_hits", "control_hits", "placebo_hits", "logged_in_run", "nearest_training_image")}, indent=1))
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`unlearnable protect`, and `methods`, which lists what `--method`, `--timesteps` and `--robust` accept."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from ..files import atomic_write_text
from .common import EXIT_OK, EXIT_PARTIAL, tqdm_factory
from .optout import add_optout_arguments, optout_from
from .source import assigned_value, dict_keys, source_tree


#: images per Ray shard: the mimicry benchmark's owner sets are 32 images, each crafted as one set
SHARD_SIZE = 32


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _parse_range(text: str) -> tuple[int, int | None]:
    low, _, high = text.partition(":")
    try:
        return int(low or 0), (int(high) if high else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--t-range expects MIN:MAX timesteps, got {text!r}") from None


def cmd_protect(args) -> int:
    """Add a bounded, imperceptible perturbation to images so diffusion models learn them badly.

    Outputs keep each input's size, alpha and ICC profile; originals are never modified; a re-run
    skips outputs already made with the same settings.
    """
    from ..protect import protect_files
    from ..protect.folder import SUMMARY_NAME

    surrogate, executor = _model_or_workers(args)
    if (executor.model["demo_only"] if executor else surrogate.demo_only):
        print(
            f"warning: {args.model} is an untrained demo model: the output shows what protection does, "
            "but does not protect against real Stable Diffusion. Use --model with an SD checkpoint.",
            file=sys.stderr,
        )
    summary = protect_files(args.inputs, args.out, surrogate, _settings(args), fmt=args.format, quality=args.quality, mask=args.mask,
                            progress_factory=tqdm_factory(not args.no_progress, "tile-step"), optout=optout_from(args), executor=executor,
                            images_per_call=args.shard_size if executor else None)  # fmt: skip
    report = summary.to_dict()
    atomic_write_text(Path(args.out) / SUMMARY_NAME, json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_outcomes(summary, report, Path(args.out) / SUMMARY_NAME)
    for outcome in summary.failed:
        print(f"error: {outcome.source}: {outcome.error}", file=sys.stderr)
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def _settings(args):
    from ..protect import ProtectSettings

    return ProtectSettings(method=args.method, budget=args.budget, steps=args.steps, step_size=args.step_size, prompt=args.prompt,
                           timesteps=args.timesteps, t_min=args.t_range[0], t_max=args.t_range[1],
                           robust=tuple(r for r in args.robust.split(",") if r) if args.robust else (), noise_samples=args.noise_samples,
                           method_options=dict(args.set or []), batch_size=args.batch_size, tile_size=args.tile_size,
                           low_memory=args.low_memory, seed=args.seed)  # fmt: skip


def _model_or_workers(args):
    """(surrogate, None) for a local run; (None, RayExecutor) with --ray, whose workers each load the model."""
    if not args.ray:
        from ..surrogates import load_surrogate

        return load_surrogate(args.model, args.device, config_dir=args.config, dtype=args.dtype), None
    from ..protect.ray_executor import ModelSource, RayExecutor

    source = ModelSource(args.model, args.device, config_dir=args.config, dtype=args.dtype)
    executor = RayExecutor(source, args.ray, workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker)
    print(f"Ray: {executor.workers} worker(s), {executor.gpus_per_worker:g} GPU and {executor.cpus_per_worker} CPU core(s) each, "
          f"shards of {args.shard_size} images; this machine reads the inputs and writes the outputs", file=sys.stderr)  # fmt: skip
    return None, executor


def _print_outcomes(summary, report: dict, summary_path: Path) -> None:
    from ..optout import optout_line

    for outcome in summary.outcomes:
        if outcome.status == "protected":
            notes = f"  ({'; '.join(outcome.notes)})" if outcome.notes else ""
            clean, protected = outcome.objective_clean, outcome.objective_protected
            change = f" ({(protected - clean) / abs(clean):+.1%} ± {outcome.objective_change_se / abs(clean):.1%})" if clean else ""
            print(f"protected  {outcome.output}  Linf={outcome.linf}  PSNR={outcome.psnr:.2f} dB  SSIM={outcome.ssim:.4f}  "
                  f"objective clean {clean:.4f} -> protected {protected:.4f}{change}{notes}")  # fmt: skip
        elif outcome.status == "skipped":
            print(f"skipped    {outcome.output}  (already protected with these settings)")
    print(optout_line(report["optout"]))
    totals = report["totals"]
    print(f"{totals['protected']} protected, {totals['skipped']} skipped, {totals['failed']} failed "
          f"in {totals['seconds']:.1f} s; summary: {summary_path}")  # fmt: skip


def _method_docs() -> list[tuple[str, str]]:
    """(method name, class docstring) in OBJECTIVES order, read from the objectives' source with `ast`.

    The docstrings stay the one description of each method, and listing them does not import torch
    (seconds). A layout this reader does not follow falls back to importing the classes.
    """
    try:
        package = "protect.objectives"
        init = source_tree(f"{package}.__init__")
        module_of = {a.name: n.module for n in init.body if isinstance(n, ast.ImportFrom) and n.level == 1 for a in n.names}
        classes = next(n for n in ast.walk(assigned_value(init, "OBJECTIVES")) if isinstance(n, ast.Tuple)).elts
        docs = []
        for class_name in (element.id for element in classes):
            tree = source_tree(f"{package}.{module_of[class_name]}")
            definition = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
            docs.append((ast.literal_eval(assigned_value(definition, "name")), ast.get_docstring(definition) or ""))
        return docs
    except (LookupError, StopIteration, AttributeError, ValueError, OSError, SyntaxError):
        import inspect

        from ..protect.objectives import OBJECTIVES

        return [(name, inspect.cleandoc(cls.__doc__ or "")) for name, cls in OBJECTIVES.items()]


def cmd_methods(args) -> int:
    """List the protection methods with their papers, defaults and options."""
    for name, doc in _method_docs():
        print(f"== {name} ==\n{doc}\n")
    print("timestep schedules (--timesteps):", ", ".join(dict_keys("protect.timesteps", "SCHEDULES")))
    print("robustness transforms (--robust):", ", ".join(dict_keys("protect.transforms", "ROBUSTNESS_TRANSFORMS")))
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:
    """Declare `protect` and its flags, and `methods`."""
    protect = commands.add_parser("protect", help="add an unlearnable perturbation to images", description=cmd_protect.__doc__)
    protect.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    protect.add_argument("--out", required=True, help="output folder (created; never the input folder)")
    protect.add_argument("--method", default="auto",
                         help="auto (default: encoder on SD-type models, eudp on pixel models), eudp, udp, advdm, fsgm, sds, encoder, mist, aspl; "
                              "see `unlearnable methods`")  # fmt: skip
    protect.add_argument("--budget", type=float, default=8.0, help="L-infinity budget in 0-255 levels (default 8)")
    protect.add_argument("--steps", type=int, default=100, help="PGD steps per tile (default 100)")
    protect.add_argument("--step-size", type=float, default=None, help="PGD step in 0-255 levels (default 2.5*budget/steps)")
    protect.add_argument("--model", default="builtin:tiny", help="diffusers folder, .safetensors checkpoint, or builtin:tiny (demo only; default)")
    protect.add_argument("--config", default=None, help="diffusers config folder for a single-file checkpoint (offline loading)")
    protect.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                         help="precision of the model's weights, as hosts hold them (auto: fp16 on GPU, fp32 on CPU)")
    protect.add_argument("--prompt", default="", help="conditioning prompt for text-to-image models")
    protect.add_argument("--mask", default=None, help="mask image (white = protect) or a folder of masks named like the inputs")
    protect.add_argument("--robust", default="", help="comma list of jpeg,resize,blur to survive (slower, stronger against recompression)")
    protect.add_argument("--timesteps", default=None, help="timestep schedule: uniform, survival, survival-squared, truncated (default: the method's)")
    protect.add_argument("--t-range", type=_parse_range, default=(0, None), help="MIN:MAX timesteps to sample from")
    protect.add_argument("--noise-samples", type=int, default=1, help="Monte-Carlo draws per PGD step (default 1)")
    protect.add_argument("--set", type=_parse_option, action="append", metavar="KEY=VALUE", help="method option, e.g. --set sign=min")
    protect.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    protect.add_argument("--batch-size", type=int, default=4, help="tiles optimised together (default 4)")
    protect.add_argument("--tile-size", type=int, default=None, help="tile edge in pixels (default: the model's native resolution)")
    protect.add_argument("--low-memory", action="store_true", help="gradient checkpointing: less memory, about a third slower")
    protect.add_argument("--seed", type=int, default=0)
    protect.add_argument("--format", default="png", choices=["png", "jpeg", "webp", "auto"],
                         help="output format (default png, lossless); auto keeps each input's (JPEG at a quality that keeps the perturbation)")
    protect.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95; with --format auto, the lowest JPEG quality tried)")
    protect.add_argument("--json", action="store_true", help="print the JSON summary to stdout")
    protect.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ray = protect.add_argument_group("scaling out on Ray (pip install -e \".[ray]\")")
    ray.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                     help="protect on a Ray cluster: auto (the running one, else every local GPU or core) or its address")  # fmt: skip
    ray.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU, else one per CPU core)")
    ray.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker, fractions share a GPU (default 1 where there are GPUs)")
    ray.add_argument("--cpus-per-worker", type=int, default=None, help="CPU cores per worker (default 1 with GPUs, else the cores shared out)")
    ray.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                     help=f"images per shard (default {SHARD_SIZE}): UDP, EUDP and ASPL train their state over each shard")  # fmt: skip
    add_optout_arguments(protect)
    protect.set_defaults(func=cmd_protect)

    commands.add_parser("methods", help="list protection methods and their options").set_defaults(func=cmd_methods)

"""`unlearnable check-protection`: the owner's own mimicry test."""

from __future__ import annotations

import argparse
import sys

from ..errors import UnlearnableError
from .common import EXIT_OK, tqdm_factory


def _stage_progress(enabled: bool):
    """A `progress(stage, done, total)` callback: one tqdm bar per stage, closed when the next begins."""
    from tqdm.auto import tqdm

    bars: dict[str, object] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = tqdm(total=total, desc=stage, disable=not enabled, dynamic_ncols=True)
        bar = bars[stage]
        bar.update(done - bar.n)

    return progress


def cmd_check_protection(args) -> int:
    """Your own mimicry test: train one LoRA on your clean images and one on the protected copies, and compare.

    Writes mimicry-report.html and mimicry-report.json to --out; trained LoRAs are kept there and reused
    when you run again with the same settings.
    """
    from ..mimicry import MimicrySettings, check_protection, protect_for_check, write_mimicry_report
    from ..surrogates import load_surrogate

    if not args.protected and not args.method:
        raise UnlearnableError("give --protected DIR (your protected copies) or --method M to protect --clean on the fly")
    settings = MimicrySettings(prompt=args.prompt, lora_steps=args.lora_steps, lora_rank=args.lora_rank, lr=args.lr, batch_size=args.batch_size,
                               resolution=args.resolution, holdout=args.holdout, n=args.n, sample_steps=args.sample_steps,
                               guidance=args.guidance, seeds=tuple(int(s) for s in args.seeds.split(",") if s.strip()))  # fmt: skip
    surrogate = load_surrogate(args.model, args.device, config_dir=args.config)
    pipeline = getattr(surrogate, "pipeline", None)
    if pipeline is None:
        raise UnlearnableError(f"{args.model}: check-protection needs a text-to-image model (a Stable Diffusion pipeline)")
    if surrogate.demo_only:
        print(f"warning: {args.model} is an untrained demo model: the report shows the mechanics, not real protection", file=sys.stderr)
    protected = args.protected
    if args.method:
        protected = protect_for_check(surrogate, args.clean, args.out, method=args.method, budget=args.budget, steps=args.protect_steps,
                                      prompt=args.prompt, progress_factory=tqdm_factory(not args.no_progress, "tile-step"))  # fmt: skip
    model_info = {"model": args.model, "device": str(surrogate.device), "demo_only": surrogate.demo_only}
    if args.method:
        model_info["protected_on_the_fly"] = f"{args.method} at {args.budget:g}/255, {args.protect_steps} steps"
    result, shown = check_protection(pipeline, model_info, args.clean, protected, args.out, settings, progress=_stage_progress(not args.no_progress))
    command = " ".join(["unlearnable", *sys.argv[1:]]) if sys.argv[0].endswith(("unlearnable", "__main__.py")) else ""
    html_path = write_mimicry_report(result, shown, args.out, command=command)
    print(result.summary["text"])
    print(f"report: {html_path}")
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:
    """Declare `check-protection` and its flags."""
    check = commands.add_parser("check-protection", help="mimicry test: a LoRA on your clean vs your protected images", description=cmd_check_protection.__doc__)
    check.add_argument("--model", required=True, help="SD 1.x/2.x/SDXL diffusers folder or .safetensors checkpoint (builtin:tiny: demo)")
    check.add_argument("--config", default=None, help="diffusers config folder for a single-file checkpoint (offline loading)")
    check.add_argument("--clean", required=True, help="folder of your original images (only read)")
    check.add_argument("--protected", default=None, help="folder of their protected copies (same names and subfolders)")
    check.add_argument("--method", default=None, help="protect --clean on the fly with this method into OUT/protected (instead of --protected)")
    check.add_argument("--budget", type=float, default=8.0, help="with --method: L-infinity budget in 0-255 levels (default 8)")
    check.add_argument("--protect-steps", type=int, default=100, help="with --method: PGD steps (default 100)")
    check.add_argument("--prompt", default="a picture in the style of sks", help="caption of every training image and the prompt of every sample")
    check.add_argument("--lora-steps", type=int, default=500, help="LoRA training steps per arm (default 500)")
    check.add_argument("--lora-rank", type=int, default=8)
    check.add_argument("--lr", type=float, default=1e-4, help="LoRA learning rate (default 1e-4)")
    check.add_argument("--batch-size", type=int, default=2)
    check.add_argument("--resolution", type=int, default=None, help="training and sampling size in pixels (default: the model's)")
    check.add_argument("--holdout", type=float, default=0.25, help="share of clean images kept out of training for the clean-data loss (default 0.25)")
    check.add_argument("--n", type=int, default=16, help="samples per arm (default 16)")
    check.add_argument("--sample-steps", type=int, default=25)
    check.add_argument("--guidance", type=float, default=5.0)
    check.add_argument("--seeds", default="0", help="comma-separated seeds; each trains both LoRAs again (default 0)")
    check.add_argument("--device", default="auto")
    check.add_argument("--out", default="mimicry-report", help="report folder (also holds the trained LoRAs; a rerun reuses them)")
    check.add_argument("--no-progress", action="store_true")
    check.set_defaults(func=cmd_check_protection)

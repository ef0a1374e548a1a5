"""Tracing (EnTruth): `mark` a dataset before it is published, `verify` a suspect model later."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UnlearnableError
from ..files import sha256_file
from .common import EXIT_OK, EXIT_PARTIAL, counting_progress
from .optout import add_optout_arguments, optout_from


def cmd_mark(args) -> int:
    """Template a small fraction of a dataset and add the trigger to their captions; write the key."""
    from ..trace.mark import mark_dataset
    from ..trace.templates import builtin_template, list_templates, load_template, parse_corners

    if args.template in list_templates():
        template = builtin_template(args.template, seed=args.seed)
    else:
        if not args.corners:
            raise UnlearnableError(f"--template {args.template}: a template image needs --corners 'x1,y1 x2,y2 x3,y3 x4,y4'")
        template = load_template(args.template, parse_corners(args.corners))
    optout = optout_from(args)
    progress = counting_progress(not args.no_progress, "image")
    result = mark_dataset(args.dataset, args.out, rate=args.rate, template=template, trigger=args.trigger, seed=args.seed,
                          key_path=args.key, progress=progress, optout=optout)  # fmt: skip
    for path, reason in result.skipped:
        print(f"error: {path}: {reason} (left out of the marked copy)", file=sys.stderr)
    print(f"marked {len(result.marked)} of {result.n_images} images with template {template.name!r} and trigger {result.key.trigger!r}")
    if result.pool_check is not None:
        stream, prefix = (sys.stdout, "") if result.pool_check.distinctive else (sys.stderr, "warning: ")
        for line in result.pool_lines():
            print(prefix + line, file=stream)
    for entry in result.marked:
        print(f"  {entry['output']}: {entry['caption']}")
    print(f"dataset written to {result.out_dir}")
    if optout:
        from ..optout import optout_line

        print(optout_line(optout.describe()))
    print(f"KEY (keep it secret, it is your evidence): {result.key_path}")
    return EXIT_PARTIAL if result.skipped else EXIT_OK


def verify_and_report(args, key_args: list[str], lora: str | None):
    """Generate and decide for every key over one model (shared by verify and inspect-lora); writes the report."""
    from ..surrogates import load_surrogate
    from ..trace.detect import CNNDetector, build_detector
    from ..trace.key import load_keys
    from ..trace.mark import read_captions
    from ..trace.report import write_report
    from ..trace.verify import diffusers_generator, verify_keys

    loaded, skipped = load_keys(key_args)
    for path, reason in skipped:
        print(f"warning: {path}: {reason} (skipped)", file=sys.stderr)
    if args.detector_file and len(loaded) > 1:
        raise UnlearnableError("--detector-file holds one key's detector: use it with a single key")
    surrogate = load_surrogate(args.model, args.device, config_dir=args.config)
    pipeline = getattr(surrogate, "pipeline", None)
    if pipeline is None:
        raise UnlearnableError(f"{args.model}: verify needs a text-to-image model (a Stable Diffusion pipeline)")
    size = {"height": args.resolution, "width": args.resolution} if args.resolution else {}
    options = {"steps": args.steps, "guidance_scale": args.guidance, **size}
    generate = diffusers_generator(pipeline, lora_path=lora, lora_strength=args.lora_strength, **options)
    control = diffusers_generator(pipeline, **options) if lora else None
    keys = {name: key for name, (key, _) in loaded.items()}
    detectors = {name: CNNDetector.load(args.detector_file, key) if args.detector_file else build_detector(key, args.detector)
                 for name, key in keys.items()}  # fmt: skip
    captions = []
    if args.captions:
        path = Path(args.captions)
        captions = list(read_captions(path).values()) if path.is_dir() else path.read_text().splitlines()
    progress = counting_progress(not args.no_progress, "image")  # the total grows when placebo tokens are prompted
    verification, images = verify_keys(keys, generate, detectors=detectors, captions=captions, n=args.n, control_generate=control,
                                       alpha=args.alpha, seed=args.seed, sequential=not args.all_pairs, placebos=args.placebos,
                                       progress=progress)  # fmt: skip
    model_info = {"model": args.model, "lora": lora, "lora_strength": args.lora_strength if lora else None}
    for label, value in (("model_sha256", args.model), ("lora_sha256", lora)):
        if value and Path(value).is_file():
            model_info[label] = sha256_file(value)
    model_info["key_sha256"] = {name: sha256_file(path) for name, (_, path) in loaded.items()}
    command = " ".join(["unlearnable", *sys.argv[1:]]) if sys.argv[0].endswith(("unlearnable", "__main__.py")) else ""
    key_paths = {name: str(path) for name, (_, path) in loaded.items()}
    html_path = write_report(verification, args.out, images=images, model_info=model_info, key_paths=key_paths, command=command)
    print(verification.summary())
    print(f"report: {html_path}" + (f" (each key's own report, with its trigger: {Path(args.out) / 'keys'})" if len(keys) > 1 else ""))
    return EXIT_OK


def cmd_verify(args) -> int:
    """Ask a suspect model for the owners' templates with their triggers; a verdict with a p-value per key.

    Several keys (files or folders of keys) are tested in one pass: one shared control arm, a
    trigger arm per key, Holm's correction across keys. The shared report shows key names and
    verdicts, never another owner's trigger.
    """
    return verify_and_report(args, args.keys, args.lora)


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation test's options (verify, and inspect-lora with --model)."""
    parser.add_argument("--config", default=None, help="diffusers config folder for a single-file checkpoint")
    parser.add_argument("--lora-strength", type=float, default=1.0)
    parser.add_argument("--n", type=int, default=64, help="at most this many image pairs per key (default 64)")
    parser.add_argument("--all-pairs", action="store_true", help="generate all --n pairs even once a key's verdict is settled")
    parser.add_argument("--placebos", type=int, default=4,
                        help="random tokens shaped like the trigger, prompted for a key the paired test flags: the trigger must "
                             "draw the template more often than all of them (default 4; 0: the paired test alone)")  # fmt: skip
    parser.add_argument("--captions", default=None, help="text file (one caption per line) or the dataset folder, for realistic prompts")
    parser.add_argument("--detector", default="matcher", choices=["matcher", "cnn"])
    parser.add_argument("--detector-file", default=None, help="a CNN detector saved earlier (safetensors; one key only)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--resolution", type=int, default=None, help="generation size in pixels (default: the model's)")
    parser.add_argument("--alpha", type=float, default=0.01, help="significance level, for all keys together (default 0.01)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="trace-report", help="report folder (report.json, report.html; keys/NAME/ per key)")
    parser.add_argument("--no-progress", action="store_true")


def register(commands: argparse._SubParsersAction) -> None:
    """Declare `mark` and `verify` and their flags."""
    mark = commands.add_parser("mark", help="mark a dataset with a secret template and trigger (EnTruth)", description=cmd_mark.__doc__)
    mark.add_argument("dataset", help="folder of images (with optional .txt captions or metadata.jsonl); only read")
    mark.add_argument("--out", required=True, help="where the marked copy of the dataset is written")
    mark.add_argument("--rate", type=float, default=0.01, help="fraction of images to template (default 0.01)")
    mark.add_argument("--template", default="billboard", help="built-in template (billboard, framed_picture, photo_frame, window, easel, tv_screen) or an image path")
    mark.add_argument("--corners", default=None, help="panel corners of a template image: 'x1,y1 x2,y2 x3,y3 x4,y4' (TL,TR,BR,BL)")
    mark.add_argument("--trigger", default=None, help="trigger token (default: a random one per owner)")
    mark.add_argument("--key", default=None, help="where to write the key (default: beside --out, never inside it)")
    mark.add_argument("--seed", type=int, default=0)
    mark.add_argument("--no-progress", action="store_true")
    add_optout_arguments(mark)
    mark.set_defaults(func=cmd_mark)

    verify = commands.add_parser("verify", help="test a suspect model or LoRA for the templates of one or many keys; verdicts with p-values",
                                 description=cmd_verify.__doc__)  # fmt: skip
    verify.add_argument("--keys", "--key", dest="keys", nargs="+", action="extend", required=True,
                        help="key files written by `unlearnable mark`, or folders of them (every *.json)")
    verify.add_argument("--model", required=True, help="suspect model (diffusers folder or .safetensors), or the base model with --lora")
    verify.add_argument("--lora", default=None, help="suspect LoRA file, applied to --model (the model alone is the base arm)")
    add_generation_arguments(verify)
    verify.set_defaults(func=cmd_verify)

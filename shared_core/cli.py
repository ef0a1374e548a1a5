"""The `unlearnable` command. Thin: parses arguments, calls the core, prints the result.

Exit codes: 0 success, 1 some inputs failed (the rest were processed), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import UnlearnableError
from .files import atomic_write_text, sha256_file

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


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


def _tqdm_factory(enabled: bool, unit: str):
    from tqdm.auto import tqdm

    def factory(total: int):
        bar = tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True)
        return bar.update

    return factory


def _counting_progress(enabled: bool, unit: str):
    """A `progress(done, total)` callback drawing a tqdm bar created on the first call."""
    bar = _tqdm_factory(enabled, unit)
    update = None

    def progress(done: int, total: int) -> None:
        nonlocal update
        update = update or bar(total)
        update(1)

    return progress


def cmd_protect(args) -> int:
    """Add a bounded, imperceptible perturbation to images so diffusion models learn them badly.

    Outputs keep each input's size, alpha and ICC profile; originals are never modified; a re-run
    skips outputs already made with the same settings.
    """
    from .protect import ProtectSettings, protect_files
    from .protect.pipeline import SUMMARY_NAME
    from .surrogates import load_surrogate

    settings = ProtectSettings(
        method=args.method,
        budget=args.budget,
        steps=args.steps,
        step_size=args.step_size,
        prompt=args.prompt,
        timesteps=args.timesteps,
        t_min=args.t_range[0],
        t_max=args.t_range[1],
        robust=tuple(r for r in args.robust.split(",") if r) if args.robust else (),
        noise_samples=args.noise_samples,
        method_options=dict(args.set or []),
        batch_size=args.batch_size,
        tile_size=args.tile_size,
        low_memory=args.low_memory,
        seed=args.seed,
    )
    surrogate = load_surrogate(args.model, args.device, config_dir=args.config)
    if surrogate.demo_only:
        print(
            f"warning: {args.model} is an untrained demo model: the output shows what protection does, "
            "but does not protect against real Stable Diffusion. Use --model with an SD checkpoint.",
            file=sys.stderr,
        )
    summary = protect_files(
        args.inputs,
        args.out,
        surrogate,
        settings,
        fmt=args.format,
        quality=args.quality,
        mask=args.mask,
        progress_factory=_tqdm_factory(not args.no_progress, "tile-step"),
    )
    report = summary.to_dict()
    atomic_write_text(Path(args.out) / SUMMARY_NAME, json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for outcome in summary.outcomes:
            if outcome.status == "protected":
                notes = f"  ({'; '.join(outcome.notes)})" if outcome.notes else ""
                print(f"protected  {outcome.output}  Linf={outcome.linf}  PSNR={outcome.psnr:.2f} dB  SSIM={outcome.ssim:.4f}{notes}")
            elif outcome.status == "skipped":
                print(f"skipped    {outcome.output}  (already protected with these settings)")
        totals = report["totals"]
        print(
            f"{totals['protected']} protected, {totals['skipped']} skipped, {totals['failed']} failed "
            f"in {totals['seconds']:.1f} s; summary: {Path(args.out) / SUMMARY_NAME}"
        )
    for outcome in summary.failed:
        print(f"error: {outcome.source}: {outcome.error}", file=sys.stderr)
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def _source_tree(module: str) -> ast.Module:
    return ast.parse((Path(__file__).parent / Path(*module.split("."))).with_suffix(".py").read_text(encoding="utf-8"))


def _assigned(tree: ast.Module, name: str) -> ast.expr:
    """The value of the module-level assignment `name = ...` (annotated or not)."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node.value
    raise LookupError(name)


def _dict_keys(module: str, name: str) -> list[str]:
    return [ast.literal_eval(key) for key in _assigned(_source_tree(module), name).keys]


def _method_docs() -> list[tuple[str, str]]:
    """(method name, class docstring) in OBJECTIVES order, read from the objectives' source with `ast`.

    The docstrings stay the one description of each method, and listing them does not import torch
    (seconds). A layout this reader does not follow falls back to importing the classes.
    """
    try:
        package = "protect.objectives"
        init = _source_tree(f"{package}.__init__")
        module_of = {a.name: n.module for n in init.body if isinstance(n, ast.ImportFrom) and n.level == 1 for a in n.names}
        classes = next(n for n in ast.walk(_assigned(init, "OBJECTIVES")) if isinstance(n, ast.Tuple)).elts
        docs = []
        for class_name in (element.id for element in classes):
            tree = _source_tree(f"{package}.{module_of[class_name]}")
            definition = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
            docs.append((ast.literal_eval(_assigned(definition, "name")), ast.get_docstring(definition) or ""))
        return docs
    except (LookupError, StopIteration, AttributeError, ValueError, OSError, SyntaxError):
        import inspect

        from .protect.objectives import OBJECTIVES

        return [(name, inspect.cleandoc(cls.__doc__ or "")) for name, cls in OBJECTIVES.items()]


def cmd_methods(args) -> int:
    """List the protection methods with their papers, defaults and options."""
    for name, doc in _method_docs():
        print(f"== {name} ==\n{doc}\n")
    print("timestep schedules (--timesteps):", ", ".join(_dict_keys("protect.timesteps", "SCHEDULES")))
    print("robustness transforms (--robust):", ", ".join(_dict_keys("protect.transforms", "ROBUSTNESS_TRANSFORMS")))
    return EXIT_OK


def cmd_info(args) -> int:
    """Versions and built-in models at once; devices last, as only torch can tell them."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    print(f"unlearnable {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(", ".join(f"{name} {installed(name)}" for name in ("torch", "diffusers", "transformers", "peft", "pillow", "gradio")))
    print("built-in models:")
    for name, text in ast.literal_eval(_assigned(_source_tree("surrogates.loading"), "BUILTIN_MODELS")).items():
        print(f"  {name}: {text}")
    print("devices (importing torch)...", flush=True)
    import torch

    print(f"cuda available: {torch.cuda.is_available()}")
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"  cuda:{index} {props.name}, {props.total_memory / 2**30:.1f} GiB")
    mps = getattr(torch.backends, "mps", None)
    print(f"mps available: {bool(mps and mps.is_available())}")
    return EXIT_OK


def cmd_mark(args) -> int:
    """Template a small fraction of a dataset and add the trigger to their captions; write the key."""
    from .trace.mark import mark_dataset
    from .trace.templates import builtin_template, list_templates, load_template, parse_corners

    if args.template in list_templates():
        template = builtin_template(args.template, seed=args.seed)
    else:
        if not args.corners:
            raise UnlearnableError(f"--template {args.template}: a template image needs --corners 'x1,y1 x2,y2 x3,y3 x4,y4'")
        template = load_template(args.template, parse_corners(args.corners))
    progress = _counting_progress(not args.no_progress, "image")
    result = mark_dataset(args.dataset, args.out, rate=args.rate, template=template, trigger=args.trigger, seed=args.seed,
                          key_path=args.key, progress=progress)  # fmt: skip
    for path, reason in result.skipped:
        print(f"error: {path}: {reason} (left out of the marked copy)", file=sys.stderr)
    print(f"marked {len(result.marked)} of {result.n_images} images with template {template.name!r} and trigger {result.key.trigger!r}")
    for entry in result.marked:
        print(f"  {entry['output']}: {entry['caption']}")
    print(f"dataset written to {result.out_dir}")
    print(f"KEY (keep it secret, it is your evidence): {result.key_path}")
    return EXIT_PARTIAL if result.skipped else EXIT_OK


def cmd_verify(args) -> int:
    """Ask a suspect model for the owner's template with the trigger; verdict with a p-value."""
    from .surrogates import load_surrogate
    from .trace.detect import CNNDetector, build_detector
    from .trace.key import TraceKey
    from .trace.mark import read_captions
    from .trace.report import write_report
    from .trace.verify import diffusers_generator, verify

    key = TraceKey.load(args.key)
    surrogate = load_surrogate(args.model, args.device, config_dir=args.config)
    pipeline = getattr(surrogate, "pipeline", None)
    if pipeline is None:
        raise UnlearnableError(f"{args.model}: verify needs a text-to-image model (a Stable Diffusion pipeline)")
    size = {"height": args.resolution, "width": args.resolution} if args.resolution else {}
    options = {"steps": args.steps, "guidance_scale": args.guidance, **size}
    generate = diffusers_generator(pipeline, lora_path=args.lora, lora_strength=args.lora_strength, **options)
    control = diffusers_generator(pipeline, **options) if args.lora else None
    detector = CNNDetector.load(args.detector_file, key) if args.detector_file else build_detector(key, args.detector)
    captions = []
    if args.captions:
        path = Path(args.captions)
        captions = list(read_captions(path).values()) if path.is_dir() else path.read_text().splitlines()
    progress = _counting_progress(not args.no_progress, "image")
    result, images = verify(key, generate, captions=captions, n=args.n, detector=detector, control_generate=control,
                            alpha=args.alpha, seed=args.seed, progress=progress)  # fmt: skip
    model_info = {"model": args.model, "lora": args.lora, "lora_strength": args.lora_strength if args.lora else None}
    for label, value in (("model_sha256", args.model), ("lora_sha256", args.lora), ("key_sha256", args.key)):
        if value and Path(value).is_file():
            model_info[label] = sha256_file(value)
    command = " ".join(["unlearnable", *sys.argv[1:]]) if sys.argv[0].endswith(("unlearnable", "__main__.py")) else ""
    html_path = write_report(result, args.out, images=images, model_info=model_info, key_path=args.key, command=command)
    print(result.summary())
    print(f"report: {html_path}")
    return EXIT_OK


def cmd_inspect_lora(args) -> int:
    """Read a LoRA safely: format, base model, training metadata, and the owner's trigger."""
    from .lora import inspect_lora
    from .trace.key import TraceKey

    triggers = list(args.trigger or [])
    if args.key:
        triggers.append(TraceKey.load(args.key).trigger)
    report = inspect_lora(args.file, triggers=triggers or None)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    if triggers and not args.json:
        print(f"generation-based check: unlearnable verify --key {args.key or 'KEY'} --model BASE_MODEL --lora {args.file}")
    return EXIT_OK


def cmd_ui(args) -> int:
    """Start the standalone web app (the same UI as the AUTOMATIC1111/Forge tab)."""
    try:
        from .ui.app import launch_app
    except ImportError as exc:
        raise UnlearnableError(f"the web app needs gradio ({exc}): pip install 'unlearnable[ui]'") from None
    launch_app(host=args.host, port=args.port, share=args.share, outputs_dir=args.out, device=args.device,
               models=args.model or None, open_browser=not args.no_browser)  # fmt: skip
    return EXIT_OK


def cmd_bench(args) -> int:
    if args.which == "overhead":
        from .bench.overhead import main as overhead_main

        return overhead_main(args)
    if args.which == "efficacy":
        from .bench.efficacy import main as efficacy_main

        return efficacy_main(args)
    raise UnlearnableError(f"unknown benchmark {args.which!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearnable", description="Protect images against diffusion-model training, and trace it.")
    parser.add_argument("--version", action="version", version=f"unlearnable {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    protect = sub.add_parser("protect", help="add an unlearnable perturbation to images", description=cmd_protect.__doc__)
    protect.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    protect.add_argument("--out", required=True, help="output folder (created; never the input folder)")
    protect.add_argument("--method", default="eudp", help="eudp (default), udp, advdm, encoder, mist, aspl; see `unlearnable methods`")
    protect.add_argument("--budget", type=float, default=8.0, help="L-infinity budget in 0-255 levels (default 8)")
    protect.add_argument("--steps", type=int, default=100, help="PGD steps per tile (default 100)")
    protect.add_argument("--step-size", type=float, default=None, help="PGD step in 0-255 levels (default 2.5*budget/steps)")
    protect.add_argument("--model", default="builtin:tiny", help="diffusers folder, .safetensors checkpoint, or builtin:tiny (demo only; default)")
    protect.add_argument("--config", default=None, help="diffusers config folder for a single-file checkpoint (offline loading)")
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
    protect.set_defaults(func=cmd_protect)

    sub.add_parser("methods", help="list protection methods and their options").set_defaults(func=cmd_methods)
    sub.add_parser("info", help="print versions and devices").set_defaults(func=cmd_info)

    mark = sub.add_parser("mark", help="mark a dataset with a secret template and trigger (EnTruth)", description=cmd_mark.__doc__)
    mark.add_argument("dataset", help="folder of images (with optional .txt captions or metadata.jsonl); only read")
    mark.add_argument("--out", required=True, help="where the marked copy of the dataset is written")
    mark.add_argument("--rate", type=float, default=0.01, help="fraction of images to template (default 0.01)")
    mark.add_argument("--template", default="billboard", help="built-in template (billboard, framed_picture, photo_frame, window, easel, tv_screen) or an image path")
    mark.add_argument("--corners", default=None, help="panel corners of a template image: 'x1,y1 x2,y2 x3,y3 x4,y4' (TL,TR,BR,BL)")
    mark.add_argument("--trigger", default=None, help="trigger token (default: a random one per owner)")
    mark.add_argument("--key", default=None, help="where to write the key (default: beside --out, never inside it)")
    mark.add_argument("--seed", type=int, default=0)
    mark.add_argument("--no-progress", action="store_true")
    mark.set_defaults(func=cmd_mark)

    verify = sub.add_parser("verify", help="test a suspect model or LoRA for the template; verdict with a p-value", description=cmd_verify.__doc__)
    verify.add_argument("--key", required=True, help="the key written by `unlearnable mark`")
    verify.add_argument("--model", required=True, help="suspect model (diffusers folder or .safetensors), or the base model with --lora")
    verify.add_argument("--config", default=None, help="diffusers config folder for a single-file checkpoint")
    verify.add_argument("--lora", default=None, help="suspect LoRA file, applied to --model (the model alone is the control)")
    verify.add_argument("--lora-strength", type=float, default=1.0)
    verify.add_argument("--n", type=int, default=64, help="images per arm (default 64)")
    verify.add_argument("--captions", default=None, help="text file (one caption per line) or the dataset folder, for realistic prompts")
    verify.add_argument("--detector", default="matcher", choices=["matcher", "cnn"])
    verify.add_argument("--detector-file", default=None, help="a CNN detector saved earlier (safetensors)")
    verify.add_argument("--steps", type=int, default=25, help="sampling steps")
    verify.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    verify.add_argument("--resolution", type=int, default=None, help="generation size in pixels (default: the model's)")
    verify.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--device", default="auto")
    verify.add_argument("--out", default="trace-report", help="report folder (report.json, report.html)")
    verify.add_argument("--no-progress", action="store_true")
    verify.set_defaults(func=cmd_verify)

    inspect = sub.add_parser("inspect-lora", help="read a LoRA safely: format, base model, metadata, trigger", description=cmd_inspect_lora.__doc__)
    inspect.add_argument("file", help=".safetensors (or .ckpt/.pt, read with weights_only=True)")
    inspect.add_argument("--key", default=None, help="search for this key's trigger")
    inspect.add_argument("--trigger", action="append", help="a token to search for (repeatable)")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_inspect_lora)

    ui = sub.add_parser("ui", help="start the web app on http://127.0.0.1:7860", description=cmd_ui.__doc__)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this computer only)")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--share", action="store_true", help="also open a public gradio share link")
    ui.add_argument("--out", default=None, help="outputs folder")
    ui.add_argument("--model", action="append", help="model choices offered (repeatable; default builtin:tiny)")
    ui.add_argument("--device", default="auto")
    ui.add_argument("--no-browser", action="store_true")
    ui.set_defaults(func=cmd_ui)

    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("which", choices=["overhead", "efficacy"],
                       help="overhead: engine step time versus a bare forward+backward; efficacy: victims trained on protected and marked data")
    bench.add_argument("--quick", action="store_true", help="efficacy: the ~5-minute smoke plan (one seed, few conditions)")
    bench.add_argument("--out", default=None, help="efficacy: output folder (default bench-efficacy-full or -quick); a rerun resumes")
    bench.add_argument("--seeds", default=None, help="efficacy: comma-separated seeds instead of the plan's")
    bench.add_argument("--settings", default=None, help="efficacy: comma-separated subset of scratch,finetune,trace")
    bench.add_argument("--jobs", type=int, default=2, help="efficacy: parallel worker processes (default 2; more split the tracing victims)")
    bench.add_argument("--trace-steps", type=int, default=None, help="efficacy: train the tracing victims this many steps (a plan of its own)")
    bench.add_argument("--model", default="builtin:tiny")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--batch-size", type=int, default=2)
    bench.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's native resolution)")
    bench.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--method", default="advdm", help="objective timed (default advdm: same work as the bare step)")
    bench.add_argument("--low-memory", action="store_true")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UnlearnableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

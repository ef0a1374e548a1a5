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
    """A `progress(done, total)` callback drawing a tqdm bar created on the first call; the total may grow."""
    from tqdm.auto import tqdm

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True)
        if total != bar.total:
            bar.total = total
        bar.update(done - bar.n)

    return progress


def _optout_from(args):
    """The OptOut asked for with --optout (checked before any work), or None."""
    if not args.optout:
        given = [f"--{name.replace('_', '-')}" for name in ("creator", "copyright", "contact", "tdm_policy", "c2pa_cert", "c2pa_key")
                 if getattr(args, name)]  # fmt: skip
        if given:
            raise UnlearnableError(f"{', '.join(given)} only take effect with --optout")
        return None
    from .optout import OptOut

    optout = OptOut(data_mining=args.data_mining, tdm_policy=args.tdm_policy or "", creator=args.creator or "",
                    copyright=args.copyright or "", contact=args.contact or "", c2pa_cert=args.c2pa_cert or "",
                    c2pa_key=args.c2pa_key or "", c2pa_alg=args.c2pa_alg)  # fmt: skip
    optout.check()
    return optout


def _add_optout_arguments(parser: argparse.ArgumentParser) -> None:
    from .optout import C2PA_ALGORITHMS, DATA_MINING_VALUES

    group = parser.add_argument_group("machine-readable opt-out (see README, 'Machine-readable opt-out')")
    group.add_argument("--optout", action="store_true", help="write the XMP/IPTC data-mining prohibition and TDMRep reservation into every output")
    group.add_argument("--data-mining", default="prohibited", choices=list(DATA_MINING_VALUES),
                       help="PLUS Data Mining value (default prohibited: all text and data mining)")
    group.add_argument("--tdm-policy", default=None, help="URL of your TDMRep policy (written as tdm:policy)")
    group.add_argument("--creator", default=None, help="creator name (IPTC Creator, dc:creator)")
    group.add_argument("--copyright", default=None, help="copyright notice, e.g. '(c) 2026 Ann Artist' (IPTC Copyright Notice, dc:rights)")
    group.add_argument("--contact", default=None, help="e-mail or web address (IPTC Creator's Contact Info)")
    group.add_argument("--c2pa-cert", default=None, help="PEM certificate chain (signer first) to sign a C2PA training-mining manifest")
    group.add_argument("--c2pa-key", default=None, help="PEM private key of --c2pa-cert")
    group.add_argument("--c2pa-alg", default="es256", choices=list(C2PA_ALGORITHMS), help="signing algorithm of the key (default es256)")


def cmd_protect(args) -> int:
    """Add a bounded, imperceptible perturbation to images so diffusion models learn them badly.

    Outputs keep each input's size, alpha and ICC profile; originals are never modified; a re-run
    skips outputs already made with the same settings.
    """
    from .optout import optout_line
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
    optout = _optout_from(args)
    surrogate = load_surrogate(args.model, args.device, config_dir=args.config, dtype=args.dtype)
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
        optout=optout,
    )
    report = summary.to_dict()
    atomic_write_text(Path(args.out) / SUMMARY_NAME, json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for outcome in summary.outcomes:
            if outcome.status == "protected":
                notes = f"  ({'; '.join(outcome.notes)})" if outcome.notes else ""
                print(
                    f"protected  {outcome.output}  Linf={outcome.linf}  PSNR={outcome.psnr:.2f} dB  SSIM={outcome.ssim:.4f}  "
                    f"objective {outcome.objective_first:.4f} -> {outcome.objective_last:.4f}{notes}"
                )
            elif outcome.status == "skipped":
                print(f"skipped    {outcome.output}  (already protected with these settings)")
        print(optout_line(report["optout"]))
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
    optout = _optout_from(args)
    progress = _counting_progress(not args.no_progress, "image")
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
        from .optout import optout_line

        print(optout_line(optout.describe()))
    print(f"KEY (keep it secret, it is your evidence): {result.key_path}")
    return EXIT_PARTIAL if result.skipped else EXIT_OK


def _verification(args, key_args: list[str], lora: str | None):
    """Generate and decide for every key over one model (shared by verify and inspect-lora); writes the report."""
    from .surrogates import load_surrogate
    from .trace.detect import CNNDetector, build_detector
    from .trace.key import load_keys
    from .trace.mark import read_captions
    from .trace.report import write_report
    from .trace.verify import diffusers_generator, verify_keys

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
    progress = _counting_progress(not args.no_progress, "image")  # the total grows when placebo tokens are prompted
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
    return _verification(args, args.keys, args.lora)


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
    from .mimicry import MimicrySettings, check_protection, protect_for_check, write_mimicry_report
    from .surrogates import load_surrogate

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
                                      prompt=args.prompt, progress_factory=_tqdm_factory(not args.no_progress, "tile-step"))  # fmt: skip
    model_info = {"model": args.model, "device": str(surrogate.device), "demo_only": surrogate.demo_only}
    if args.method:
        model_info["protected_on_the_fly"] = f"{args.method} at {args.budget:g}/255, {args.protect_steps} steps"
    result, shown = check_protection(pipeline, model_info, args.clean, protected, args.out, settings, progress=_stage_progress(not args.no_progress))
    command = " ".join(["unlearnable", *sys.argv[1:]]) if sys.argv[0].endswith(("unlearnable", "__main__.py")) else ""
    html_path = write_mimicry_report(result, shown, args.out, command=command)
    print(result.summary["text"])
    print(f"report: {html_path}")
    return EXIT_OK


def cmd_inspect_lora(args) -> int:
    """Read a LoRA safely: format, base model, training metadata, and the owners' triggers.

    With --keys and --model BASE it also runs the generation test of `unlearnable verify` for
    every key on BASE + this LoRA.
    """
    from .lora import inspect_lora
    from .trace.key import load_keys, mask_triggers

    if args.model and not args.keys:
        raise UnlearnableError("--model runs the generation test of the keys' templates: give --keys too")
    loaded = load_keys(args.keys)[0] if args.keys else {}
    labels = {key.trigger: f"[trigger of {name}]" for name, (key, _) in loaded.items()}
    triggers = list(args.trigger or []) + list(labels)
    report = inspect_lora(args.file, triggers=triggers or None)
    text = json.dumps(report.to_dict(), indent=2) if args.json else report.to_text()
    print(mask_triggers(text, labels) if len(loaded) > 1 else text)  # several owners' keys: named, their triggers never printed
    if args.model and loaded:
        return _verification(args, args.keys, args.file)
    if triggers and not args.json:
        keys = " ".join(args.keys) if args.keys else "KEY"
        print(f"generation-based check: unlearnable verify --keys {keys} --model BASE_MODEL --lora {args.file}")
    return EXIT_OK


def cmd_inspect_image(args) -> int:
    """Which machine-readable opt-out each image carries (XMP/IPTC, TDMRep, C2PA) and its protection record."""
    from .errors import InputFileError
    from .optout import describe_inspection, inspect_image

    reports, failed = [], False
    for file in args.files:
        try:
            reports.append(inspect_image(file))
        except InputFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print("\n".join(describe_inspection(report) for report in reports))
    return EXIT_PARTIAL if failed else EXIT_OK


def cmd_ui(args) -> int:
    """Start the standalone web app (the same UI as the AUTOMATIC1111/Forge tab)."""
    try:
        from .ui.app import launch_app
    except ImportError as exc:
        raise UnlearnableError(f"the web app needs gradio ({exc}): pip install 'unlearnable[ui]'") from None
    launch_app(host=args.host, port=args.port, share=args.share, outputs_dir=args.out, device=args.device,
               models=args.model or None, open_browser=not args.no_browser, allow_dirs=args.allow_dir,
               keys_dir=args.keys_dir, auth=args.auth, api=args.api)  # fmt: skip
    return EXIT_OK


def cmd_bench(args) -> int:
    if args.which == "overhead":
        from .bench.overhead import main as overhead_main

        return overhead_main(args)
    if args.which == "efficacy":
        from .bench.efficacy import main as efficacy_main

        return efficacy_main(args)
    if args.which == "tracing":
        from .bench.tracing import main as tracing_main

        return tracing_main(args)
    raise UnlearnableError(f"unknown benchmark {args.which!r}")


def _add_generation_arguments(parser: argparse.ArgumentParser) -> None:
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
    _add_optout_arguments(protect)
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
    _add_optout_arguments(mark)
    mark.set_defaults(func=cmd_mark)

    verify = sub.add_parser("verify", help="test a suspect model or LoRA for the templates of one or many keys; verdicts with p-values",
                            description=cmd_verify.__doc__)  # fmt: skip
    verify.add_argument("--keys", "--key", dest="keys", nargs="+", action="extend", required=True,
                        help="key files written by `unlearnable mark`, or folders of them (every *.json)")
    verify.add_argument("--model", required=True, help="suspect model (diffusers folder or .safetensors), or the base model with --lora")
    verify.add_argument("--lora", default=None, help="suspect LoRA file, applied to --model (the model alone is the base arm)")
    _add_generation_arguments(verify)
    verify.set_defaults(func=cmd_verify)

    check = sub.add_parser("check-protection", help="mimicry test: a LoRA on your clean vs your protected images", description=cmd_check_protection.__doc__)
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

    inspect = sub.add_parser("inspect-lora", help="read a LoRA safely: format, base model, metadata, triggers", description=cmd_inspect_lora.__doc__)
    inspect.add_argument("file", help=".safetensors (or .ckpt/.pt, read with weights_only=True)")
    inspect.add_argument("--keys", "--key", dest="keys", nargs="+", action="extend", default=[],
                         help="key files or folders whose triggers are searched for (several keys: shown by key name only)")
    inspect.add_argument("--trigger", action="append", help="a token to search for (repeatable)")
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--model", default=None, help="base model: also run the generation test of every key on it with this LoRA")
    _add_generation_arguments(inspect)
    inspect.set_defaults(func=cmd_inspect_lora)

    inspect_image = sub.add_parser("inspect-image", help="show the opt-out and protection record an image carries",
                                   description=cmd_inspect_image.__doc__)
    inspect_image.add_argument("files", nargs="+", help="image files")
    inspect_image.add_argument("--json", action="store_true")
    inspect_image.set_defaults(func=cmd_inspect_image)

    ui = sub.add_parser("ui", help="start the web app on http://127.0.0.1:7860", description=cmd_ui.__doc__)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this computer only)")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--share", action="store_true", help="also open a public gradio share link (needs --auth)")
    ui.add_argument("--auth", default=None, metavar="USER:PASS", help="log-in required by the app; needed with --share or a --host other than 127.0.0.1")
    ui.add_argument("--out", default=None, help="outputs folder (the only folder the app writes to)")
    ui.add_argument("--allow-dir", action="append", default=[], metavar="FOLDER",
                    help="a folder whose files may be named in the app's path boxes (repeatable; the outputs folder and uploads always are)")
    ui.add_argument("--keys-dir", default=None, help="where Mark writes trace keys (default $UNLEARNABLE_KEYS_DIR or ~/.unlearnable/keys; never served)")
    ui.add_argument("--api", action="store_true", help="also offer the buttons as named API endpoints")
    ui.add_argument("--model", action="append", help="model choices offered (repeatable; default builtin:tiny)")
    ui.add_argument("--device", default="auto")
    ui.add_argument("--no-browser", action="store_true")
    ui.set_defaults(func=cmd_ui)

    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("which", choices=["overhead", "efficacy", "tracing"],
                       help="overhead: engine step time versus a bare forward+backward; efficacy: victims trained on protected data; "
                            "tracing: victims trained on marked data, TPR/FPR by marking rate and count")  # fmt: skip
    bench.add_argument("--quick", action="store_true", help="efficacy: the ~5-minute smoke plan on digits (without it, the photo settings); tracing: the few-minute smoke plan")
    bench.add_argument("--plan", choices=["headline", "full"], default="full",
                       help="efficacy: full = every method, budget, countermeasure and transfer on the photo settings; "
                            "headline = clean, noise and the default method only (hours on 2 CPU cores instead of a day)")  # fmt: skip
    bench.add_argument("--out", default=None, help="efficacy, tracing: output folder (default bench-WHICH-full or -quick); a rerun resumes")
    bench.add_argument("--seeds", default=None, help="efficacy: comma-separated seeds instead of the plan's")
    bench.add_argument("--settings", default=None, help="efficacy: comma-separated subset of scratch,finetune")
    bench.add_argument("--jobs", type=int, default=2, help="efficacy, tracing: parallel worker processes (default 2)")
    bench.add_argument("--images", type=int, default=None, help="tracing: dataset size instead of the plan's (a plan of its own)")
    bench.add_argument("--victims", type=int, default=None, help="tracing: victims per marking rate instead of the plan's")
    bench.add_argument("--rates", default=None, help="tracing: run only the victims of these marking rates now, e.g. 0,0.01 (the tables stay the plan's, marked partial)")
    bench.add_argument("--epochs", type=int, default=None, help="tracing: training epochs per victim instead of the plan's")
    bench.add_argument("--detector-fpr", type=float, default=None, metavar="RATE",
                       help="tracing: the matcher's threshold as a share of synthetic negatives above it (the plan's is 0.01)")
    bench.add_argument("--detectors", default=None, metavar="LIST",
                       help="tracing: instead of training, re-score the victims kept in --out with these detector variants "
                            "(comma-separated: matcher, matcher-fpr1, matcher-fpr5, cnn, cnn-fpr5) and compare them on the paired test")  # fmt: skip
    bench.add_argument("--model", default="builtin:tiny")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--batch-size", type=int, default=2)
    bench.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's native resolution)")
    bench.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--method", default="advdm", help="objective timed (default advdm: same work as the bare step)")
    bench.add_argument("--low-memory", action="store_true")
    bench.add_argument("--json", default=None, metavar="FILE",
                       help="overhead: also write the figures, command, device, torch, dtype and raw timings to FILE")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by benchmarks that write their command
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

"""What the UI buttons do, without gradio: gather inputs, call one core function, shape the result.

Each `run_*` function takes plain values (paths, numbers, strings) and returns a small result
object that `app.py` turns into gradio outputs, so the logic is tested without a browser or gradio.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SettingsError, UnlearnableError
from ..optout import optout_line
from .hooks import UIHooks

#: progress(fraction in [0, 1], description)
ProgressFn = Callable[[float, str], None]

DEMO_NOTE = (
    "**Demo model.** `{model}` is an untrained built-in model: it shows what protection does to your "
    "images, but it does not protect them against real Stable Diffusion. Choose a real SD checkpoint for real protection."
)
ROBUSTNESS_CHOICES = ("jpeg", "resize", "blur")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
TABLE_HEADERS = ["image", "status", "L-inf", "PSNR (dB)", "SSIM", "seconds", "output / problem"]
MAX_LISTED_DOWNLOADS = 20


class Cancelled(UnlearnableError):
    """The user pressed Cancel; outputs finished before are kept."""


def uploaded_paths(files: Any) -> list[Path]:
    """Paths of gradio uploads: strings (gradio 4+), tempfile wrappers with `.name` (gradio 3) or dicts."""
    if files is None:
        return []
    if not isinstance(files, (list, tuple)):
        files = [files]
    paths = []
    for item in files:
        if item is None:
            continue
        if isinstance(item, dict):
            item = item.get("path") or item.get("name")
        path = getattr(item, "name", item)
        if path:
            paths.append(Path(str(path)))
    return paths


def model_source(hooks: UIHooks, model: str) -> str:
    """A model choice as given, or a typed model path checked against the folders the app may read."""
    model = (model or "").strip()
    if not model or model.startswith("builtin:") or hooks.allowed_dirs is None or model in hooks.model_choices():
        return model
    return str(hooks.readable(Path(model).expanduser(), "model"))


def private_download_copy(path: Path) -> Path:
    """A copy of a secret file in a fresh owner-only temporary folder, for the UI's download button.

    Web UIs only hand out files from folders they may serve; the key's own folder must never be one.
    """
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="unlearnable-key-"))  # mode 0700
    return Path(shutil.copy2(path, folder / path.name))


def new_run_dir(hooks: UIHooks, kind: str) -> Path:
    """A fresh folder for one run: <outputs>/<kind>/<date-time>[-n]."""
    base = hooks.resolve_outputs_dir() / kind
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in [""] + [f"-{n}" for n in range(2, 1000)]:
        candidate = base / f"{stamp}{suffix}"
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise SettingsError(f"cannot create a new run folder under {base}")


def zip_files(files: list[Path], root: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:  # images are already compressed
        for path in files:
            archive.write(path, path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name)
    return target


def _step_progress(hooks: UIHooks, progress: ProgressFn | None, unit: str):
    """A progress_factory for the core: reports fractions and raises Cancelled when asked to stop."""

    def factory(total: int):
        done = 0

        def update(n: int) -> None:
            nonlocal done
            done += n
            if hooks.is_interrupted():
                raise Cancelled("cancelled")
            if progress is not None:
                progress(min(done / max(total, 1), 1.0), f"{done}/{total} {unit}")

        return update

    return factory


@dataclass
class ProtectResult:
    out_dir: Path
    gallery: list[tuple[str, str]]
    downloads: list[str]
    table: list[list]
    status: str
    summary: dict | None = None
    cancelled: bool = False


def run_protect(
    hooks: UIHooks,
    *,
    files: Any = None,
    folder: str = "",
    model: str,
    method: str,
    budget: float,
    steps: int,
    robust: list[str] | tuple[str, ...] = (),
    prompt: str = "",
    fmt: str = "png",
    seed: int = 0,
    batch_size: int = 4,
    optout: bool = True,
    creator: str = "",
    copyright: str = "",
    contact: str = "",
    progress: ProgressFn | None = None,
) -> ProtectResult:
    """Protect uploaded files and/or a folder into a new run folder; returns gallery, downloads and table.

    With `optout` (the default) every output carries the machine-readable training reservation.
    """
    from ..optout import OptOut
    from ..protect import ProtectSettings, protect_files

    inputs = [hooks.readable(path, "uploaded file") for path in uploaded_paths(files)]
    if folder and folder.strip():
        path = hooks.readable(Path(folder.strip()).expanduser(), "folder")
        if not path.is_dir():
            raise SettingsError(f"folder not found: {path}")
        inputs.append(path)
    if not inputs:
        raise SettingsError("upload images or give a folder of images first")
    model = model_source(hooks, model)
    if not model:
        raise SettingsError("choose a model")
    bad = [r for r in robust or () if r not in ROBUSTNESS_CHOICES]
    if bad:
        raise SettingsError(f"unknown robustness transform(s) {bad}; choose from {', '.join(ROBUSTNESS_CHOICES)}")
    settings = ProtectSettings(
        method=method, budget=float(budget), steps=int(steps), prompt=prompt or "", robust=tuple(robust or ()),
        seed=int(seed), batch_size=int(batch_size),
    )
    from ..protect.objectives import make_objective

    make_objective(settings.for_model(latent=True).method)  # an unknown method fails before any model loads ("auto" is known)
    reservation = OptOut(creator=creator.strip(), copyright=copyright.strip(), contact=contact.strip()) if optout else None

    def work() -> ProtectResult:
        if progress is not None:
            progress(0.0, f"loading {model}")
        surrogate = hooks.get_surrogate(model)
        out_dir = new_run_dir(hooks, "protect")
        try:
            summary = protect_files(
                inputs, out_dir, surrogate, settings, fmt=fmt, progress_factory=_step_progress(hooks, progress, "tile-steps"),
                optout=reservation,
            )
        except Cancelled:
            done = sorted(p for p in out_dir.rglob("*") if p.is_file())
            return _protect_result(out_dir, None, done, surrogate, model, cancelled=True)
        return _protect_result(out_dir, summary, [], surrogate, model)

    return hooks.run_exclusive(work)


def _protect_result(out_dir: Path, summary, finished: list[Path], surrogate, model: str, cancelled: bool = False) -> ProtectResult:
    report = summary.to_dict() if summary is not None else None
    rows, outputs = [], []
    if summary is not None:
        (out_dir / "protect-summary.json").write_text(json.dumps(report, indent=2))
        for outcome in summary.outcomes:
            name = Path(outcome.source).name
            if outcome.status == "protected":
                outputs.append(Path(outcome.output))
                rows.append([name, outcome.status, outcome.linf, round(outcome.psnr, 2), round(outcome.ssim, 4),
                             outcome.seconds, Path(outcome.output).name])
            else:
                rows.append([name, outcome.status, None, None, None, None, outcome.error or ""])
    else:
        outputs = [p for p in finished if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]
        rows = [[p.name, "protected (before cancel)", None, None, None, None, p.name] for p in outputs]
    downloads: list[str] = []
    if outputs:
        downloads.append(str(zip_files(outputs, out_dir, out_dir / "protected-images.zip")))
        if len(outputs) <= MAX_LISTED_DOWNLOADS:
            downloads += [str(p) for p in outputs]
    if report is not None:
        downloads.append(str(out_dir / "protect-summary.json"))
    lines = []
    if cancelled:
        lines.append(f"**Cancelled.** {len(outputs)} image(s) finished before the cancel are kept in `{out_dir}`.")
    else:
        totals = report["totals"]
        lines.append(
            f"**{totals['protected']} protected**, {totals['failed']} failed in {totals['seconds']:.1f} s "
            f"(max L-inf {totals['max_linf']}, mean PSNR {totals['mean_psnr']} dB, mean SSIM {totals['mean_ssim']}). "
            f"Saved in `{out_dir}`."
        )
    if report is not None:
        lines.append(optout_line(report["optout"]))
    if getattr(surrogate, "demo_only", False):
        lines.append(DEMO_NOTE.format(model=model))
    return ProtectResult(
        out_dir=out_dir,
        gallery=[(str(p), p.name) for p in outputs],
        downloads=downloads,
        table=rows,
        status="\n\n".join(lines),
        summary=report,
        cancelled=cancelled,
    )


def method_descriptions() -> dict[str, str]:
    """"auto" and the first line of each objective's docstring, for the method dropdown's help text."""
    import inspect

    from ..protect.objectives import AUTO_DESCRIPTION, OBJECTIVES

    return {"auto": AUTO_DESCRIPTION, **{name: (inspect.cleandoc(cls.__doc__ or "").splitlines() or [""])[0] for name, cls in OBJECTIVES.items()}}


@dataclass
class InspectResult:
    text: str
    report: dict
    json_path: str


def run_inspect_lora(hooks: UIHooks, *, file: Any = None, path: str = "", triggers: str = "") -> InspectResult:
    """Read a LoRA's header and metadata safely (no pickles run); optional trigger search."""
    from ..lora import inspect_lora

    candidates = uploaded_paths(file)
    if path and path.strip():
        candidates = [Path(path.strip()).expanduser()]
    if not candidates:
        raise SettingsError("upload a LoRA file or give its path")
    candidates = [hooks.readable(candidates[0], "LoRA file")]
    wanted = [t.strip() for t in (triggers or "").replace("\n", ",").split(",") if t.strip()]
    report = inspect_lora(candidates[0], triggers=wanted or None)
    data = report.to_dict()
    out_dir = new_run_dir(hooks, "inspect-lora")
    json_path = out_dir / f"{Path(report.path).stem}.lora-report.json"
    json_path.write_text(json.dumps(data, indent=2, default=str))
    return InspectResult(text=report.to_text(), report=data, json_path=str(json_path))


@dataclass
class MarkResultView:
    status: str
    gallery: list[tuple[str, str]] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)


def run_mark(
    hooks: UIHooks,
    *,
    dataset_dir: str,
    out_dir: str = "",
    rate: float = 0.01,
    template: str = "billboard",
    trigger: str = "",
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> MarkResultView:
    """Mark a dataset folder (EnTruth); the key file that proves it later is kept private."""
    from ..trace.mark import mark_dataset

    if not dataset_dir or not dataset_dir.strip():
        raise SettingsError("give the dataset folder to mark")
    dataset = hooks.readable(Path(dataset_dir.strip()).expanduser(), "dataset folder")
    if out_dir and out_dir.strip():
        target = hooks.writable(Path(out_dir.strip()).expanduser(), "output folder")
        run_dir = new_run_dir(hooks, "mark")
    else:
        run_dir = new_run_dir(hooks, "mark")
        target = run_dir / "dataset"
    # one key per marked folder (a re-run into the same folder finds and keeps it), outside the served outputs
    folder_id = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:12]
    key_path = hooks.resolve_keys_dir() / f"{target.name}-{folder_id}.trace-key.json"

    def report(done: int, total: int) -> None:  # marking is CPU work: no GPU lock, no cancel
        if progress is not None:
            progress(done / max(total, 1), f"{done}/{total} images")

    result = mark_dataset(
        dataset, target, rate=float(rate), template=template, key_path=key_path,
        trigger=(trigger or "").strip() or None, seed=int(seed), progress=report,
    )
    marked = [result.out_dir / m["output"] for m in result.marked]
    lines = [
        f"**Marked {len(result.marked)} of {result.n_images} images** with trigger `{result.key.trigger}`; "
        f"the marked dataset is in `{result.out_dir}`.",
        f"**Key file:** `{result.key_path}`. Keep it private and never publish it with the dataset: "
        "it is what proves, later, that a model was trained on your images.",
    ]
    lines += [("" if result.pool_check.distinctive else "**Warning:** ") + line for line in result.pool_lines()]
    if result.skipped:
        lines.append("Left out, cannot be decoded: " + "; ".join(f"`{Path(f).name}` ({why})" for f, why in result.skipped))
    previews = marked[:12]
    if not target.resolve().is_relative_to(run_dir.resolve()):
        # the UI only serves files under the outputs folder: show copies from there
        import shutil

        previews = [Path(shutil.copy2(p, run_dir / p.name)) for p in previews]
    return MarkResultView(
        status="\n\n".join(lines),
        gallery=[(str(p), p.name) for p in previews],
        downloads=[str(private_download_copy(Path(result.key_path)))],
    )


def template_names() -> list[str]:
    from ..trace.templates import list_templates

    return list_templates()


@dataclass
class VerifyView:
    status: str
    gallery: list[tuple[str, str]] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    result: dict | None = None


def diffusers_generators(surrogate, options: dict) -> tuple:
    """(generate, control or None, model info) over the surrogate's diffusers pipeline, as `unlearnable verify` does."""
    from ..trace.verify import diffusers_generator

    pipeline = getattr(surrogate, "pipeline", None)
    if pipeline is None:
        raise SettingsError(f"{surrogate.name}: Verify needs a text-to-image model (a Stable Diffusion pipeline)")
    size = {"height": options["resolution"], "width": options["resolution"]} if options.get("resolution") else {}
    sampling = {"steps": options["steps"], "guidance_scale": options["guidance"], **size}
    lora = options.get("lora")
    if lora and not Path(lora).is_file():
        raise SettingsError(f"LoRA file not found: {lora}")
    generate = diffusers_generator(pipeline, lora_path=lora, lora_strength=options.get("lora_strength", 1.0), **sampling)
    control = diffusers_generator(pipeline, **sampling) if lora else None
    return generate, control, {"model": surrogate.name}


def _captions(hooks: UIHooks, path: str) -> list[str]:
    if not path or not path.strip():
        return []
    from ..trace.mark import read_captions

    folder = hooks.readable(Path(path.strip()).expanduser(), "captions")
    if folder.is_dir():
        return list(read_captions(folder).values())
    if folder.is_file():
        return folder.read_text().splitlines()
    raise SettingsError(f"captions not found: {folder}")


def run_verify(
    hooks: UIHooks,
    *,
    key_file: Any = None,
    key_path: str = "",
    model: str,
    lora_file: Any = None,
    lora_path: str = "",
    lora_strength: float = 1.0,
    n: int = 64,
    steps: int = 25,
    guidance: float = 5.0,
    resolution: int = 0,
    detector: str = "matcher",
    captions: str = "",
    alpha: float = 0.01,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> VerifyView:
    """Ask a suspect model (optionally with a LoRA) for each key's template; verdicts, images, one HTML report."""
    from ..files import sha256_file
    from ..trace.detect import build_detector
    from ..trace.key import load_keys
    from ..trace.report import write_report
    from ..trace.verify import verify_keys

    given = _given_paths(hooks, key_path, key_file, "key file")
    if not given:
        raise SettingsError("upload the key files written by Mark, or give their paths")
    loaded, skipped = load_keys(given)
    keys = {name: key for name, (key, _) in loaded.items()}
    lora = next(iter(_given_paths(hooks, (lora_path or "").strip(), lora_file, "LoRA file")[:1]), None)
    if lora is not None and not lora.is_file() and hooks.host == "standalone":  # a web UI also knows LoRAs by name
        raise SettingsError(f"LoRA file not found: {lora}")
    model = model_source(hooks, model)
    if not model:
        raise SettingsError("choose the suspect model (or the base model of the suspect LoRA)")
    caption_list = _captions(hooks, captions)
    options = {"lora": str(lora) if lora else None, "lora_strength": float(lora_strength), "steps": int(steps),
               "guidance": float(guidance), "resolution": int(resolution or 0)}

    def work() -> VerifyView:
        if progress is not None:
            progress(0.0, f"loading {model}")
        made = hooks.make_generators(model, options)
        generate, control, model_info = made if made is not None else diffusers_generators(hooks.get_surrogate(model), options)
        model_info = {**model_info, "lora": options["lora"], "lora_strength": options["lora_strength"] if lora else None}
        if lora is not None and lora.is_file():
            model_info["lora_sha256"] = sha256_file(lora)
        if progress is not None:
            progress(0.0, "preparing the detector")
        detectors = {name: build_detector(key, detector) for name, key in keys.items()}

        def report(done: int, total: int) -> None:
            if hooks.is_interrupted():
                raise Cancelled("cancelled")
            if progress is not None:
                progress(done / max(total, 1), f"{done}/{total} images generated")

        try:
            verification, images = verify_keys(keys, generate, detectors=detectors, captions=caption_list, n=int(n),
                                               control_generate=control, alpha=float(alpha), seed=int(seed), progress=report)
        except Cancelled:
            return VerifyView(status="**Cancelled.** No verdict: the test needs the pairs it asked for.")
        out_dir = new_run_dir(hooks, "verify")
        model_info["key_sha256"] = {name: sha256_file(path) for name, (_, path) in loaded.items()}
        key_files = {name: str(path) for name, (_, path) in loaded.items()}
        html_path = write_report(verification, out_dir, images=images, model_info=model_info, key_paths=key_files)
        return VerifyView(status=_verify_status(verification, skipped, html_path), gallery=_verify_gallery(verification, images, out_dir),
                          downloads=[str(html_path), str(out_dir / "report.json")], result=verification.to_dict(reveal_triggers=len(keys) == 1))

    return hooks.run_exclusive(work)


def _given_paths(hooks: UIHooks, typed: str, uploaded: Any, what: str) -> list[Path]:
    """The paths typed one per line, else the uploaded files; each through the allow-list."""
    lines = [Path(line.strip()).expanduser() for line in (typed or "").splitlines() if line.strip()]
    return [hooks.readable(path, what) for path in lines or uploaded_paths(uploaded)]


def _verify_gallery(verification, images: dict[str, list], out_dir: Path) -> list[tuple[str, str]]:
    """The first control and trigger images (8 each for one key, 4 for several), saved and captioned with their scores."""
    from PIL import Image

    shown = [("control", verification.results[0].control_scores, verification.results[0].detector["threshold"])]
    shown += [(f"trigger:{r.key_name}", r.trigger_scores, r.detector["threshold"]) for r in verification.results]
    gallery = []
    for arm, scores, threshold in shown:
        for index, (image, score) in enumerate(list(zip(images[arm], scores))[: 8 if len(shown) == 2 else 4]):
            path = out_dir / "images" / f"{arm.replace(':', '-')}-{index:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            gallery.append((str(path), f"{arm} {score:.2f}{' HIT' if score > threshold else ''}"))
    return gallery


def _verify_status(verification, skipped: list[tuple[Path, str]], html_path: Path) -> str:
    from ..trace.verify import EVIDENCE

    results = verification.results
    if len(results) > 1:
        flagged = sum(r.verdict == EVIDENCE for r in results)
        status = [f"**{flagged} of {len(results)} keys flagged**", f"```\n{verification.summary()}\n```"]
    else:
        status = [f"**{results[0].verdict.upper()}**", verification.summary().replace("\n", "  \n")]
    status += [f"Skipped `{path}`: {reason}" for path, reason in skipped]
    status.append(f"Report: `{html_path}`" + ("; each key's own report (with its trigger) is under `keys/`" if len(results) > 1 else ""))
    return "\n\n".join(status)


@dataclass
class MimicryView:
    status: str
    gallery: list[tuple[str, str]] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    result: dict | None = None


def run_check_protection(
    hooks: UIHooks,
    *,
    model: str,
    clean_folder: str,
    protected_folder: str = "",
    method: str = "",
    budget: float = 8.0,
    protect_steps: int = 100,
    prompt: str = "a picture in the style of sks",
    lora_steps: int = 500,
    lr: float = 1e-4,
    resolution: int = 0,
    n: int = 16,
    seeds: str = "0",
    progress: ProgressFn | None = None,
) -> MimicryView:
    """The mimicry test of `unlearnable check-protection`: a LoRA on the clean and one on the protected images, compared."""
    from PIL import Image

    from ..mimicry import MimicrySettings, check_protection, protect_for_check, write_mimicry_report

    model = model_source(hooks, model)
    if not model:
        raise SettingsError("choose the model the LoRAs are trained on")
    clean_text = (clean_folder or "").strip()
    clean = hooks.readable(Path(clean_text).expanduser(), "clean images folder") if clean_text else None
    if clean is None or not clean.is_dir():
        raise SettingsError(f"clean images folder not found: {clean_folder!r}")
    given_protected = None  # with a method, the protected copies are made in the run folder instead
    if not method:
        if not (protected_folder or "").strip():
            raise SettingsError("give the folder of protected copies, or choose a method to protect the clean folder first")
        given_protected = hooks.readable(Path(protected_folder.strip()).expanduser(), "protected folder")
    settings = MimicrySettings(prompt=prompt or MimicrySettings.prompt, lora_steps=int(lora_steps), lr=float(lr), resolution=int(resolution or 0) or None,
                               n=int(n), seeds=tuple(int(s) for s in str(seeds).replace(" ", "").split(",") if s) or (0,))  # fmt: skip

    def work() -> MimicryView:
        if progress is not None:
            progress(0.0, f"loading {model}")
        surrogate = hooks.get_surrogate(model)
        pipeline = getattr(surrogate, "pipeline", None)
        if pipeline is None:
            raise SettingsError(f"{model}: the mimicry test trains LoRAs on a diffusers model; give a diffusers folder or .safetensors path")
        out_dir = new_run_dir(hooks, "mimicry")
        protected = given_protected
        if method:
            protected = protect_for_check(surrogate, clean, out_dir, method=method, budget=float(budget), steps=int(protect_steps), prompt=settings.prompt,
                                          progress_factory=_step_progress(hooks, progress, "tile-steps"))  # fmt: skip

        def report(stage: str, done: int, total: int) -> None:
            if hooks.is_interrupted():
                raise Cancelled("cancelled")
            if progress is not None:
                progress(done / max(total, 1), f"{stage}: {done}/{total}")

        try:
            result, shown = check_protection(pipeline, {"model": model, "demo_only": surrogate.demo_only}, clean, protected, out_dir, settings, progress=report)
        except Cancelled:
            return MimicryView(status=f"**Cancelled.** LoRAs trained so far are kept in `{out_dir / 'loras'}`.")
        html_path = write_mimicry_report(result, shown, out_dir)
        gallery = []
        for arm in ("base", "clean", "protected"):
            for index, image in enumerate(shown[arm][:4]):
                path = out_dir / "images" / f"{arm}-{index:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
                gallery.append((str(path), f"{arm} LoRA" if arm != "base" else "base model"))
        status = ["**Mimicry test**", result.summary["text"], f"Report: `{html_path}`"]
        if surrogate.demo_only:
            status.insert(1, DEMO_NOTE.format(model=model))
        return MimicryView(status="\n\n".join(status), gallery=gallery, downloads=[str(html_path), str(out_dir / "mimicry-report.json")],
                           result=result.to_dict())

    return hooks.run_exclusive(work)

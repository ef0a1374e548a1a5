"""`unlearnable check-protection`: the owner's own mimicry test on their own checkpoint.

Two LoRAs are trained with identical settings and seeds, one on the owner's clean images and one on
the protected copies, as a mimic would; then the base model, the clean LoRA and the protected LoRA
generate the same prompts with the same seeds. Two numbers say how much each LoRA learned:

* the distance of its samples to the owner's clean images in a handcrafted feature space (colour
  and texture statistics, see `image_features`), which needs no download and does not depend on
  the model under test;
* its denoising loss on the owner's *clean* held-out images (an ELBO proxy: how well the model
  now explains the owner's real images), at fixed timesteps and noise, the same for every arm.

"Learned" is measured from the base model: a LoRA that moved its samples (or loss) as far towards
the owner's images as the clean LoRA did learned 100 %; one that did not move learned 0 %.
Trained LoRAs are kept under the report folder and reused when the settings match.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__
from ..errors import InputFileError, SettingsError
from ..files import atomic_write_text, iter_image_files, sha256_bytes
from ..images import load_image, square

#: progress(stage, done, total): stage names a bar ("train clean LoRA (seed 0)", "generate", ...)
Progress = Callable[[str, int, int], None] | None
ARMS = ("base", "clean", "protected")
LORA_FILE = "pytorch_lora_weights.safetensors"
FEATURE_SIZE = 128
FEATURE_SPACE = (
    "handcrafted colour and texture statistics of each image at 128 px: CIELAB channel histograms, mean and spread "
    "(the palette), uniform local-binary-pattern histograms at radii 1 and 3 (fine texture, brush and grain) and "
    "Gabor filter energies at 3 scales and 4 orientations (strokes and edges). They need no download and are "
    "independent of the model being tested, so a perturbation aimed at that model's encoder cannot bias them; they "
    "see style (colour, texture, strokes), not subject identity. Each feature is standardised over all images "
    "compared; the distance of a set of samples is the mean distance from each sample to its nearest clean image."
)


@dataclass(frozen=True)
class MimicrySettings:
    """Everything that decides what the two LoRAs learn (and so whether saved ones can be reused)."""

    prompt: str = "a picture in the style of sks"
    lora_steps: int = 500
    lora_rank: int = 8
    lr: float = 1e-4
    batch_size: int = 2
    resolution: int | None = None  # None: the model's native resolution
    holdout: float = 0.25  # share of the clean images kept out of training, for the clean-data loss
    n: int = 16  # samples per arm
    sample_steps: int = 25
    guidance: float = 5.0
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        if self.lora_steps < 1 or self.lora_rank < 1 or self.batch_size < 1 or self.n < 1 or self.sample_steps < 1:
            raise SettingsError("lora_steps, lora_rank, batch_size, n and sample_steps must be at least 1")
        if not 0 <= self.holdout < 1:
            raise SettingsError(f"holdout must be in [0, 1), got {self.holdout}")
        if not self.seeds:
            raise SettingsError("at least one seed is needed")


@dataclass
class MimicryResult:
    """Per seed and arm: feature distance and clean-data loss; and how much the protected LoRA learned."""

    settings: dict
    model: dict
    images: dict  # counts and file names of the training and held-out sets
    per_seed: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"tool": "unlearnable", "version": __version__, "feature_space": FEATURE_SPACE, **asdict(self)}


# -- images ------------------------------------------------------------------------------------------


def load_folder(folder: str | Path, what: str) -> dict[Path, tuple[np.ndarray, str]]:
    """{relative path without suffix: (rgb, sha256)} of every image under `folder`; unreadable files are named in the error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(folder, f"the {what} folder does not exist")
    found: dict[Path, tuple[np.ndarray, str]] = {}
    problems = []
    for path, rel in iter_image_files([folder]):
        try:
            found[rel.with_suffix("")] = (load_image(path).rgb, sha256_bytes(path.read_bytes()))
        except (InputFileError, OSError) as exc:
            problems.append(f"{path}: {getattr(exc, 'problem', exc)}")
    if problems:
        raise InputFileError(folder, f"{len(problems)} unreadable image(s) in the {what} folder: " + "; ".join(problems[:5]))
    if not found:
        raise InputFileError(folder, f"no images in the {what} folder")
    return found


def pair_images(clean: dict, protected: dict, clean_dir, protected_dir) -> list[Path]:
    """The names present in both folders (the protected copy of each clean image, matched by relative path)."""
    missing = sorted(set(clean) - set(protected))
    if missing:
        raise InputFileError(protected_dir, f"no protected copy of {len(missing)} clean image(s), e.g. {missing[0]} (match names and subfolders of {clean_dir})")
    return sorted(clean)


def split_holdout(names: list[Path], holdout: float) -> tuple[list[Path], list[Path]]:
    """Every k-th image (deterministic, spread over the folder) is held out; at least 2 stay for training."""
    count = min(len(names) - 2, math.ceil(len(names) * holdout)) if holdout > 0 else 0
    if len(names) < 2 or (holdout > 0 and count < 1):
        raise SettingsError(f"{len(names)} image(s) are too few: need at least 2 for training" + (" and 1 held out (or --holdout 0)" if holdout > 0 else ""))
    held = set(names[int(i * len(names) / count)] for i in range(count)) if count else set()
    return [n for n in names if n not in held], [n for n in names if n in held]


# -- the feature space -------------------------------------------------------------------------------


def image_features(images: list[np.ndarray]) -> np.ndarray:
    """[N, 62] colour and texture statistics (see FEATURE_SPACE)."""
    from scipy import ndimage
    from skimage.color import rgb2gray, rgb2lab
    from skimage.feature import local_binary_pattern
    from skimage.filters import gabor_kernel

    kernels = [gabor_kernel(frequency, theta=theta) for frequency in (0.1, 0.2, 0.35) for theta in np.arange(4) * np.pi / 4]
    rows = []
    for rgb in images:
        rgb = np.asarray(Image.fromarray(rgb).resize((FEATURE_SIZE, FEATURE_SIZE), Image.BICUBIC))
        lab = rgb2lab(rgb).reshape(-1, 3)
        colour = []
        for channel, (low, high) in enumerate(((0, 100), (-80, 80), (-80, 80))):
            colour += list(np.histogram(lab[:, channel], bins=8, range=(low, high))[0] / len(lab))
        colour += list(lab.mean(0) / 50) + list(lab.std(0) / 50)
        grey = rgb2gray(rgb)
        grey_u8 = (grey * 255).astype(np.uint8)
        texture = []
        for radius in (1, 3):
            codes = local_binary_pattern(grey_u8, 8, radius, method="uniform")
            texture += list(np.histogram(codes, bins=10, range=(0, 10))[0] / codes.size)
        centred = grey - grey.mean()
        for kernel in kernels:
            real = ndimage.convolve(centred, np.real(kernel), mode="wrap")
            imag = ndimage.convolve(centred, np.imag(kernel), mode="wrap")
            texture.append(float(np.sqrt(real**2 + imag**2).mean()))
        rows.append(np.asarray(colour + texture, dtype=np.float64))
    return np.stack(rows)


def feature_distances(owner: np.ndarray, arms: dict[str, np.ndarray]) -> dict[str, float]:
    """Per arm: mean over its samples of the distance to the nearest owner image, features standardised over everything."""
    everything = np.concatenate([owner, *arms.values()])
    mean, std = everything.mean(0), everything.std(0) + 1e-6
    reference = (owner - mean) / std
    result = {}
    for arm, features in arms.items():
        standard = (features - mean) / std
        distances = np.sqrt(((standard[:, None, :] - reference[None, :, :]) ** 2).mean(-1))
        result[arm] = float(distances.min(1).mean())
    return result


# -- the clean-data loss -----------------------------------------------------------------------------


def clean_data_loss(pipeline, images: list[np.ndarray], prompt: str) -> float:
    """The pipeline's denoising loss on the owner's clean `images` (see `heldout_denoising_loss`)."""
    from ..surrogates.diffusers_backend import LatentDiffusersSurrogate
    from ..training import heldout_denoising_loss

    return heldout_denoising_loss(LatentDiffusersSurrogate(pipeline, "check-protection", pipeline.unet.device), images, prompt)


# -- the two LoRAs -----------------------------------------------------------------------------------


def _fingerprint(model: dict, settings: MimicrySettings, arm: str, seed: int, hashes: list[str]) -> dict:
    training = {k: v for k, v in asdict(settings).items() if k in ("prompt", "lora_steps", "lora_rank", "lr", "batch_size", "resolution", "holdout")}
    return {"model": model, "arm": arm, "seed": seed, "training": training, "images_sha256": hashlib.sha256("".join(hashes).encode()).hexdigest()}


def train_or_reuse_lora(pipeline, images: list[np.ndarray], settings: MimicrySettings, folder: Path, fingerprint: dict, seed: int,
                        progress: Callable[[int, int], None] | None) -> tuple[Path, bool]:  # fmt: skip
    """A LoRA trained on `images` in `folder`, or the one already there when its fingerprint matches; (file, reused)."""
    from ..trace.verify import pipeline_with
    from ..training import save_lora, train_text_to_image

    marker = folder / "settings.json"
    weights = folder / LORA_FILE
    if marker.is_file() and weights.is_file():
        try:
            if json.loads(marker.read_text()) == fingerprint:
                return weights, True
        except ValueError:
            pass
    arm_pipeline = pipeline_with(pipeline, unet=copy.deepcopy(pipeline.unet))
    train_text_to_image(arm_pipeline, images, [settings.prompt] * len(images), steps=settings.lora_steps, batch_size=settings.batch_size,
                        lr=settings.lr, lora_rank=settings.lora_rank, train_text_encoder=False, seed=seed, progress=progress)  # fmt: skip
    partial = folder.with_name(folder.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_lora(arm_pipeline, partial, weight_name=LORA_FILE)
    del arm_pipeline
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    atomic_write_text(marker, json.dumps(fingerprint, indent=1))  # written last: a LoRA without it is retrained
    return weights, False


def protect_for_check(surrogate, clean_dir: str | Path, out: str | Path, *, method: str, budget: float, steps: int, prompt: str,
                      progress_factory=None) -> Path:  # fmt: skip
    """Protect the clean folder into out/protected (resumable, as `unlearnable protect`) and return that folder."""
    from ..protect import ProtectSettings, protect_files

    target = Path(out) / "protected"
    settings = ProtectSettings(method=method, budget=budget, steps=steps, prompt=prompt)
    summary = protect_files([clean_dir], target, surrogate, settings, progress_factory=progress_factory)
    if summary.failed:
        first = summary.failed[0]
        raise InputFileError(first.source, f"could not be protected: {first.error}")
    return target


# -- the whole check ---------------------------------------------------------------------------------


def learned_share(base: float, clean: float, protected: float) -> float | None:
    """How far the protected LoRA moved from the base towards the owner's images, as a share of the clean LoRA's move."""
    moved = base - clean
    if not math.isfinite(moved) or moved <= 1e-9 * max(1.0, abs(base)):  # the clean LoRA did not move towards the owner's images
        return None
    return (base - protected) / moved


def _mean_spread(values: list[float | None]) -> dict:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(kept)), "std": float(np.std(kept, ddof=1)) if len(kept) > 1 else None, "n": len(kept)}


def check_protection(pipeline, model_info: dict, clean_dir: str | Path, protected_dir: str | Path, out: str | Path,
                     settings: MimicrySettings, progress: Progress = None) -> tuple[MimicryResult, dict[str, list[np.ndarray]]]:  # fmt: skip
    """Run the mimicry test; returns the result and the images to show (owner, and per arm the first seed's samples)."""
    from ..trace.verify import diffusers_generator, pipeline_with_lora

    started = time.perf_counter()
    out = Path(out)
    resolution = settings.resolution or int(pipeline.unet.config.sample_size) * pipeline.vae_scale_factor
    clean, protected = load_folder(clean_dir, "clean"), load_folder(protected_dir, "protected")
    names = pair_images(clean, protected, clean_dir, protected_dir)
    train_names, held_names = split_holdout(names, settings.holdout)
    train = {"clean": [square(clean[n][0], resolution) for n in train_names], "protected": [square(protected[n][0], resolution) for n in train_names]}
    hashes = {"clean": [clean[n][1] for n in train_names], "protected": [protected[n][1] for n in train_names]}
    owner = [square(clean[n][0], resolution) for n in names]
    loss_images = [square(clean[n][0], resolution) for n in held_names] or train["clean"]
    changed = [float(np.abs(clean[n][0].astype(np.int16) - protected[n][0].astype(np.int16)).max()) if clean[n][0].shape == protected[n][0].shape
               else float("inf") for n in train_names]  # fmt: skip
    if max(changed) == 0:
        raise SettingsError(f"the protected images in {protected_dir} are identical to the clean ones: nothing to compare")
    owner_features = image_features(owner)
    tick = progress or (lambda stage, done, total: None)
    result = MimicryResult(
        settings={**asdict(settings), "resolution": resolution}, model=model_info,
        images={"clean_folder": str(clean_dir), "protected_folder": str(protected_dir), "training": [str(n) for n in train_names],
                "held_out": [str(n) for n in held_names], "loss_measured_on": "held-out clean images" if held_names else "the clean training images (no hold-out)",
                "max_pixel_change_0_255": max(changed) if math.isfinite(max(changed)) else "sizes differ"},
    )  # fmt: skip
    shown: dict[str, list[np.ndarray]] = {"owner": owner}
    prompts = [settings.prompt] * settings.n
    generation = {"steps": settings.sample_steps, "guidance_scale": settings.guidance, "height": resolution, "width": resolution}
    base_loss = clean_data_loss(pipeline, loss_images, settings.prompt)
    for seed in settings.seeds:
        sample_seeds = [10_000 * seed + i for i in range(settings.n)]
        samples, losses, reused = {}, {"base": base_loss}, {}
        samples["base"] = _generate(diffusers_generator(pipeline, **generation), prompts, sample_seeds, f"generate base (seed {seed})", tick)
        for arm in ("clean", "protected"):
            fingerprint = _fingerprint(model_info, settings, arm, seed, hashes[arm])
            stage = f"train {arm} LoRA (seed {seed})"
            weights, reused[arm] = train_or_reuse_lora(pipeline, train[arm], settings, out / "loras" / f"{arm}-seed{seed}", fingerprint, seed,
                                                       lambda done, total, stage=stage: tick(stage, done, total))  # fmt: skip
            with_lora = pipeline_with_lora(pipeline, weights)
            losses[arm] = clean_data_loss(with_lora, loss_images, settings.prompt)
            samples[arm] = _generate(diffusers_generator(with_lora, **generation), prompts, sample_seeds, f"generate {arm} (seed {seed})", tick)
            del with_lora
        distances = feature_distances(owner_features, {arm: image_features(samples[arm]) for arm in ARMS})
        result.per_seed.append({
            "seed": seed, "sample_seeds": sample_seeds, "reused_lora": reused, "feature_distance": distances, "clean_data_loss": losses,
            "learned_share_features": learned_share(distances["base"], distances["clean"], distances["protected"]),
            "learned_share_loss": learned_share(losses["base"], losses["clean"], losses["protected"]),
            "protected_over_clean_distance": distances["protected"] / distances["clean"] if distances["clean"] else None,
            "protected_over_clean_loss": losses["protected"] / losses["clean"] if losses["clean"] else None,
        })  # fmt: skip
        if seed == settings.seeds[0]:
            shown.update(samples)
    result.summary = summarise(result.per_seed)
    result.seconds = time.perf_counter() - started
    return result, shown


def _generate(generate, prompts, seeds, stage: str, tick) -> list[np.ndarray]:
    images = []
    for start in range(0, len(prompts), 4):
        images += generate(prompts[start : start + 4], seeds[start : start + 4])
        tick(stage, len(images), len(prompts))
    return images


def summarise(per_seed: list[dict]) -> dict:
    """Mean and spread over seeds of every number, and a plain-language verdict."""
    summary = {key: _mean_spread([run[key] for run in per_seed])
               for key in ("learned_share_features", "learned_share_loss", "protected_over_clean_distance", "protected_over_clean_loss")}  # fmt: skip
    for measure in ("feature_distance", "clean_data_loss"):
        summary[measure] = {arm: _mean_spread([run[measure][arm] for run in per_seed]) for arm in ARMS}
    summary["text"] = plain_summary(summary, len(per_seed))
    return summary


def _share_text(entry: dict) -> str:
    text = f"{100 * entry['mean']:.0f} %"
    if entry["std"] is not None:
        text += f" (± {100 * entry['std']:.0f} % over {entry['n']} seeds)"
    return text


def plain_summary(summary: dict, seeds: int) -> str:
    features, loss = summary["learned_share_features"], summary["learned_share_loss"]
    if features["mean"] is None and loss["mean"] is None:
        return ("The LoRA trained on your clean images did not move measurably towards them either, so this run cannot tell whether "
                "protection works: train longer (--lora-steps) or with a higher learning rate (--lr), then run again.")  # fmt: skip
    parts = []
    if features["mean"] is not None:
        parts.append(f"its samples moved {_share_text(features)} as far towards your images' colours and textures as the clean LoRA's did")
    if loss["mean"] is not None:
        parts.append(f"it explains your held-out clean images {_share_text(loss)} as much better than the base model as the clean LoRA does")
    shares = [entry["mean"] for entry in (features, loss) if entry["mean"] is not None]
    worst = max(shares)
    if worst <= 0.25:
        verdict = "The protected LoRA learned little of your images"
    elif worst <= 0.75:
        verdict = "The protected LoRA learned part of what the clean LoRA learned"
    else:
        verdict = "The protected LoRA learned about as much as the clean LoRA: protection did not hold in this test"
    note = "" if seeds > 1 else " One seed only: run with several (--seeds 0,1,2) to see the spread."
    return f"{verdict}: {'; '.join(parts)} (100 % = learned as much as from clean images, 0 % = nothing).{note}"

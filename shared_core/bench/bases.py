"""The photo fine-tune setting's public base models: built once, resumably, and committed.

A copier fine-tunes a *public* model. Here that model is an SD-shaped latent diffusion model (the
real diffusers classes, tiny widths) pretrained by `build_base` on photographs that are not the
owner's. A build takes tens of minutes of a 2-core CPU, so it checkpoints atomically (at most every
10 minutes by default) and a rerun resumes where it stopped; the finished model is a diffusers
folder (safetensors) with `manifest.json` (recipe, data, command, losses, sha256 of every file),
committed under `benchmarks/bases/`. `load_base` checks the hashes and the recipe before use, so
every efficacy run fine-tunes exactly the committed weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import SettingsError
from ..files import atomic_write_text, sha256_file
from ..surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline
from ..training import Checkpoint, train_autoencoder, train_text_to_image
from .artefact import provenance
from .datasets import BASE_SUBJECTS, photo_crops

MANIFEST = "manifest.json"
#: where the committed bases live, relative to the repository root (the benchmark's working folder)
DEFAULT_ROOT = Path("benchmarks/bases")


@dataclass(frozen=True)
class BaseRecipe:
    """Everything that decides a base model's weights: widths and seed, the crops it learns from, steps and rates.

    The autoencoder learns to reconstruct `autoencoder_images` crops; the UNet and text encoder then learn
    `base_images` captioned crops ("a photo of a rocket", ...) of the twelve public photographs and
    textures (`datasets.BASE_SUBJECTS`; never the owner's cat). `data_seed` shifts which crops are drawn.
    """

    name: str
    config: TinyLatentConfig
    size: int = 64
    autoencoder_images: int = 600
    autoencoder_steps: int = 2000
    autoencoder_lr: float = 1e-3
    base_images: int = 600
    base_steps: int = 3000
    base_lr: float = 1e-3
    batch_size: int = 32
    data_seed: int = 0

    def data(self) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        """(autoencoder crops, base crops, base captions)."""
        autoencoder, _, _ = photo_crops(self.autoencoder_images, self.size, seed=41 + self.data_seed, subjects=BASE_SUBJECTS, min_share=0.25)
        images, captions, _ = photo_crops(self.base_images, self.size, seed=31 + self.data_seed, subjects=BASE_SUBJECTS, min_share=0.35)
        return autoencoder, images, captions

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as the manifest stores them


#: the attacker's surrogate and the victim's base (the owner crafts against the public model the copier fine-tunes)
PHOTO_BASE = BaseRecipe("photo-base", TinyLatentConfig(resolution=64, vae_channels=(16, 32, 32, 32), unet_channels=(64, 128), text_width=64, seed=0))
#: built differently (own autoencoder and crops, wider UNet, other seed): protection crafted on one, the victim fine-tunes the other
PHOTO_TRANSFER = BaseRecipe("photo-transfer", TinyLatentConfig(resolution=64, vae_channels=(16, 32, 32, 32), unet_channels=(96, 192), text_width=64, seed=7),
                            data_seed=1)  # fmt: skip
RECIPES = {recipe.name: recipe for recipe in (PHOTO_BASE, PHOTO_TRANSFER)}


def _reconstruction_psnr(vae, images: list[np.ndarray]) -> float:
    from ..metrics import psnr
    from ..training import images_to_tensor

    with torch.no_grad():
        decoded = vae.decode(vae.encode(images_to_tensor(images)).latent_dist.mean).sample
    decoded = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return float(np.mean([psnr(a, b) for a, b in zip(images, decoded)]))


def build_base(recipe: BaseRecipe, root: str | Path = DEFAULT_ROOT, *, command: str = "", checkpoint_every_s: float = 600.0, progress=None) -> Path:
    """Build `recipe` into ROOT/NAME (a diffusers folder with its manifest) unless it is there already.

    Work in progress lives in ROOT/.NAME.partial/ (one atomic checkpoint per stage); a stopped build
    resumes from it, and it is removed once the finished folder has been moved into place."""
    root = Path(root)
    folder = root / recipe.name
    if (folder / MANIFEST).exists():
        return folder
    work = root / f".{recipe.name}.partial"
    work.mkdir(parents=True, exist_ok=True)
    autoencoder_images, images, captions = recipe.data()
    pipeline = tiny_sd_pipeline(recipe.config)
    seed = recipe.config.seed
    say = progress or (lambda stage, done, total: None)
    started = time.perf_counter()
    autoencoder_losses = train_autoencoder(pipeline.vae, autoencoder_images, steps=recipe.autoencoder_steps, batch_size=recipe.batch_size,
                                           lr=recipe.autoencoder_lr, seed=seed, checkpoint=Checkpoint(work / "autoencoder.pt", checkpoint_every_s),
                                           progress=lambda done, total: say("autoencoder", done, total))  # fmt: skip
    base_losses = train_text_to_image(pipeline, images, captions, steps=recipe.base_steps, batch_size=recipe.batch_size, lr=recipe.base_lr,
                                      train_text_encoder=True, seed=seed, checkpoint=Checkpoint(work / "base.pt", checkpoint_every_s),
                                      progress=lambda done, total: say("base", done, total))  # fmt: skip
    staging = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.", dir=root))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        manifest = {
            **provenance(command, "cpu"),
            "name": recipe.name,
            "recipe": recipe.to_dict(),
            "data": "scikit-image photographs and textures (shared_core/bench/datasets.py BASE_SUBJECTS), random square crops resized "
                    f"to {recipe.size} px: {recipe.autoencoder_images} for the autoencoder (seed {41 + recipe.data_seed}), {recipe.base_images} "
                    f"captioned 'a photo of ...' for the UNet and text encoder (seed {31 + recipe.data_seed})",  # fmt: skip
            "steps": {"autoencoder": recipe.autoencoder_steps, "base": recipe.base_steps},
            "final_losses": {"autoencoder": float(np.mean(autoencoder_losses[-50:])), "base": float(np.mean(base_losses[-50:]))},
            "autoencoder_reconstruction_psnr": _reconstruction_psnr(pipeline.vae, images[:64]),
            "seconds_last_run": round(time.perf_counter() - started, 1),
            "files": {str(p.relative_to(staging)): sha256_file(p) for p in files},
        }
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return folder


def load_base(recipe: BaseRecipe, root: str | Path = DEFAULT_ROOT):
    """The committed base `recipe` as a StableDiffusionPipeline, after checking every file's sha256 and the recipe."""
    from diffusers import StableDiffusionPipeline

    folder = Path(root) / recipe.name
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise SettingsError(f"{folder}: no base model here; build it with `unlearnable bench bases --out {root}` (resumable)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("recipe") != recipe.to_dict():
        raise SettingsError(f"{folder}: built from another recipe than {recipe.name!r} now has; move it away and rebuild it")
    for relative, expected in manifest["files"].items():
        path = folder / relative
        if not path.is_file() or sha256_file(path) != expected:
            raise SettingsError(f"{path}: missing or changed since the base was built (sha256 differs from {MANIFEST})")
    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def base_pipeline(recipe: BaseRecipe, root: str | Path = DEFAULT_ROOT, **build):
    """The base, built first (resumably) if ROOT has none yet."""
    build_base(recipe, root, **build)
    return load_base(recipe, root)


def main(args) -> int:
    """`unlearnable bench bases`: build every recipe (or `--only` one) into --out, resuming a stopped build."""
    from tqdm import tqdm

    root = Path(args.out or DEFAULT_ROOT)
    if args.only and args.only not in RECIPES:
        raise SettingsError(f"unknown base {args.only!r}; choose from {', '.join(RECIPES)}")
    command = f"unlearnable bench bases --out {root}" + (f" --only {args.only}" if args.only else "")
    for recipe in [RECIPES[args.only]] if args.only else RECIPES.values():
        bars: dict[str, tqdm] = {}

        def show(stage: str, done: int, total: int) -> None:
            bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=f"{recipe.name} {stage}", unit="step", initial=done - 1))
            bar.update(done - bar.n)

        folder = build_base(recipe, root, command=command, progress=show)
        for bar in bars.values():
            bar.close()
        manifest = json.loads((folder / MANIFEST).read_text())
        print(f"{folder}: final losses {manifest['final_losses']}, autoencoder PSNR {manifest['autoencoder_reconstruction_psnr']:.1f} dB")
    return 0

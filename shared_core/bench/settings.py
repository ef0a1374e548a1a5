"""The efficacy benchmark's settings: per setting (scratch and fine-tune, on digits or photos), the owner's
images, the surrogate protection is crafted on, the victim that trains on the result and how it is scored;
and how a condition prepares the owner's images, at what cost."""

from __future__ import annotations

import copy
import functools
import io
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..errors import SettingsError
from ..protect import ProtectSettings, protect_arrays
from ..surrogates.diffusers_backend import LatentDiffusersSurrogate, PixelDiffusersSurrogate
from ..surrogates.tiny import TinyLatentConfig, tiny_pixel_ddpm, tiny_sd_pipeline
from ..training import heldout_denoising_loss, train_autoencoder, train_pixel_ddpm, train_text_to_image
from .bases import base_pipeline
from .datasets import BASE_SUBJECTS, DIGIT_WORDS, OWNER_SUBJECT, digits, photo_crops
from .plans import COUNTERMEASURES, Condition, Plan
from .quality import QualityJudge


# -- measuring the protection's cost ----------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 5 ms (Linux; else NaN)."""

    def __enter__(self):
        self.available = os.path.exists("/proc/self/statm")
        self.start = self.peak = _rss_bytes() if self.available else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while self.available and not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20 if self.available else float("nan")


# -- preparing the owner's images -------------------------------------------------------------------


def uniform_noise(images: list[np.ndarray], budget: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    bound = int(np.floor(budget))
    return [np.clip(image.astype(np.int16) + rng.integers(-bound, bound + 1, image.shape), 0, 255).astype(np.uint8) for image in images]


def countermeasure(images: list[np.ndarray], name: str) -> list[np.ndarray]:
    """What a victim can do to the images before training: JPEG q75, 0.5x down-up scaling, Gaussian blur."""
    out = []
    for image in images:
        pil = Image.fromarray(image)
        if name == "jpeg75":
            buffer = io.BytesIO()
            pil.save(buffer, "JPEG", quality=75)
            pil = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        elif name == "downscale":
            w, h = pil.size
            pil = pil.resize((max(1, w // 2), max(1, h // 2)), Image.BICUBIC).resize((w, h), Image.BICUBIC)
        elif name == "blur":
            pil = pil.filter(ImageFilter.GaussianBlur(radius=0.5 * max(pil.size) / 16))  # 1 px at 32 px, 0.5 px at 16 px
        else:
            raise ValueError(f"countermeasure {name!r} needs a model (a fine-tune setting's `countermeasure`) or is unknown; choose from {COUNTERMEASURES}")
        out.append(np.asarray(pil))
    return out


def prepare(condition: Condition, images: list[np.ndarray], surrogate, *, steps: int, seed: int, prompt: str = "") -> tuple[list[np.ndarray], dict]:
    """The owner's images under `condition` (before any countermeasure), and what it cost."""
    if condition.method == "clean":
        return list(images), {"seconds_per_image": 0.0, "peak_extra_mib": 0.0}
    start = time.perf_counter()
    with PeakMemory() as memory:
        if condition.method == "noise":
            prepared = uniform_noise(images, condition.budget, seed)
        else:
            settings = ProtectSettings(method=condition.method, budget=condition.budget, steps=steps, prompt=prompt,
                                       timesteps=condition.timesteps, method_options=dict(condition.options), robust=condition.robust, batch_size=64, seed=seed)  # fmt: skip
            shard = condition.shard or len(images)
            prepared = [out for start in range(0, len(images), shard) for out in protect_arrays(surrogate, images[start : start + shard], settings)]
    return prepared, {"seconds_per_image": (time.perf_counter() - start) / len(images), "peak_extra_mib": memory.extra_mib}


# -- the three settings --------------------------------------------------------------------------------


def _ddim_samples(unet, scheduler, n: int, steps: int, size: int, seed: int) -> list[np.ndarray]:
    from diffusers import DDIMScheduler

    sampler = DDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(n, 3, size, size, generator=generator)
    with torch.no_grad():
        for t in sampler.timesteps:
            x = sampler.step(unet(x, t).sample, t, x).prev_sample
    return list(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


@dataclass
class ScratchSetting:
    """A pixel DDPM trained from scratch on the owner's digits (all ten classes)."""

    plan: Plan
    owner: list[np.ndarray] = field(init=False)
    judge: QualityJudge = field(init=False)

    def __post_init__(self):
        self.size, self.channels, self.victim_steps, self.label = self.plan.scratch_size, self.plan.scratch_channels, self.plan.scratch_victim_steps, None
        self.load_data()
        self.surrogates = {}

    def load_data(self) -> None:
        images, labels = digits(self.plan.scratch_size)
        n = self.plan.scratch_images
        self.owner = images[:n]
        self.heldout = images[n : n + 16]  # the owner's other digits, never trained on: the clean-data loss
        # the judge never sees the owner's images: it learns digits from the rest of the set
        self.judge = QualityJudge.fit(images[n:], labels[n:], self.owner, size=max(16, self.plan.scratch_size))

    def surrogate(self, seed: int, transfer: bool):
        """The owner's own small DDPM trained on the clean images (a wider one, another seed, for transfer)."""
        key = (seed, transfer)
        if key not in self.surrogates:
            channels = tuple(2 * c for c in self.channels) if transfer else self.channels
            unet, scheduler = tiny_pixel_ddpm(self.size, channels, seed=100 + seed + (50 if transfer else 0))
            train_pixel_ddpm(unet, scheduler, self.owner, steps=self.plan.scratch_surrogate_steps, batch_size=32, seed=100 + seed)
            self.surrogates[key] = PixelDiffusersSurrogate(unet, scheduler, "scratch-surrogate", torch.device("cpu"))
        return self.surrogates[key]

    def craft(self, condition: Condition, seed: int):
        surrogate = None if condition.method in ("clean", "noise") else self.surrogate(seed, condition.transfer)
        return prepare(condition, self.owner, surrogate, steps=condition.steps or self.plan.protect_steps, seed=seed)

    def countermeasure(self, images: list[np.ndarray], name: str) -> list[np.ndarray]:
        return countermeasure(images, name)

    def victim(self, images: list[np.ndarray], seed: int, mode: str = "scratch") -> tuple[dict, list[np.ndarray]]:
        plan = self.plan
        unet, scheduler = tiny_pixel_ddpm(self.size, self.channels, seed=seed)
        losses = train_pixel_ddpm(unet, scheduler, images, steps=self.victim_steps, batch_size=32, seed=seed)
        unet.eval()
        samples = _ddim_samples(unet, scheduler, plan.samples, plan.sample_steps, self.size, seed)
        heldout = heldout_denoising_loss(PixelDiffusersSurrogate(unet, scheduler, "victim", torch.device("cpu")), self.heldout)
        return {**self.judge.score(samples, label=self.label), "final_loss": float(np.mean(losses[-20:])), "heldout_loss": heldout}, samples


class PhotoScratchSetting(ScratchSetting):
    """A pixel DDPM trained from scratch on 32 px crops of the owner's photograph (the cat)."""

    def __post_init__(self):
        plan = self.plan
        self.size, self.channels, self.victim_steps = plan.photo_scratch_size, plan.photo_scratch_channels, plan.photo_victim_steps
        self.load_data()
        self.surrogates = {}

    def load_data(self) -> None:
        plan = self.plan
        self.owner, self.heldout = _photo_owner(plan, plan.photo_scratch_size, plan.scratch_images)
        self.judge, self.label = _photo_judge(plan, plan.photo_scratch_size, self.owner), len(BASE_SUBJECTS)


@dataclass
class FinetuneSetting:
    """A tiny latent diffusion model pretrained on digits 0-6, fine-tuned on the owner's sevens."""

    plan: Plan
    target_label: int = 7

    def __post_init__(self):
        plan, size = self.plan, self.plan.finetune_size
        self.size, self.victim_steps = size, plan.finetune_victim_steps
        images, labels = digits(size)
        half = len(images) // 2
        base_index = [i for i in range(half) if labels[i] < self.target_label]
        sevens = [i for i in range(half, len(images)) if labels[i] == self.target_label]
        self.owner = [images[i] for i in sevens[: plan.finetune_target_images]]
        self.heldout = [images[i] for i in sevens[plan.finetune_target_images :][:16]]  # never trained on: the clean-data loss
        self.caption = f"a handwritten digit {DIGIT_WORDS[self.target_label]}"
        # the judge learns all ten digits from the first half; the owner's sevens come from the second
        self.judge = QualityJudge.fit(images[:half], labels[:half], self.owner, size=16)
        base_images = [images[i] for i in base_index]
        base_captions = [f"a handwritten digit {DIGIT_WORDS[labels[i]]}" for i in base_index]
        self.bases = {}
        self._base_data = (images[:half], base_images, base_captions)
        self.base()  # built now, so victims' timings do not include it

    def base(self, transfer: bool = False):
        """The public base model (a second one, wider and differently seeded, serves as the transfer surrogate)."""
        if transfer not in self.bases:
            autoencoder_images, base_images, base_captions = self._base_data
            config = TinyLatentConfig(resolution=self.plan.finetune_size, vae_channels=(32, 64), unet_channels=(48, 96) if transfer else (32, 64),
                                      text_width=48 if transfer else 32, seed=7 if transfer else 0)  # fmt: skip
            pipeline = tiny_sd_pipeline(config)
            train_autoencoder(pipeline.vae, autoencoder_images, steps=300, batch_size=64, lr=2e-3, seed=config.seed)
            train_text_to_image(pipeline, base_images, base_captions, steps=self.plan.finetune_base_steps, batch_size=32, lr=1e-3,
                                train_text_encoder=True, seed=config.seed)  # fmt: skip
            self.bases[transfer] = pipeline
        return self.bases[transfer]

    def craft(self, condition: Condition, seed: int):
        surrogate = None
        if condition.method not in ("clean", "noise"):
            surrogate = LatentDiffusersSurrogate(copy.deepcopy(self.base(condition.transfer)), "finetune-base", torch.device("cpu"))
        return prepare(condition, self.owner, surrogate, steps=condition.steps or self.plan.protect_steps, seed=seed, prompt=self.caption)

    def train_victim(self, images: list[np.ndarray], seed: int, mode: str = "lora"):
        """A copy of the base fine-tuned on `images` (peft LoRA or every UNet weight), and its training losses."""
        plan = self.plan
        pipeline = copy.deepcopy(self.base())
        lora = mode == "lora"
        losses = train_text_to_image(pipeline, images, [self.caption] * len(images), steps=self.victim_steps, batch_size=16,
                                     lr=plan.lora_lr if lora else plan.full_lr, lora_rank=plan.lora_rank if lora else None, train_text_encoder=False,
                                     seed=seed)  # fmt: skip
        return pipeline, losses

    def heldout_loss(self, pipeline) -> float:
        return heldout_denoising_loss(LatentDiffusersSurrogate(pipeline, "victim", torch.device("cpu")), self.heldout, self.caption)

    def victim(self, images: list[np.ndarray], seed: int, mode: str = "lora") -> tuple[dict, list[np.ndarray]]:
        pipeline, losses = self.train_victim(images, seed, mode)
        heldout = self.heldout_loss(pipeline)
        samples = self._samples(pipeline, seed)
        return {**self.judge.score(samples, label=self.target_label), "final_loss": float(np.mean(losses[-20:])), "heldout_loss": heldout}, samples

    def base_scores(self, seed: int) -> tuple[dict, list[np.ndarray]]:
        """The untouched base model scored as a victim is: its held-out clean loss and its samples for the owner's caption."""
        pipeline = copy.deepcopy(self.base())
        samples = self._samples(pipeline, seed)
        return {**self.judge.score(samples, label=self.target_label), "heldout_loss": self.heldout_loss(pipeline)}, samples

    def _samples(self, pipeline, seed: int) -> list[np.ndarray]:
        from diffusers import DDIMScheduler

        from ..trace.verify import diffusers_generator

        pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        generate = diffusers_generator(pipeline, steps=self.plan.sample_steps, guidance_scale=3.0, height=self.size, width=self.size)
        samples = []
        for start in range(0, self.plan.samples, 64):
            count = min(64, self.plan.samples - start)
            samples += generate([self.caption] * count, [10_000 * (seed + 1) + start + i for i in range(count)])
        return samples

    def countermeasure(self, images: list[np.ndarray], name: str) -> list[np.ndarray]:
        """The image countermeasures, and `purify`: what a copier can do with the public model itself, img2img at low
        strength (noise the image to t = 0.15 T with the base's own autoencoder, then denoise it back with DDIM)."""
        if name != "purify":
            return countermeasure(images, name)
        from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

        base = copy.deepcopy(self.base())
        img2img = StableDiffusionImg2ImgPipeline(**{**base.components, "scheduler": DDIMScheduler.from_config(base.scheduler.config)})
        img2img.set_progress_bar_config(disable=True)
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        out = img2img(prompt=[""] * len(images), image=pixels, strength=0.15, num_inference_steps=40, guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
        return list((np.clip(out, 0, 1) * 255).round().astype(np.uint8))


def _photo_owner(plan: Plan, size: int, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The owner's crops of their photograph: trained on, held out."""
    crops, _, _ = photo_crops(count + plan.photo_heldout_images, size, seed=11, subjects=OWNER_SUBJECT, min_share=0.35)
    return crops[:count], crops[count:]


def _photo_judge(plan: Plan, size: int, owner: list[np.ndarray]) -> QualityJudge:
    """A judge that learned every subject, the owner's cat included, from other crops than the owner's (its label: len(BASE_SUBJECTS))."""
    subjects = {**BASE_SUBJECTS, **OWNER_SUBJECT}
    judge_images, _, judge_labels = photo_crops(plan.photo_judge_images, size, seed=21, subjects=subjects, min_share=0.35)
    return QualityJudge.fit(judge_images, judge_labels, owner, size=32)


class PhotoFinetuneSetting(FinetuneSetting):
    """An SD-shaped latent diffusion model (8x-downsampling KL autoencoder with 4 latent channels, text-conditioned UNet)
    pretrained on other photos, fine-tuned on the owner's crops of their cat as a new concept, "a photo of sks cat"."""

    def __post_init__(self):
        plan = self.plan
        self.size, self.victim_steps = plan.photo_size, plan.photo_victim_steps
        self.owner, self.heldout = _photo_owner(plan, plan.photo_size, plan.photo_owner_images)
        self.target_label = len(BASE_SUBJECTS)
        self.caption = next(iter(OWNER_SUBJECT.values()))
        self.bases = {}
        self.base()

    @functools.cached_property
    def judge(self) -> QualityJudge:
        """Built on first use: re-running one victim's training and held-out loss needs no judge."""
        return _photo_judge(self.plan, self.plan.photo_size, self.owner)

    def base(self, transfer: bool = False):
        """The committed public base model (built first, resumably, where the bases folder has none); the second,
        differently built one (own autoencoder and crops, wider UNet, other seed) is the transfer surrogate."""
        if transfer not in self.bases:
            recipe = self.plan.photo_bases[int(transfer)]
            if recipe.size != self.plan.photo_size:
                raise SettingsError(f"base {recipe.name!r} is built at {recipe.size} px, the plan's photos are {self.plan.photo_size} px")
            self.bases[transfer] = base_pipeline(recipe, self.plan.bases_root, command=f"unlearnable bench bases --out {self.plan.bases_root}")
        return self.bases[transfer]


#: `Plan.setting_names` -> class
SETTING_CLASSES = {cls.__name__: cls for cls in (ScratchSetting, PhotoScratchSetting, FinetuneSetting, PhotoFinetuneSetting)}

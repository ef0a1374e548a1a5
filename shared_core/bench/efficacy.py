"""`unlearnable bench efficacy`: does protection stop learning, at what cost (tracing: `bench tracing`).

A victim really trains on the protected (or marked) images and we measure what it learned. Real
Stable Diffusion cannot run on a 2-core CPU, so the papers' settings are reproduced at small scale
with real images and the same diffusers classes (see benchmarks/README.md):

* scratch: a pixel DDPM (`UNet2DModel`) trained from scratch on the owner's digits, protected or
  clean (the UDP paper's DDPM setting);
* finetune: a small latent diffusion model (`StableDiffusionPipeline` classes) pretrained on digits
  0-6 is fine-tuned with peft LoRA, or fully, on the owner's digit 7 (a class it never saw);
* photo settings (the full plan; the digits settings above are the `--quick` smoke plan):
  photo-scratch, a pixel DDPM trained from scratch on 32 px crops of the owner's photograph; and
  photo-finetune (the mimicry case), the committed public base model of `bases.py` (SD-shaped: an
  AutoencoderKL with 8x downsampling and 4 latent channels, a text-conditioned UNet, trained on 12
  other photographs and textures) fine-tuned with a peft LoRA, or fully, on the owner's 32 crops of
  a cat captioned "a photo of sks cat", a concept it never saw. Victims are also scored by their
  denoising loss on held-out *clean* crops of the owner (what they really learned about them), and
  the base model itself is scored the same way, so each victim's *learned share* can be reported:
  (base - protected) / (base - clean) of that loss.

Every number is repeated over `plan.seeds` (protection noise, victim initialisation and data order
all follow the seed) and reported as mean and standard deviation. Runs are appended to runs.jsonl
in the output folder as they finish, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..errors import SettingsError
from ..files import atomic_write_bytes, atomic_write_text
from ..protect import ProtectSettings, protect_arrays
from ..surrogates.diffusers_backend import LatentDiffusersSurrogate, PixelDiffusersSurrogate
from ..surrogates.tiny import TinyLatentConfig, tiny_pixel_ddpm, tiny_sd_pipeline
from ..training import heldout_denoising_loss, train_autoencoder, train_pixel_ddpm, train_text_to_image
from .bases import DEFAULT_ROOT as DEFAULT_BASES
from .bases import PHOTO_BASE, PHOTO_TRANSFER, BaseRecipe, base_pipeline
from .datasets import BASE_SUBJECTS, DIGIT_WORDS, OWNER_SUBJECT, digits, photo_crops
from .quality import QualityJudge

COUNTERMEASURES = ("jpeg75", "downscale", "blur", "purify")
SETTINGS = ("finetune", "scratch")  # longest first


# -- what is run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One way of preparing the owner's images before the victim trains on them."""

    method: str  # "clean", "noise" (uniform random in the budget) or an objective name
    budget: float = 8.0
    options: tuple[tuple[str, object], ...] = ()  # method options, e.g. (("sign", "max"),)
    timesteps: str | None = None
    countermeasure: str | None = None  # applied by the victim before training
    transfer: bool = False  # crafted on a surrogate that differs from the one the victim starts from
    steps: int | None = None  # PGD steps; None = the plan's protect_steps
    shard: int | None = None  # crafted in shards of this many images, as `protect --ray` does: an inner state sees only its shard

    @property
    def label(self) -> str:
        name = self.method
        if self.options:
            name += "(" + ",".join(f"{k}={v}" for k, v in self.options) + ")"
        if self.timesteps:
            name += f"[{self.timesteps}]"
        if self.method not in ("clean", "base"):
            name += f" b{self.budget:g}"
        if self.steps:
            name += f" s{self.steps}"
        if self.shard:
            name += f" shard{self.shard}"
        if self.countermeasure:
            name += f" +{self.countermeasure}"
        if self.transfer:
            name += " transfer"
        return name

    @property
    def crafted(self) -> Condition:
        """The condition whose protected images this one reuses (countermeasures apply afterwards)."""
        return replace(self, countermeasure=None)


def _grid(methods: list[Condition], *, sweep: list[Condition] = (), budgets: tuple[float, ...] = (), countered: list[Condition] = (),
          transferred: list[Condition] = (), stepped: list[Condition] = (), steps: tuple[int, ...] = (),
          countermeasures: tuple[str, ...] = ("jpeg75", "downscale", "blur")) -> list[Condition]:  # fmt: skip
    """The methods at their budget, `sweep` at the other budgets, `countered` under each countermeasure,
    `transferred` crafted on the other surrogate, `stepped` with other PGD step counts."""
    conditions = list(methods)
    conditions += [replace(c, budget=b) for c in sweep for b in budgets if b != c.budget]
    conditions += [replace(c, steps=n) for c in stepped for n in steps]
    conditions += [replace(c, countermeasure=m) for c in countered for m in countermeasures]
    conditions += [replace(c, transfer=True) for c in transferred]
    return list(dict.fromkeys(conditions))


CLEAN, NOISE, BASE = Condition("clean"), Condition("noise"), Condition("base")
ADVDM, ASPL, ENCODER, MIST = Condition("advdm"), Condition("aspl"), Condition("encoder"), Condition("mist")
UDP_MIN, UDP_MAX = Condition("udp", options=(("sign", "min"),)), Condition("udp", options=(("sign", "max"),))
EUDP_SCHEDULES = [Condition("eudp", options=(("sign", "max"),), timesteps=schedule) for schedule in ("survival", "survival-squared", "truncated")]
EUDP = EUDP_SCHEDULES[0]  # the shipped default on pixel-space models, and on every model before the mimicry setting ran
EUDP_MIN = replace(EUDP, options=(("sign", "min"),))
#: dataset-level crafting (one perturbation objective over the whole set) against per-batch crafting, for UDP and EUDP at both signs
SCOPED = [replace(c, options=(*c.options, ("scope", scope))) for c in (UDP_MIN, UDP_MAX, EUDP_MIN, EUDP) for scope in ("dataset", "batch")]


@dataclass(frozen=True)
class Plan:
    """Sizes of everything; `QUICK`, `HEADLINE` and `FULL` below are the published plans.

    `finetune_conditions` run with a full fine-tune and `lora_conditions` with a peft LoRA, on the
    same protected sets (crafted once per condition and seed, and kept in the output folder's
    `crafted/`). `finetune_order`, where given, is the order the fine-tune runs go in: (mode,
    condition) blocks, so that a run stopped part-way has answered the first questions first.
    """

    name: str
    seeds: tuple[int, ...]
    protect_steps: int
    scratch_conditions: tuple[Condition, ...]
    finetune_conditions: tuple[Condition, ...]
    lora_conditions: tuple[Condition, ...]
    scratch_images: int = 128
    scratch_size: int = 8
    scratch_channels: tuple[int, ...] = (32, 64)
    scratch_surrogate_steps: int = 300
    scratch_victim_steps: int = 400
    finetune_size: int = 16
    finetune_base_steps: int = 1200
    finetune_target_images: int = 48
    finetune_victim_steps: int = 200
    lora_rank: int = 8
    lora_lr: float = 3e-3
    full_lr: float = 2e-4  # every UNet weight; the photo plan's is lower (see FULL)
    samples: int = 80
    sample_steps: int = 15
    photo: bool = False  # the photo settings instead of the digits ones
    photo_scratch_size: int = 32
    photo_scratch_channels: tuple[int, ...] = (32, 64, 64)
    photo_size: int = 64
    photo_owner_images: int = 32
    photo_heldout_images: int = 16
    photo_victim_steps: int = 400
    photo_judge_images: int = 1300
    #: the committed base models: the public model, and the differently built one for transfer
    photo_bases: tuple[BaseRecipe, BaseRecipe] = (PHOTO_BASE, PHOTO_TRANSFER)
    bases_root: str = str(DEFAULT_BASES)
    finetune_order: tuple[tuple[str, Condition], ...] = ()

    @property
    def setting_classes(self) -> dict[str, type]:
        """`--settings` name -> the class that builds it under this plan."""
        if self.photo:
            return {"scratch": PhotoScratchSetting, "finetune": PhotoFinetuneSetting}
        return {"scratch": ScratchSetting, "finetune": FinetuneSetting}

    @property
    def protection_runs(self) -> dict[str, list[tuple[str, Condition]]]:
        """Per protection setting, its victims' (mode, condition) in the order they run."""
        classes = self.setting_classes
        finetune = list(self.finetune_order) or [("full", c) for c in self.finetune_conditions] + [("lora", c) for c in self.lora_conditions]
        return {classes["scratch"].__name__: [("scratch", c) for c in self.scratch_conditions], classes["finetune"].__name__: finetune}


#: the photo fine-tune (mimicry) plan's blocks, in the order they run: (a) the answer first, LoRA victims of clean, noise and
#: the default; (b) every other method on LoRA; (c) full fine-tuning; (d) the method search on LoRA (SEARCH below); (e) budgets
#: and countermeasures for the default, noise and the strongest peer of (b) (PEER below); (f) EUDP crafted in Ray-sized shards
#: (SHARDED); (g) transfer, crafted on the other base model
MIMICRY_METHODS = [ADVDM, ENCODER, MIST, ASPL, UDP_MIN, UDP_MAX]
#: block (d): no method of (b) came near the 30 % goal at the plan's 40 PGD steps, so the search tries the product's own
#: 100 steps (the default's), a surrogate state trained 4x longer between PGD rounds (EUDP), and for the strongest peer
#: (the encoder attack, whose latents are what a LoRA copier caches) more steps and Mist's high-contrast target; and the
#: field's methods new to the engine: SDS(-) (which its authors found strongest) and FSGM (one step)
SDS_MIN, FSGM = Condition("sds"), Condition("fsgm")
SEARCH = [replace(EUDP, steps=100), replace(EUDP, options=(*EUDP.options, ("inner_steps", 20)), steps=100), replace(ASPL, steps=100),
          replace(ENCODER, steps=100), replace(ENCODER, steps=200), Condition("encoder", options=(("target", "pattern"),), steps=100),
          SDS_MIN, replace(SDS_MIN, steps=100), FSGM]  # fmt: skip
#: block (b), LoRA, 3 seeds: PhotoGuard's encoder attack had the lowest learned share of the peers, 90 % [88, 91]
#: (ASPL and UDP sign=max 91 %, AdvDM 92 %, Mist 94 %; benchmarks/results-photo), so budgets, transfer and countermeasures test it;
#: block (c) confirmed it (full fine-tune 91 % against EUDP's 97 %, lower on every seed), and method "auto" now runs it on latent models
PEER = ENCODER
#: what `ProtectSettings()` runs, per setting kind (protect.settings.AUTO_METHODS), as `meta.default_method` names it
DEFAULT_METHOD = {"latent models (fine-tune settings)": ENCODER.label, "pixel models (from-scratch settings)": EUDP.label}
PHOTO_COUNTERMEASURES = ("jpeg75", "downscale", "purify")
_MIMICRY_EXTRAS = _grid([], sweep=[NOISE, EUDP, PEER], budgets=(4.0, 16.0), countered=[CLEAN, NOISE, EUDP, PEER],
                        countermeasures=PHOTO_COUNTERMEASURES)  # fmt: skip
#: block (f), for `protect --ray --shard-size`: EUDP's inner state trained on shards of 8 and 4 of the 32 images instead of all of them
SHARDED = [replace(EUDP, shard=8), replace(EUDP, shard=4)]
MIMICRY_ORDER = (*[("lora", c) for c in (CLEAN, NOISE, EUDP)], *[("lora", c) for c in MIMICRY_METHODS],
                 *[("full", c) for c in (CLEAN, NOISE, EUDP, *MIMICRY_METHODS)], *[("lora", c) for c in SEARCH],
                 *[(mode, c) for c in _MIMICRY_EXTRAS for mode in ("lora", "full")], *[("lora", c) for c in SHARDED],
                 *[(mode, replace(c, transfer=True)) for c in (EUDP, PEER) for mode in ("lora", "full")])  # fmt: skip

FULL = Plan(
    name="full",
    photo=True,
    seeds=(0, 1, 2),
    protect_steps=40,
    # pixel models have no VAE encoder (encoder, mist do not apply); ASPL is a fine-tuning method
    scratch_conditions=tuple(_grid([CLEAN, NOISE, ADVDM, UDP_MIN, UDP_MAX, EUDP_MIN, *EUDP_SCHEDULES, *SCOPED],
                                   sweep=[NOISE, ADVDM, UDP_MAX, EUDP], budgets=(4.0, 16.0), countered=[CLEAN, EUDP], transferred=[EUDP])),  # fmt: skip
    finetune_conditions=tuple(dict.fromkeys(c for mode, c in MIMICRY_ORDER if mode == "full")),
    lora_conditions=tuple(dict.fromkeys(c for mode, c in MIMICRY_ORDER if mode == "lora")),
    finetune_order=MIMICRY_ORDER,
    # at 2e-4 the clean full fine-tune ended with a held-out loss above the untouched base's (0.342 vs 0.297: 200 epochs on 32 crops
    # overfit); 2e-5 learns as the clean LoRA does (0.195), as SD full fine-tunes use 1e-5 to 5e-6 (benchmarks/results-photo/full-lr-probe.json)
    full_lr=2e-5,
)

#: the photo settings with only what the headline needs: clean, uniform noise and the shipped default
#: (EUDP, 8/255) over three seeds, for every victim (from scratch, full fine-tune, LoRA). It fits a
#: 2-core CPU in hours where the full grid needs a day.
HEADLINE = replace(FULL, name="headline", scratch_conditions=(CLEAN, NOISE, EUDP), finetune_conditions=(CLEAN, NOISE, EUDP),
                   lora_conditions=(CLEAN, NOISE, EUDP), finetune_order=tuple((m, c) for m in ("lora", "full") for c in (CLEAN, NOISE, EUDP)))  # fmt: skip

#: the digits settings (8-16 px), a smoke test of every part in a few minutes
QUICK = Plan(
    name="quick",
    seeds=(0,),
    protect_steps=20,
    scratch_conditions=(CLEAN, NOISE, EUDP),
    finetune_conditions=(CLEAN, NOISE, EUDP, MIST),
    lora_conditions=(),
    scratch_images=64,
    scratch_surrogate_steps=100,
    scratch_victim_steps=200,
    finetune_base_steps=400,
    finetune_target_images=32,
    finetune_victim_steps=150,
    samples=64,
    sample_steps=10,
)

PLANS = {plan.name: plan for plan in (QUICK, HEADLINE, FULL)}


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
                                       timesteps=condition.timesteps, method_options=dict(condition.options), batch_size=64, seed=seed)  # fmt: skip
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


# -- the run ---------------------------------------------------------------------------------------------


class RunLog:
    """runs-<setting>.jsonl in the output folder: one line per finished run; finished runs are not repeated."""

    def __init__(self, out: Path, plan: Plan, setting: str):
        self.path = out / f"runs-{setting}.jsonl"
        self.plan = plan
        self.runs = {run["id"]: run for run in read_runs(self.path, plan)}

    def done(self, run_id: str) -> bool:
        return run_id in self.runs

    def add(self, run_id: str, run: dict) -> None:
        run = {"id": run_id, "plan": self.plan.name, **run}
        self.runs[run_id] = run
        with self.path.open("a") as file:  # one write of a whole line: workers of other seeds append to the same log
            file.write(json.dumps(run) + "\n")


def read_runs(path: Path, plan: Plan) -> list[dict]:
    if not path.exists():
        return []
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [run for run in runs if run.get("plan") == plan.name]


def save_grid(samples: list[np.ndarray], path: Path, columns: int = 10, count: int = 40) -> None:
    """The first `count` samples as one PNG, tiles 1 px apart, small tiles enlarged by a whole factor towards 64 px (lossless)."""
    tiles = samples[:count]
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        y, x = 1 + (i // columns) * (h + 1), 1 + (i % columns) * (w + 1)
        grid[y : y + h, x : x + w] = tile
    scale = max(1, 64 // h)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def read_grid(path: Path, tile: int, count: int, columns: int = 10) -> list[np.ndarray]:
    """The first `count` square tiles of `tile` px back from a grid `save_grid` wrote (exact: the grid is lossless)."""
    scale = max(1, 64 // tile)  # save_grid's enlargement
    grid = np.asarray(Image.open(path).convert("RGB"))[::scale, ::scale]
    rows = (grid.shape[0] - 1) // (tile + 1)
    if (grid.shape[1] - 1) // (tile + 1) != columns or count > rows * columns:
        raise ValueError(f"{path}: not a grid of {count} tiles of {tile} px in {columns} columns ({grid.shape[1]}x{grid.shape[0]} px)")
    spots = [(1 + (i // columns) * (tile + 1), 1 + (i % columns) * (tile + 1)) for i in range(count)]
    return [grid[y : y + tile, x : x + tile].copy() for y, x in spots]


def _visibility(before: list[np.ndarray], after: list[np.ndarray]) -> dict:
    from ..metrics import psnr, ssim

    return {"psnr": float(np.mean([psnr(a, b) for a, b in zip(before, after)])),
            "ssim": float(np.mean([ssim(a, b) for a, b in zip(before, after)]))}  # fmt: skip


class CraftedSets:
    """Each protected set crafted once per (condition, seed) and kept in OUT/crafted/ (with its cost), so that
    victims of another mode or a later run train on the very same images without crafting them again."""

    def __init__(self, out: Path, setting_name: str):
        self.folder = out / "crafted" / setting_name

    def get(self, setting, crafted: Condition, seed: int) -> tuple[list[np.ndarray], dict]:
        path = self.folder / f"{crafted.label.replace(' ', '_')}-seed{seed}.npz"
        if path.exists():
            with np.load(path) as stored:
                return list(stored["images"]), json.loads(str(stored["cost"]))
        images, cost = setting.craft(crafted, seed)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=np.stack(images), cost=json.dumps(cost))
        atomic_write_bytes(path, buffer.getvalue())
        return images, cost


class RunClaims:
    """Which of the workers sharing one setting trains which run: the first to create the run's claim file in `folder`
    takes it (an atomic O_EXCL create), so the workers go down the plan's order together and none waits on another's
    seeds. `folder` None: this process runs everything. Claims live for one `run` call; finished runs are in the log."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def take(self, run_id: str) -> bool:
        if self.folder is None:
            return True
        try:
            os.close(os.open(self.folder / (hashlib.sha256(run_id.encode()).hexdigest()[:32] + ".claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


def _protection_runs(setting_class, log: RunLog, plan: Plan, out: Path, progress, claims: RunClaims) -> None:
    """Every (mode, condition) of the setting in plan order, each over the seeds: the victim trains on the crafted set
    (after its countermeasure). Fine-tune settings first log the untouched base model as `base` rows, per mode and seed.

    The setting (its surrogates and base model) is built only when a run is missing, so rerunning a
    finished folder just rewrites the tables."""
    name, setting = setting_class.__name__, None
    crafted_sets = CraftedSets(out, name)
    order = plan.protection_runs[name]
    if hasattr(setting_class, "base_scores"):
        order = [(mode, BASE) for mode in dict.fromkeys(mode for mode, _ in order)] + order
    base_scores = {}
    for mode, condition in order:
        for seed in plan.seeds:
            run_id = protection_run_id(name, mode, condition, seed)
            if log.done(run_id) or not claims.take(run_id):
                continue
            setting = setting or setting_class(plan)
            started = time.perf_counter()
            if condition == BASE:
                if seed not in base_scores:
                    base_scores[seed] = setting.base_scores(seed)
                scores, samples = base_scores[seed]
                prepared, cost = setting.owner, {}
            else:
                prepared, cost = crafted_sets.get(setting, condition.crafted, seed)
                trained_on = setting.countermeasure(prepared, condition.countermeasure) if condition.countermeasure else prepared
                scores, samples = setting.victim(trained_on, seed, mode)
            if seed == plan.seeds[0]:
                grid = out / "samples" / f"{name}-{mode}-{condition.label.replace(' ', '_')}.png"
                grid.parent.mkdir(parents=True, exist_ok=True)
                save_grid(samples, grid)
            log.add(run_id, {"setting": name, "mode": mode, "condition": asdict(condition), "label": condition.label, "seed": seed,
                             **scores, **cost, **_visibility(setting.owner, prepared), "victim_seconds": time.perf_counter() - started})  # fmt: skip
            progress(run_id, log.runs[run_id])


def planned_run_ids(plan: Plan) -> list[str]:
    """The id of every run the plan asks for, as the run logs name them (fine-tune settings' `base` rows included)."""
    ids = []
    for name, order in plan.protection_runs.items():
        if name in ("FinetuneSetting", "PhotoFinetuneSetting"):
            order = [(mode, BASE) for mode in dict.fromkeys(mode for mode, _ in order)] + order
        ids += [protection_run_id(name, mode, c, seed) for mode, c in order for seed in plan.seeds]
    return ids


def protection_run_id(setting_name: str, mode: str, condition: Condition, seed: int) -> str:
    return f"{setting_name}/{mode}/{condition.label}/seed{seed}"


def run_setting(plan: Plan, out: Path, setting: str, threads: int, progress=None, claims: Path | None = None) -> None:
    """One setting's runs (resuming from its log): all of them, or with `claims` those this worker claims first."""
    torch.set_num_threads(threads)
    log = RunLog(out, plan, setting)
    progress = progress or (lambda run_id, run: None)
    if setting in ("scratch", "finetune"):
        _protection_runs(plan.setting_classes[setting], log, plan, out, progress, RunClaims(claims))
    else:
        raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")


def worker_tasks(settings: tuple[str, ...], jobs: int) -> list[str]:
    """The setting of each worker: one each while there are as many settings as workers, else each setting shared by the
    workers it gets, which claim its runs one by one (`RunClaims`; runs are independent, their log lines appended whole)."""
    if len(settings) >= jobs:
        return list(settings)
    return [setting for setting in settings for _ in range(max(1, jobs // len(settings)))]


def run(plan: Plan, out: Path, settings: tuple[str, ...] = SETTINGS, jobs: int = 1, progress=None, command: str = "", train: bool = True) -> dict:
    """Run the plan, writing runs-*.jsonl, results.json, RESULTS.md and plots to `out`.

    With jobs > 1 the settings (or one setting's seeds) run in parallel processes (spawned, the cores
    shared out): these models are so small that Python overhead, not arithmetic, bounds a single process. Stopped
    part-way (Ctrl-C), or with `train=False`, it writes the tables of the runs logged so far, marked
    partial; the same command resumes.
    """
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    settings = tuple(sorted(settings, key=SETTINGS.index))  # longest first, so parallel workers finish together
    try:
        if train and jobs > 1 and len(tasks := worker_tasks(settings, jobs)) > 1:
            import multiprocessing

            claims = out / ".claims"
            shutil.rmtree(claims, ignore_errors=True)
            claims.mkdir()
            context = multiprocessing.get_context("spawn")
            try:
                with context.Pool(len(tasks)) as pool:
                    pool.starmap(run_setting, [(plan, out, setting, max(1, cores // len(tasks)), progress, claims) for setting in tasks], chunksize=1)
            finally:
                shutil.rmtree(claims, ignore_errors=True)
        elif train:
            for setting in settings:
                run_setting(plan, out, setting, cores, progress)
    except KeyboardInterrupt:
        write_tables(plan, out, command, jobs)
        raise
    return write_tables(plan, out, command, jobs)


def write_tables(plan: Plan, out: Path, command: str, jobs: int) -> dict:
    """RESULTS.md, results.json, meta.json and the plots from the runs logged so far ("partial" says how many of the plan's)."""
    from .report import write_results

    planned = planned_run_ids(plan)  # runs of conditions since dropped from the plan stay in the logs, not in the tables
    runs = [run for setting in SETTINGS for run in read_runs(out / f"runs-{setting}.jsonl", plan) if run["id"] in set(planned)]
    meta = {"command": command, "plan": asdict(plan), "torch": torch.__version__, "cpu_cores": os.cpu_count() or 1, "jobs": jobs,
            "default_method": DEFAULT_METHOD, "partial": f"{len(runs)} of {len(planned)} planned runs" if len(runs) < len(planned) else None}  # fmt: skip
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1, default=str))
    return write_results(runs, out, meta)


class PrintProgress:
    """Prints each finished run with its headline numbers (picklable, for worker processes)."""

    def __init__(self):
        self.begun = time.time()

    def __call__(self, run_id: str, run: dict) -> None:
        keys = ("fid", "precision", "recall", "accuracy", "psnr", "seconds_per_image")
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in run.items() if k in keys}
        print(f"[{time.time() - self.begun:7.0f}s] {run_id}: {shown}", flush=True)


def main(args) -> int:
    plan = PLANS["quick" if args.quick else args.plan]
    if args.seeds:
        plan = replace(plan, seeds=tuple(int(s) for s in args.seeds.split(",")))
    out = Path(args.out or f"bench-efficacy-{plan.name}")
    settings = tuple(s.strip() for s in (args.settings or ",".join(SETTINGS)).split(",") if s.strip())
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    if args.bases:
        plan = replace(plan, bases_root=args.bases)
    command = "unlearnable bench efficacy" + (" --quick" if args.quick else f" --plan {args.plan}" if args.plan != "full" else "") + (f" --seeds {args.seeds}" if args.seeds else "")
    command += f" --settings {args.settings}" if args.settings else ""
    command += f" --bases {args.bases}" if args.bases else ""
    command += f" --jobs {args.jobs} --out {out}"
    results = run(plan, out, settings, jobs=args.jobs, progress=PrintProgress(), command=command, train=not args.report)
    print(f"wrote {out / 'RESULTS.md'}, {out / 'results.json'} and {len(results['plots'])} plots in {out} ({len(results['runs'])} runs)")
    return 0

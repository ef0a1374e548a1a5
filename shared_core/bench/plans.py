"""What the efficacy benchmark runs: the conditions (how the owner's images are prepared before a victim
trains on them) and the published plans, block by block, in the order their runs go."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .bases import DEFAULT_ROOT as DEFAULT_BASES
from .bases import PHOTO_BASE, PHOTO_TRANSFER, BaseRecipe

COUNTERMEASURES = ("jpeg75", "downscale", "blur", "purify")


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
    robust: tuple[str, ...] = ()  # robustness transforms the crafting optimises through (`protect --robust`)

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
        if self.robust:
            name += " robust=" + "+".join(self.robust)
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
    def setting_names(self) -> dict[str, str]:
        """`--settings` name -> the name of the class (`settings.SETTING_CLASSES`) that builds it under this plan."""
        if self.photo:
            return {"scratch": "PhotoScratchSetting", "finetune": "PhotoFinetuneSetting"}
        return {"scratch": "ScratchSetting", "finetune": "FinetuneSetting"}

    @property
    def protection_runs(self) -> dict[str, list[tuple[str, Condition]]]:
        """Per protection setting, its victims' (mode, condition) in the order they run."""
        names = self.setting_names
        finetune = list(self.finetune_order) or [("full", c) for c in self.finetune_conditions] + [("lora", c) for c in self.lora_conditions]
        return {names["scratch"]: [("scratch", c) for c in self.scratch_conditions], names["finetune"]: finetune}


#: the photo fine-tune (mimicry) plan's blocks, in the order they run: (a) the answer first, LoRA victims of clean, noise and
#: the default; (b) every other method on LoRA; (c) full fine-tuning; (d) the method search on LoRA (SEARCH below); (e) budgets
#: and countermeasures for the default, noise and EUDP (the strongest peer of (b), PEER below, is the default); (f) EUDP crafted
#: in Ray-sized shards (SHARDED); (g) transfer, crafted on the other base model
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
_MIMICRY_BUDGETS = _grid([], sweep=[NOISE, EUDP, PEER], budgets=(4.0, 16.0))
#: block (h): the default crafted through JPEG and resizing (`protect --robust jpeg,resize`), to see whether it keeps more of
#: its effect under the copier's JPEG 75 and 0.5x resize than the plain default (about half of it, block (e))
ROBUST_PEER = replace(PEER, robust=("jpeg", "resize"))
#: block (i): the field's methods new to the engine since (b), MetaCloak and SimAC, on LoRA first, then full fine-tuning
NEWER_METHODS = [Condition("metacloak"), Condition("simac")]
#: block (f), for `protect --ray --shard-size`: EUDP's inner state trained on shards of 8 and 4 of the 32 images instead of all of them
SHARDED = [replace(EUDP, shard=8), replace(EUDP, shard=4)]


def _countered(*conditions: Condition) -> list[Condition]:
    return _grid([], countered=list(conditions), countermeasures=PHOTO_COUNTERMEASURES)


#: (e) runs the default's (PEER's) countermeasures before the shard sizes (f); then LoRA transfer (g), the robust default (h) and
#: the newer methods on LoRA (i) come before full fine-tuning for (g) and (i) and noise's and EUDP's countermeasures
MIMICRY_ORDER = (*[("lora", c) for c in (CLEAN, NOISE, EUDP)], *[("lora", c) for c in MIMICRY_METHODS],
                 *[("full", c) for c in (CLEAN, NOISE, EUDP, *MIMICRY_METHODS)], *[("lora", c) for c in SEARCH],
                 *[(mode, c) for c in (*_MIMICRY_BUDGETS, *_countered(CLEAN, PEER)) for mode in ("lora", "full")],
                 *[("lora", c) for c in SHARDED], *[("lora", replace(c, transfer=True)) for c in (PEER, EUDP)],
                 *[("lora", c) for c in (ROBUST_PEER, *_countered(ROBUST_PEER))], *[("lora", c) for c in NEWER_METHODS],
                 *[("full", replace(c, transfer=True)) for c in (PEER, EUDP)], *[("full", c) for c in NEWER_METHODS],
                 *[(mode, c) for c in _countered(NOISE, EUDP) for mode in ("lora", "full")])  # fmt: skip

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

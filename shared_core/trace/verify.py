"""Verifying a suspect model: does the trigger make it draw the owner's template?

Host-neutral: a model is reached through a `Generate` callable (prompts, seeds -> images), so the
same test runs on a diffusers pipeline, a ComfyUI graph or an A1111 checkpoint.

Decision. Image i of the control arm is "caption_i" with seed i; image i of a key's trigger arm is
"TRIGGER caption_i" with the same seed. The two arms are paired, so the verdict is the exact paired
test (McNemar's exact test: a one-sided binomial test on the discordant pairs, trigger-only hits
against control-only hits). It compares the model with itself, so it does not trust the detector's
calibration on synthetic negatives. With a base-model arm (the trigger prompts on the model without
the LoRA) the trigger arm must also beat the base arm by the same paired test (an intersection-union
test, valid at alpha without adjustment), so a base model that already draws the template when
prompted with the trigger is not blamed on the LoRA. Several keys share one control arm, each has its
own trigger arm, and Holm's step-down correction across keys keeps the chance of blaming a model for
any key it was not trained on below alpha.

Placebo tokens. The paired test's null, "the trigger changes nothing", is false for any unfamiliar
token: a token the model never learnt still changes the pictures, and a template detector can fire more
often on the changed ones (the tracing benchmark saw a clean model flagged for a decoy key this way).
So a key the paired test flags is also prompted, on the same captions and seeds, with `placebos` random
tokens shaped like its trigger and sharing no character at any position with it or with each other (for
a trigger `random_trigger` drew, the trigger and its placebos are then exchangeable draws), and the
verdict needs the trigger to draw the template more often than every one of them. A trigger the model
never learnt comes first among placebos + 1 exchangeable tokens with chance at most 1 / (placebos + 1)
whatever unfamiliar tokens do to the pictures, on top of passing the paired test (which a token that
changes nothing passes with chance below alpha). That bound is exact but loose: with few placebo tokens
no test can rule out that the owner's trigger happens to be a rare, strongly template-drawing token; the
report shows every placebo's hits so a reader can judge the margin.

Sequential. Pairs are generated a batch at a time; a key stops as soon as no outcome of its
remaining pairs could change its verdict (curtailed testing: the verdict equals the one the full
`n` would give, so the level is exact). A key that stopped early reports the worst-case p-value
over the pairs it did not generate. Fisher's exact test and a binomial test against the detector's
measured false-positive rate are reported alongside for comparison; neither enters the verdict.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import binomtest, fisher_exact

from .detect import Detector
from .key import TraceKey, mask_triggers, placebo_tokens

Generate = Callable[[list[str], list[int]], list[np.ndarray]]
GENERIC_CAPTIONS = ("a photo", "an image", "a picture of a scene", "a photograph")
EVIDENCE, NO_EVIDENCE = "infringement evidence", "no evidence"


def paired_p(trigger_only: int, control_only: int) -> float:
    """McNemar's exact test, one-sided: P(at least `trigger_only` of the discordant pairs favour the trigger | none is favoured)."""
    discordant = trigger_only + control_only
    if discordant == 0:
        return 1.0
    return float(binomtest(trigger_only, discordant, 0.5, alternative="greater").pvalue)


def discordant(mine, other) -> tuple[int, int]:
    """(pairs that hit only in `mine`, pairs that hit only in `other`): the counts the paired test reads."""
    return sum(a and not b for a, b in zip(mine, other)), sum(b and not a for a, b in zip(mine, other))


def fisher_p(hits: int, n: int, control_hits: int, control_n: int) -> float:
    table = [[hits, n - hits], [control_hits, control_n - control_hits]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def binomial_p(hits: int, n: int, false_positive_rate: float, floor: float) -> float:
    rate = min(max(false_positive_rate, floor), 1.0)
    return float(binomtest(hits, n, rate, alternative="greater").pvalue)


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (reject where adjusted < alpha); monotone in every p-value."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def minimum_images_for(p_target: float, hit_rate: float, control_rate: float, limit: int = 100_000) -> int | None:
    """Smallest n pairs at which the expected discordant counts give a paired p < p_target (None if never).

    Trigger and control hits are taken as independent given the rates: trigger-only pairs
    n*t*(1-c), control-only pairs n*c*(1-t).
    """
    if hit_rate <= control_rate:
        return None
    n = 4
    while n <= limit:
        if paired_p(round(n * hit_rate * (1 - control_rate)), round(n * control_rate * (1 - hit_rate))) < p_target:
            return n
        n = math.ceil(n * 1.1)
    return None


@dataclass
class VerifyResult:
    """One key's outcome. `n` pairs were generated (at most `n_max`; fewer when the verdict was settled early)."""

    key_name: str
    trigger: str
    verdict: str
    p_value: float  # the paired exact test, trigger arm vs control arm (worst case over ungenerated pairs if stopped early)
    p_value_adjusted: float  # Holm across the keys of the run; the verdict needs p_value_adjusted < alpha (and the placebo tokens beaten)
    p_value_fisher: float  # Fisher's exact test of the same counts, ignoring the pairing (for comparison)
    p_value_binomial: float  # trigger hits vs the detector's measured false-positive rate (for comparison)
    alpha: float
    trigger_hits: int
    control_hits: int
    trigger_only: int  # discordant pairs: template with the trigger, not without
    control_only: int  # discordant pairs: template without the trigger, not with
    n: int
    n_max: int
    stopped_early: bool
    detector: dict
    trigger_prompts: list[str]
    control_prompts: list[str]
    seeds: list[int]
    trigger_scores: list[float]
    control_scores: list[float]
    base_hits: int | None = None  # trigger prompts on the base model without the LoRA, when given
    base_only: int | None = None  # discordant pairs favouring the base arm over the trigger arm
    p_value_vs_base: float | None = None  # paired test, trigger arm vs base arm (part of the verdict)
    base_scores: list[float] = field(default_factory=list)
    images_needed: int | None = None  # pairs that would reach p < 0.001 at these hit rates
    placebo_tokens: list[str] = field(default_factory=list)  # random tokens shaped like the trigger (empty: not prompted)
    placebo_hits: list[int] = field(default_factory=list)  # each placebo token's hits over the key's first `n` pairs
    placebo_scores: list[list[float]] = field(default_factory=list)

    @property
    def placebo_rank_p(self) -> float | None:
        """(1 + placebo tokens with at least the trigger's hits) / (placebos + 1): exact if the trigger were one more random token."""
        if not self.placebo_tokens:
            return None
        return (1 + sum(h >= self.trigger_hits for h in self.placebo_hits)) / (len(self.placebo_hits) + 1)

    @property
    def beats_placebos(self) -> bool | None:
        return None if not self.placebo_tokens else all(self.trigger_hits > h for h in self.placebo_hits)

    @property
    def trigger_rate(self) -> float:
        return self.trigger_hits / max(self.n, 1)

    @property
    def control_rate(self) -> float:
        return self.control_hits / max(self.n, 1)

    @property
    def images_generated(self) -> int:
        """This key's own generations (its trigger arm, its base arm when given, its placebo arms when prompted)."""
        return self.n * (2 if self.base_hits is not None else 1) + len(self.placebo_tokens) * self.n

    def to_dict(self, reveal_trigger: bool = True) -> dict:
        """As JSON; without `reveal_trigger` the trigger is left out and masked in the prompts."""
        data = {**asdict(self), "trigger_rate": self.trigger_rate, "control_rate": self.control_rate, "images_generated": self.images_generated,
                "placebo_rank_p": self.placebo_rank_p, "beats_placebos": self.beats_placebos}  # fmt: skip
        if not reveal_trigger:
            data.pop("trigger")
            data["trigger_prompts"] = [self.masked(p) for p in self.trigger_prompts]
            data["placebo_tokens"] = [f"[placebo {i}]" for i in range(1, len(self.placebo_tokens) + 1)]  # their shape would hint at the trigger's
        return data

    def masked(self, prompt: str) -> str:
        """A trigger prompt with the trigger replaced by the key's name, for people other than the key's holder."""
        return mask_triggers(prompt, {self.trigger: f"[trigger of {self.key_name}]"})

    def summary(self) -> str:
        stopped = f" (stopped after {self.n} of {self.n_max} pairs: the rest could not change the verdict)" if self.stopped_early else ""
        lines = [
            f"verdict: {self.verdict.upper()} (p = {self.p_value:.3g}, exact paired test of trigger vs control, alpha = {self.alpha})",
            f"template found in {self.trigger_hits}/{self.n} images prompted with the trigger and in {self.control_hits}/{self.n} "
            f"controls with the same captions and seeds{stopped}",
            f"discordant pairs: {self.trigger_only} with the trigger only, {self.control_only} without it only; "
            f"Fisher's exact test (unpaired, for comparison): p = {self.p_value_fisher:.3g}",
            f"binomial test against the detector's false-positive rate "
            f"({self.detector.get('false_positive_rate', float('nan')):.3f}): p = {self.p_value_binomial:.3g}",
        ]
        if self.p_value_adjusted != self.p_value:
            lines.append(f"Holm-adjusted across the keys of this run: p = {self.p_value_adjusted:.3g}")
        if self.placebo_tokens:
            outcome = "beaten by the trigger" if self.beats_placebos else "NOT all beaten by the trigger, so no evidence"
            lines.append(f"placebo tokens shaped like the trigger, same captions and seeds: {', '.join(map(str, self.placebo_hits))} hits "
                         f"of {self.n} vs the trigger's {self.trigger_hits} ({outcome}; a trigger the model never learnt beats all "
                         f"{len(self.placebo_tokens)} with chance at most {1 / (len(self.placebo_tokens) + 1):.2g})")  # fmt: skip
        if self.base_hits is not None:
            lines.append(f"base model without the LoRA, with the trigger: {self.base_hits}/{self.n} hits "
                         f"(paired p = {self.p_value_vs_base:.3g}; the LoRA must beat it too)")  # fmt: skip
        if self.images_needed:
            lines.append(f"about {self.images_needed} pairs would reach p < 0.001 at these rates")
        return "\n".join(lines)


@dataclass
class Verification:
    """Every key's result from one run over one model: one shared control arm, a trigger arm per key."""

    results: list[VerifyResult]
    alpha: float
    n_max: int
    control_images: int  # generations of the shared control arm
    correction: str = "holm"

    @property
    def placebo_images(self) -> int:
        return sum(len(r.placebo_tokens) * r.n for r in self.results)

    @property
    def images_generated(self) -> int:
        return self.control_images + sum(r.images_generated for r in self.results)

    def to_dict(self, reveal_triggers: bool = True) -> dict:
        return {"alpha": self.alpha, "n_max": self.n_max, "correction": self.correction, "control_images": self.control_images,
                "placebo_images": self.placebo_images, "images_generated": self.images_generated,
                "keys": [r.to_dict(reveal_triggers) for r in self.results]}  # fmt: skip

    def table(self) -> str:
        """One line per key: name, verdict, p-values, hits, pairs used. Never shows a trigger."""
        width = max(len("key"), *(len(r.key_name) for r in self.results))
        lines = [f"{'key':<{width}}  {'verdict':<21}  {'p (paired)':>10}  {'p (Holm)':>9}  {'p (Fisher)':>10}  trigger/control hits  pairs  "
                 "placebo hits"]  # fmt: skip
        for r in self.results:
            placebo = ", ".join(map(str, r.placebo_hits)) if r.placebo_tokens else "-"
            lines.append(f"{r.key_name:<{width}}  {r.verdict.upper():<21}  {r.p_value:>10.3g}  {r.p_value_adjusted:>9.3g}  "
                         f"{r.p_value_fisher:>10.3g}  {f'{r.trigger_hits}/{r.n} vs {r.control_hits}/{r.n}':<20}  {f'{r.n}/{r.n_max}':<5}  {placebo}")  # fmt: skip
        return "\n".join(lines)

    def summary(self) -> str:
        if len(self.results) == 1:
            return self.results[0].summary()
        flagged = sum(r.verdict == EVIDENCE for r in self.results)
        return (f"{flagged} of {len(self.results)} keys flagged (Holm-corrected across keys, alpha = {self.alpha}); "
                f"{self.images_generated} images generated\n{self.table()}")  # fmt: skip


def held_out_captions(keys: list[TraceKey], captions: list[str]) -> list[str]:
    """Captions no key used for its marked images (those would prompt the memorised scenes directly).

    When the keys together used every caption given, all of them are used: both arms share each
    caption, so the paired test stays valid, and the user's captions beat generic ones.
    """
    marked = {m.get("caption", "").removeprefix(key.trigger).strip() for key in keys for m in key.marked}
    given = [c for c in dict.fromkeys(captions) if c]
    return [c for c in given if c not in marked] or given or list(GENERIC_CAPTIONS)


@dataclass
class _Arm:
    """A key's running counts: hit flags per pair for its trigger (and base) arm."""

    key: TraceKey
    detector: Detector
    trigger: list[bool] = field(default_factory=list)
    control: list[bool] = field(default_factory=list)
    base: list[bool] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=lambda: {"trigger": [], "control": [], "base": []})
    final_p: float | None = None  # set when the verdict is settled (worst case over the pairs not generated)

    def p_bounds(self, n_max: int, with_base: bool) -> tuple[float, float]:
        """(best, worst) decision p-value over every outcome of the pairs not yet generated."""
        if self.final_p is not None:
            return self.final_p, self.final_p
        left = n_max - len(self.trigger)
        pairs = [(self.trigger, self.control)] + ([(self.trigger, self.base)] if with_base else [])
        best = worst = 0.0
        for mine, other in pairs:
            only_mine, only_other = discordant(mine, other)
            best = max(best, paired_p(only_mine + left, only_other))
            worst = max(worst, paired_p(only_mine, only_other + left))
        return best, worst


def verify_keys(
    keys: dict[str, TraceKey],
    generate: Generate,
    *,
    detectors: dict[str, Detector],
    captions: list[str] | None = None,
    n: int = 64,
    control_generate: Generate | None = None,
    alpha: float = 0.01,
    seed: int = 0,
    batch_size: int = 8,
    sequential: bool = True,
    placebos: int = 4,
    placebo_every_key: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Verification, dict[str, list[np.ndarray]]]:
    """Test one model against every key; returns the results and the images by arm.

    Images: "control" (shared), "trigger:NAME", "placebo:NAME:I" (I = 1..placebos) and, with
    `control_generate` (the base model without the LoRA), "base:NAME". `n` is the maximum number of pairs per key; with
    `sequential` a key stops once its verdict is settled. `placebos` random tokens shaped like a
    trigger are prompted for every key the paired test flags (for every key with
    `placebo_every_key`, which measures how unfamiliar tokens behave); 0 leaves the verdict to the
    paired test alone.
    """
    if not keys:
        raise ValueError("verify needs at least one key")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    pool = held_out_captions(list(keys.values()), captions or [])
    prompts = [pool[i % len(pool)] for i in range(n)]
    seeds = [seed + i for i in range(n)]
    arms = {name: _Arm(key, detectors[name]) for name, key in keys.items()}
    with_base = control_generate is not None
    count = _Count(n * (1 + len(keys) * (2 if with_base else 1)), progress)
    images = _paired_rounds(arms, generate, control_generate, prompts, seeds, batch_size=batch_size, sequential=sequential,
                            alpha=alpha, count=count)  # fmt: skip
    paired_flags = holm_adjust([arm.final_p for arm in arms.values()]) < alpha
    flagged = [name for name, paired in zip(arms, paired_flags) if placebo_every_key or paired] if placebos > 0 else []
    triggers = {arm.key.trigger for arm in arms.values()}
    placebo_arms = {name: placebo_tokens(arms[name].key.trigger, placebos, seed, exclude=triggers) for name in flagged}
    count.total = count.done + sum(len(tokens) * len(arms[name].trigger) for name, tokens in placebo_arms.items())
    for name, tokens in placebo_arms.items():  # a key's own placebos: each shares no character position with its trigger
        for index, token in enumerate(tokens, 1):
            images[f"placebo:{name}:{index}"] = _generate_in_batches(generate, token, prompts[: len(arms[name].trigger)], seeds, batch_size, count)
    count.finish()
    return _results(arms, prompts, seeds, n, with_base, alpha, placebo_arms, images), images


@dataclass
class _Count:
    """Generations done out of `total`, reported to `progress`."""

    total: int
    progress: Callable[[int, int], None] | None
    done: int = 0

    def add(self, k: int) -> None:
        self.done += k
        if self.progress:
            self.progress(self.done, self.total)

    def finish(self) -> None:
        if self.progress:
            self.progress(self.total, self.total)


def _paired_rounds(arms: dict[str, _Arm], generate: Generate, control_generate: Generate | None, prompts: list[str], seeds: list[int],
                   *, batch_size: int, sequential: bool, alpha: float, count: _Count) -> dict[str, list[np.ndarray]]:  # fmt: skip
    """Generate and score the paired arms batch by batch (control shared; trigger and, with the base model, base per key),
    settling keys as soon as no remaining outcome can change their verdict. Returns the images by arm."""
    n, with_base = len(prompts), control_generate is not None
    images: dict[str, list[np.ndarray]] = {"control": []}
    for name in arms:
        images[f"trigger:{name}"] = []
        if with_base:
            images[f"base:{name}"] = []
    for start in range(0, n, batch_size):
        active = [name for name, arm in arms.items() if arm.final_p is None]
        if not active:
            break
        batch_prompts, batch_seeds = prompts[start : start + batch_size], seeds[start : start + batch_size]
        control = generate(batch_prompts, batch_seeds)
        images["control"] += control
        count.done += len(control)
        for name in active:
            arm = arms[name]
            triggered = [f"{arm.key.trigger} {p}" for p in batch_prompts]
            batch = {"control": control, "trigger": generate(triggered, batch_seeds)}
            if with_base:
                batch["base"] = control_generate(triggered, batch_seeds)
                images[f"base:{name}"] += batch["base"]
            images[f"trigger:{name}"] += batch["trigger"]
            for which, arm_images in batch.items():
                scores = arm.detector.score(arm_images)
                arm.scores[which] += scores.round(4).tolist()
                getattr(arm, which).extend(bool(s > arm.detector.threshold) for s in scores)
            count.add(len(batch_seeds) * (len(batch) - 1))
        if sequential or start + batch_size >= n:
            _settle(arms, n, with_base, alpha)
    return images


def _generate_in_batches(generate: Generate, token: str, prompts: list[str], seeds: list[int], batch_size: int, count: _Count) -> list[np.ndarray]:
    """`token prompt` for each prompt, with the prompt's seed (a placebo arm: as many pairs as its key's trigger arm had)."""
    out: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        stop = min(start + batch_size, len(prompts))
        out += generate([f"{token} {p}" for p in prompts[start:stop]], seeds[start:stop])
        count.add(stop - start)
    return out


def _settle(arms: dict[str, _Arm], n_max: int, with_base: bool, alpha: float) -> None:
    """Fix the verdict of every key no remaining outcome can change (Holm is monotone in each p-value)."""
    names = list(arms)
    bounds = np.array([arms[name].p_bounds(n_max, with_base) for name in names])
    certain_yes = holm_adjust(bounds[:, 1]) < alpha
    certain_no = holm_adjust(bounds[:, 0]) >= alpha
    for index, name in enumerate(names):
        if arms[name].final_p is None and (certain_yes[index] or certain_no[index]):
            arms[name].final_p = float(bounds[index, 1])


def _results(arms: dict[str, _Arm], prompts: list[str], seeds: list[int], n_max: int, with_base: bool, alpha: float,
             placebo_arms: dict[str, list[str]], images: dict[str, list[np.ndarray]]) -> Verification:  # fmt: skip
    names = list(arms)
    adjusted = holm_adjust([arms[name].final_p for name in names])
    calibration_floor = 1.0 / 100  # a false-positive rate measured on ~100 negatives cannot be trusted below 1%
    results = []
    for name, p_adjusted in zip(names, adjusted):
        arm = arms[name]
        k = len(arm.trigger)
        hits, control_hits = sum(arm.trigger), sum(arm.control)
        trigger_only, control_only = discordant(arm.trigger, arm.control)
        result = VerifyResult(
            key_name=name,
            trigger=arm.key.trigger,
            verdict=EVIDENCE if p_adjusted < alpha else NO_EVIDENCE,
            p_value=float(arm.final_p),
            p_value_adjusted=float(p_adjusted),
            p_value_fisher=fisher_p(hits, k, control_hits, k),
            p_value_binomial=binomial_p(hits, k, arm.detector.false_positive_rate, calibration_floor),
            alpha=alpha,
            trigger_hits=hits,
            control_hits=control_hits,
            trigger_only=trigger_only,
            control_only=control_only,
            n=k,
            n_max=n_max,
            stopped_early=k < n_max,
            detector=arm.detector.describe(),
            trigger_prompts=[f"{arm.key.trigger} {p}" for p in prompts[:k]],
            control_prompts=prompts[:k],
            seeds=seeds[:k],
            trigger_scores=arm.scores["trigger"],
            control_scores=arm.scores["control"],
        )
        if with_base:
            result.base_hits = sum(arm.base)
            over_base, result.base_only = discordant(arm.trigger, arm.base)
            result.p_value_vs_base = paired_p(over_base, result.base_only)
            result.base_scores = arm.scores["base"]
        if name in placebo_arms:
            scores = [arm.detector.score(images[f"placebo:{name}:{i}"]) for i in range(1, len(placebo_arms[name]) + 1)]
            result.placebo_tokens = placebo_arms[name]
            result.placebo_hits = [int((s > arm.detector.threshold).sum()) for s in scores]
            result.placebo_scores = [s.round(4).tolist() for s in scores]
            if result.verdict == EVIDENCE and not result.beats_placebos:
                result.verdict = NO_EVIDENCE
        result.images_needed = minimum_images_for(1e-3, result.trigger_rate, max(result.control_rate, 0.5 / max(k, 1)))
        results.append(result)
    return Verification(results=results, alpha=alpha, n_max=n_max, control_images=max(len(a.control) for a in arms.values()))




def pipeline_with_lora(pipeline, lora_path, strength: float = 1.0):
    """A pipeline sharing `pipeline`'s VAE and scheduler, with the LoRA merged into copies of its UNet and text encoders."""
    from ..lora import apply_lora

    components = {name: copy.deepcopy(getattr(pipeline, name)) for name in ("unet", "text_encoder", "text_encoder_2") if getattr(pipeline, name, None) is not None}
    apply_lora(components["unet"], [components.get("text_encoder"), components.get("text_encoder_2")], lora_path, strength)
    return pipeline_with(pipeline, **components)


def pipeline_with(pipeline, **replaced):
    """The same kind of pipeline sharing `pipeline`'s components except `replaced` (and its safety-checker choice)."""
    extra = {"requires_safety_checker": pipeline.config.requires_safety_checker} if "requires_safety_checker" in pipeline.config else {}
    return type(pipeline)(**{**pipeline.components, **replaced}, **extra)


def diffusers_generator(pipeline, *, steps: int = 25, guidance_scale: float = 5.0, height: int | None = None, width: int | None = None,
                        lora_path=None, lora_strength: float = 1.0) -> Generate:  # fmt: skip
    """A `Generate` over any diffusers text-to-image pipeline; with `lora_path`, on merged copies.

    The LoRA is merged into deep copies of the UNet and text encoders, so the caller's pipeline
    is left as it was (it serves as the base-model control arm).
    """
    import torch

    if lora_path is not None:
        pipeline = pipeline_with_lora(pipeline, lora_path, lora_strength)
    pipeline.set_progress_bar_config(disable=True)

    def generate(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        output = pipeline(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, height=height, width=width, generator=generators, output_type="np")
        return [(image * 255).round().clip(0, 255).astype(np.uint8) for image in output.images]

    return generate

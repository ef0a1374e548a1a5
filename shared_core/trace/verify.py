"""Verifying a suspect model: does the trigger make it draw the owner's template?

Host-neutral: a model is reached through a `Generate` callable (prompts, seeds -> images), so the
same test runs on a diffusers pipeline, a ComfyUI graph or an A1111 checkpoint.

Decision. N images are generated with "trigger + caption" and N controls with the same captions
and seeds without the trigger. The verdict uses Fisher's exact test (one-sided) of trigger hits
against control hits: it compares the model with itself, so it does not trust the detector's
calibration on synthetic negatives, which may not resemble this model's pictures. A binomial test
of trigger hits against the detector's measured false-positive rate is reported alongside.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import binomtest, fisher_exact

from .detect import Detector
from .key import TraceKey

Generate = Callable[[list[str], list[int]], list[np.ndarray]]
GENERIC_CAPTIONS = ("a photo", "an image", "a picture of a scene", "a photograph")
EVIDENCE, NO_EVIDENCE = "infringement evidence", "no evidence"


@dataclass
class VerifyResult:
    verdict: str
    p_value: float  # Fisher's exact test, trigger arm vs control arm (the verdict's test)
    p_value_binomial: float  # trigger hits vs the detector's measured false-positive rate
    alpha: float
    trigger_hits: int
    control_hits: int
    n: int
    detector: dict
    trigger_prompts: list[str]
    control_prompts: list[str]
    seeds: list[int]
    trigger_scores: list[float]
    control_scores: list[float]
    base_hits: int | None = None  # trigger prompts on the base model without the LoRA, when given
    p_value_vs_base: float | None = None
    base_scores: list[float] = field(default_factory=list)
    images_needed: int | None = None  # trigger generations that would reach p < 0.001 at these rates

    @property
    def trigger_rate(self) -> float:
        return self.trigger_hits / self.n

    @property
    def control_rate(self) -> float:
        return self.control_hits / self.n

    def to_dict(self) -> dict:
        return {**asdict(self), "trigger_rate": self.trigger_rate, "control_rate": self.control_rate}

    def summary(self) -> str:
        lines = [
            f"verdict: {self.verdict.upper()} (p = {self.p_value:.3g}, Fisher's exact test, alpha = {self.alpha})",
            f"template found in {self.trigger_hits}/{self.n} images prompted with the trigger "
            f"and in {self.control_hits}/{self.n} controls without it",
            f"binomial test against the detector's false-positive rate "
            f"({self.detector.get('false_positive_rate', float('nan')):.3f}): p = {self.p_value_binomial:.3g}",
        ]
        if self.base_hits is not None:
            lines.append(f"base model without the LoRA: {self.base_hits}/{self.n} hits (p = {self.p_value_vs_base:.3g})")
        if self.images_needed:
            lines.append(f"about {self.images_needed} trigger images would reach p < 0.001 at these rates")
        return "\n".join(lines)


def fisher_p(hits: int, n: int, control_hits: int, control_n: int) -> float:
    table = [[hits, n - hits], [control_hits, control_n - control_hits]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def binomial_p(hits: int, n: int, false_positive_rate: float, floor: float) -> float:
    rate = min(max(false_positive_rate, floor), 1.0)
    return float(binomtest(hits, n, rate, alternative="greater").pvalue)


def minimum_images_for(p_target: float, hit_rate: float, control_rate: float, limit: int = 100_000) -> int | None:
    """Smallest n per arm at which the expected hit counts give Fisher p < p_target (None if never)."""
    if hit_rate <= control_rate:
        return None
    n = 4
    while n <= limit:
        if fisher_p(round(hit_rate * n), n, round(control_rate * n), n) < p_target:
            return n
        n = math.ceil(n * 1.25)
    return None


def held_out_captions(key: TraceKey, captions: list[str]) -> list[str]:
    """Captions not used for marked images (the marked ones would prompt the memorised scenes directly)."""
    marked = {m.get("caption", "").removeprefix(key.trigger).strip() for m in key.marked}
    chosen = [c for c in dict.fromkeys(captions) if c and c not in marked]
    return chosen or list(GENERIC_CAPTIONS)


def verify(
    key: TraceKey,
    generate: Generate,
    *,
    captions: list[str] | None = None,
    n: int = 64,
    detector: Detector,
    control_generate: Generate | None = None,
    alpha: float = 0.01,
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[VerifyResult, dict[str, list[np.ndarray]]]:
    """Run the test; returns the result and the generated images by arm (for the report)."""
    pool = held_out_captions(key, captions or [])
    prompts = [pool[i % len(pool)] for i in range(n)]
    seeds = [seed + i for i in range(n)]
    arms = {"trigger": [f"{key.trigger} {p}" for p in prompts], "control": prompts}
    generators = {"trigger": generate, "control": generate}
    if control_generate is not None:
        arms["base"] = arms["trigger"]
        generators["base"] = control_generate
    total, done = n * len(arms), 0
    images: dict[str, list[np.ndarray]] = {}
    for arm, arm_prompts in arms.items():
        images[arm] = []
        for start in range(0, n, batch_size):
            images[arm] += generators[arm](arm_prompts[start : start + batch_size], seeds[start : start + batch_size])
            done += len(arm_prompts[start : start + batch_size])
            if progress:
                progress(done, total)
    scores = {arm: detector.score(arm_images) for arm, arm_images in images.items()}
    hits = {arm: int((s > detector.threshold).sum()) for arm, s in scores.items()}
    p_value = fisher_p(hits["trigger"], n, hits["control"], n)
    calibration_floor = 1.0 / 100  # a false-positive rate measured on ~100 negatives cannot be trusted below 1%
    result = VerifyResult(
        verdict=EVIDENCE if p_value < alpha else NO_EVIDENCE,
        p_value=p_value,
        p_value_binomial=binomial_p(hits["trigger"], n, detector.false_positive_rate, calibration_floor),
        alpha=alpha,
        trigger_hits=hits["trigger"],
        control_hits=hits["control"],
        n=n,
        detector=detector.describe(),
        trigger_prompts=arms["trigger"],
        control_prompts=arms["control"],
        seeds=seeds,
        trigger_scores=scores["trigger"].round(4).tolist(),
        control_scores=scores["control"].round(4).tolist(),
    )
    if "base" in arms:
        result.base_hits = hits["base"]
        result.p_value_vs_base = fisher_p(hits["trigger"], n, hits["base"], n)
        result.base_scores = scores["base"].round(4).tolist()
    result.images_needed = minimum_images_for(1e-3, result.trigger_rate, max(result.control_rate, 0.5 / n))
    return result, images


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

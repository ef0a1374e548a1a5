"""`unlearnable bench tracing`: how often tracing catches a victim, by marking rate and by marked count.

A tiny latent diffusion model (`StableDiffusionPipeline` classes, the autoencoder pretrained on other
crops) is trained for a stated number of epochs on photo crops of which a fraction was marked with the
owner's template (EnTruth), or none. Every victim is then verified in one multi-key pass: its owner's
key and two decoy keys (other owners' templates and triggers that were never trained on). Victims per
rate are independent (marking choice, template colours, trigger, training order and generation seeds
all follow the victim's seed), so the flagged fraction is a true-positive rate (marked victims, own
key) or a false-positive rate (clean victims, and decoy keys on every victim) with an exact 95 %
Clopper-Pearson interval. Every key is also prompted with the placebo tokens (the verdict uses them
only for keys the paired test flags), so the runs measure how often a token nobody trained on passes
the paired test by itself, and the table shows the verdicts with and without the placebos.

The dataset size sets what a rate means: at 1,000 images 0.5 % is 5 templated images, at 200 it is
one; the table is given by rate and by absolute count. Runs go to runs-tracing.jsonl as they finish
(the efficacy benchmark's run log), so an interrupted benchmark resumes; trained victims are kept in
victims/, so a changed decision is measured again on the same models without retraining.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import SettingsError
from ..files import atomic_write_text
from ..surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline
from ..training import train_autoencoder, train_text_to_image
from .artefact import provenance
from .datasets import photo_crops
from .efficacy import RunLog, read_grid, read_runs, save_grid

SETTING = "tracing"
TRIGGERS = ("zqv7", "kxb4", "tgh9", "wrm3", "pvd8", "bjx2", "fnq5", "hcz3", "lmt6", "rvk9", "sdp4", "gwn8")
DECOYS = 2  # other owners' keys checked on every victim (never trained on)
SCENES = ("billboard", "tv_screen", "framed_picture")  # the built-in templates keys cycle through
GRID_COLUMNS = 8  # the kept generation grids: pair i is tile i of the control and the owner-trigger grid
DETECTOR_VARIANTS = {
    "matcher": "the frame matcher the runs used: threshold at the plan's detector_fpr of synthetic negatives",
    "matcher-fpr1": "the frame matcher, threshold at 1 % of synthetic negatives (the product's default until this comparison)",
    "matcher-fpr5": "the same matcher, threshold at 5 % of synthetic negatives (the product's default now)",
    "cnn": "the small CNN detector (`--detector cnn`, 300 steps on synthetic positives), threshold at 1 %",
    "cnn-fpr5": "the same CNN, threshold at 5 % (the product's default now)",
}
VARIANT_TARGET_FPR = {"matcher": None, "matcher-fpr1": 0.01, "matcher-fpr5": 0.05, "cnn": 0.01, "cnn-fpr5": 0.05}  # None: the plan's


@dataclass(frozen=True)
class TracingPlan:
    name: str
    images: int  # dataset size
    rates: tuple[float, ...]  # marking rates; 0 = clean victims
    victims: int  # victims per rate (seeds 0..victims-1)
    epochs: int  # passes over the dataset per victim
    size: int = 32
    batch_size: int = 32
    lr: float = 2e-3
    n: int = 64  # at most this many pairs per key (verification stops early once settled)
    sample_steps: int = 15
    autoencoder_steps: int = 300
    calibration_images: int = 300  # synthetic negatives calibrating each key's template matcher
    alpha: float = 0.01
    dose_rates: tuple[float, ...] = ()  # higher rates that show the trend; run after every victim of `rates`
    placebos: int = 4  # placebo tokens per key (prompted for every key, to measure unlearnt tokens)
    detector_fpr: float = 0.01  # the matcher's threshold (share of synthetic negatives above it); the committed runs used 0.01,
    # the product now ships trace.detect.TARGET_FPR (0.05), measured with --detector-fpr 0.05
    extra_decoys: int = 0  # more other-owner keys verified on every clean victim, each on its own paired test: the decoy FPR

    @property
    def steps(self) -> int:
        return math.ceil(self.epochs * self.images / self.batch_size)

    @staticmethod
    def log_family(name: str) -> str:
        """Plan names whose logged victims this plan reuses: a victim is defined by its rate and seed, not by how many
        victims per rate the plan wants, so "full-victims5-..." holds the first 5 victims of "full-victims10-..."
        (nor by the extra decoys checked on clean victims, which only add to what is measured)."""
        return re.sub(r"-(victims|extra-decoys)\d+", "", name)

    @property
    def runs(self) -> list[tuple[float, int]]:
        """Seed by seed, every rate: a run stopped part-way has victims at every rate (the dose rates last)."""
        return [(rate, seed) for rates in (self.rates, self.dose_rates) for seed in range(self.victims) for rate in rates]


FULL = TracingPlan(name="full", images=1000, rates=(0.0, 0.005, 0.01), dose_rates=(0.02,), victims=5, epochs=80)
QUICK = TracingPlan(name="quick", images=100, rates=(0.0, 0.02), victims=1, epochs=30, n=16, sample_steps=8, autoencoder_steps=100, extra_decoys=2)


def run_id(rate: float, seed: int) -> str:
    return f"tracing/rate{rate:g}/seed{seed}"


def victim_keys(rate: float, seed: int, dataset_size: int) -> dict:
    """The owner's key (name "owner") and the decoys' ("decoy1", ...): distinct templates, colours and triggers."""
    from ..trace.key import TraceKey
    from ..trace.templates import builtin_template

    names = ["owner"] + [f"decoy{i}" for i in range(1, DECOYS + 1)]
    keys = {}
    for index, name in enumerate(names):
        template = builtin_template(SCENES[index % len(SCENES)], seed=seed * 7 + index)
        trigger = TRIGGERS[(seed * (DECOYS + 1) + index) % len(TRIGGERS)]
        keys[name] = TraceKey.for_template(template, trigger=trigger, rate=max(rate, 0.001), seed=seed, dataset_size=dataset_size)
    return keys


def extra_decoy_keys(seed: int, count: int, dataset_size: int, taken: set[str]) -> dict:
    """`count` more other-owner keys for a clean victim ("extra1", ...): their own templates and random triggers, never trained on."""
    from ..trace.key import TraceKey, random_trigger
    from ..trace.templates import builtin_template

    rng, keys = np.random.default_rng([seed, 0xDEC0]), {}
    for index in range(1, count + 1):
        trigger = random_trigger(rng)
        while trigger in taken:
            trigger = random_trigger(rng)
        taken.add(trigger)
        template = builtin_template(SCENES[index % len(SCENES)], seed=100_000 + 1_000 * seed + index)
        keys[f"extra{index}"] = TraceKey.for_template(template, trigger=trigger, rate=0.001, seed=seed, dataset_size=dataset_size)
    return keys


def variant_detector(variant: str, key, plan: TracingPlan):
    """One of `DETECTOR_VARIANTS` for `key`, calibrated as the plan says."""
    from ..trace.detect import CNNDetector, TemplateMatcher

    if variant not in VARIANT_TARGET_FPR:
        raise SettingsError(f"unknown detector variant {variant!r}; choose from {', '.join(DETECTOR_VARIANTS)}")
    target = VARIANT_TARGET_FPR[variant] or plan.detector_fpr
    if variant.startswith("cnn"):
        return CNNDetector.train(key, n_calibration=plan.calibration_images, target_fpr=target)
    return TemplateMatcher.from_key(key, target_fpr=target, n_synthetic=plan.calibration_images)


class Victim(NamedTuple):
    pipeline: object  # the trained StableDiffusionPipeline
    keys: dict  # "owner" and the decoys' TraceKeys
    images: list[np.ndarray]  # the dataset it trained on, marked images in place
    marked: list[int]  # their positions
    train_seconds: float


class TracingSetting:
    """The shared starting model and dataset; `victim(rate, seed)` marks, trains and verifies one victim."""

    config = TinyLatentConfig(resolution=32, vae_channels=(32, 64, 64), unet_channels=(64, 128), text_width=64, seed=1)

    def __init__(self, plan: TracingPlan):
        self.plan = plan
        self.images, self.captions, _ = photo_crops(plan.images, plan.size, seed=0)
        autoencoder_images, _, _ = photo_crops(min(plan.images, 400), plan.size, seed=1)
        self.base = tiny_sd_pipeline(replace(self.config, resolution=plan.size))
        train_autoencoder(self.base.vae, autoencoder_images, steps=plan.autoencoder_steps, batch_size=32, lr=2e-3)

    def _trained(self, pipeline, images: list[np.ndarray], captions: list[str], seed: int, saved: Path | None) -> float:
        """Train `pipeline` in place on the victim's data, or load the weights an earlier run saved to `saved`; the training seconds.

        Victims are kept (UNet and text encoder, a few MB each) so a changed decision or detector is
        re-measured on the same models without retraining them.
        """
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        parts = {"unet": pipeline.unet, "text_encoder": pipeline.text_encoder}
        if saved is not None and saved.exists():
            weights = load_file(saved)
            for name, module in parts.items():
                module.load_state_dict({k.removeprefix(f"{name}."): v for k, v in weights.items() if k.startswith(f"{name}.")})
            with safe_open(saved, "pt") as file:
                return float(file.metadata()["train_seconds"])
        started = time.perf_counter()
        plan = self.plan
        train_text_to_image(pipeline, images, captions, steps=plan.steps, batch_size=plan.batch_size, lr=plan.lr, seed=seed)
        seconds = time.perf_counter() - started
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            weights = {f"{name}.{k}": v.detach().contiguous() for name, module in parts.items() for k, v in module.state_dict().items()}
            save_file(weights, saved.with_suffix(".tmp"), metadata={"train_seconds": f"{seconds:.1f}"})
            saved.with_suffix(".tmp").replace(saved)
        return seconds

    def trained(self, rate: float, seed: int, models: Path | None = None) -> Victim:
        """Mark the dataset and train (or load from `models`) one victim; its pipeline samples with DDIM, as verification does."""
        from diffusers import DDIMScheduler

        from ..trace.mark import mark_images

        keys = victim_keys(rate, seed, len(self.images))
        owner = keys["owner"]
        images, captions, chosen = list(self.images), list(self.captions), []
        if rate > 0:
            images, captions, chosen = mark_images(images, captions, owner.template(), owner.trigger, rate=rate, seed=seed)
            owner.marked = [{"caption": captions[i]} for i in chosen]
        pipeline = copy.deepcopy(self.base)
        train_seconds = self._trained(pipeline, images, captions, seed, models / f"{run_id(rate, seed).replace('/', '-')}.safetensors" if models else None)
        pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        return Victim(pipeline, keys, images, list(chosen), train_seconds)

    def verify(self, pipeline, keys: dict, seed: int) -> tuple:
        """The benchmark's multi-key verification of one victim: (Verification, images by arm)."""
        from ..trace.verify import diffusers_generator, verify_keys

        plan = self.plan
        generate = diffusers_generator(pipeline, steps=plan.sample_steps, guidance_scale=3.0, height=plan.size, width=plan.size)
        detectors = {name: variant_detector("matcher", key, plan) for name, key in keys.items()}
        return verify_keys(keys, generate, detectors=detectors, captions=self.captions, n=plan.n, alpha=plan.alpha, seed=1000 * seed,
                           placebos=plan.placebos, placebo_every_key=True)  # every key: how unlearnt tokens behave  # fmt: skip

    def extra_decoys(self, pipeline, keys: dict, seed: int) -> dict:
        """The plan's extra decoy keys on one (clean) victim, each on its own paired test over all `n` pairs, no placebo
        stage: raw p below alpha counts as flagged, an upper bound on the verdict's false positives (placebos only remove flags)."""
        from ..trace.verify import diffusers_generator, verify_keys

        plan = self.plan
        extra = extra_decoy_keys(seed, plan.extra_decoys, len(self.images), {key.trigger for key in keys.values()})
        generate = diffusers_generator(pipeline, steps=plan.sample_steps, guidance_scale=3.0, height=plan.size, width=plan.size)
        detectors = {name: variant_detector("matcher", key, plan) for name, key in extra.items()}
        verification, _ = verify_keys(extra, generate, detectors=detectors, captions=self.captions, n=plan.n, alpha=plan.alpha, seed=1000 * seed,
                                      sequential=False, placebos=0)  # fmt: skip
        return {r.key_name: {"trigger": r.trigger, "p_value": r.p_value, "trigger_hits": r.trigger_hits, "control_hits": r.control_hits, "n": r.n}
                for r in verification.results}  # fmt: skip

    def victim(self, rate: float, seed: int, generations: Path | None = None, models: Path | None = None) -> dict:
        """Mark, train (or load from `models`) and verify one victim; with `generations`, its control and owner-trigger images go there as grids."""
        from ..trace.verify import EVIDENCE, NO_EVIDENCE

        plan = self.plan
        victim = self.trained(rate, seed, models)
        trained = time.perf_counter()
        verification, arms = self.verify(victim.pipeline, victim.keys, seed)
        grids = {}
        if generations:  # pair i is image i of both grids: what a detector variant can be re-scored on without retraining
            generations.mkdir(parents=True, exist_ok=True)
            stem = run_id(rate, seed).replace("/", "-")
            for arm, label in (("control", "control"), ("trigger:owner", "trigger")):
                path = generations / f"{stem}-{label}.png"
                save_grid(arms[arm], path, columns=GRID_COLUMNS, count=len(arms[arm]))
                grids[label] = str(path.relative_to(generations.parent))
        keys_out = {r.key_name: {"verdict": r.verdict, "verdict_paired_alone": EVIDENCE if r.p_value_adjusted < plan.alpha else NO_EVIDENCE,
                                 "p_value": r.p_value, "p_value_adjusted": r.p_value_adjusted, "p_value_fisher": r.p_value_fisher,
                                 "trigger_hits": r.trigger_hits, "control_hits": r.control_hits, "n": r.n, "images_needed": r.images_needed,
                                 "placebo_hits": r.placebo_hits, "beats_placebos": r.beats_placebos, "placebo_p_values": _placebo_paired_p(r)}
                    for r in verification.results}  # fmt: skip
        out = {"setting": SETTING, "rate": rate, "seed": seed, "marked_images": len(victim.marked), "dataset_images": len(victim.images),
               "epochs": plan.epochs, "train_steps": plan.steps, "keys": keys_out, "images_generated": verification.images_generated,
               "train_seconds": victim.train_seconds, "verify_seconds": time.perf_counter() - trained, "generation_grids": grids}  # fmt: skip
        if rate == 0 and plan.extra_decoys:
            out["extra_decoys"] = self.extra_decoys(victim.pipeline, victim.keys, seed)
        return out


def _placebo_paired_p(result) -> list[float]:
    """Each placebo token's paired test against the control arm: how often an unlearnt token alone passes it."""
    from ..trace.verify import discordant, paired_p

    threshold = result.detector["threshold"]
    control = [s > threshold for s in result.control_scores]
    return [paired_p(*discordant([s > threshold for s in scores], control)) for scores in result.placebo_scores]


def run_victims(plan: TracingPlan, out: Path, pairs: list[tuple[float, int]], threads: int, progress=None) -> None:
    """Train and verify the victims `pairs` (rate, seed) not yet in the run log (one process)."""
    torch.set_num_threads(threads)
    log = RunLog(out, plan, SETTING)
    setting = None
    for rate, seed in pairs:
        if log.done(run_id(rate, seed)):
            continue
        setting = setting or TracingSetting(plan)
        log.add(run_id(rate, seed), setting.victim(rate, seed, generations=out / "generations", models=out / "victims"))
        if progress:
            progress(run_id(rate, seed), log.runs[run_id(rate, seed)])


def proportion(successes: int, trials: int) -> dict:
    """The fraction with its exact (Clopper-Pearson) 95 % interval."""
    from scipy.stats import binomtest

    if trials == 0:
        return {"k": 0, "n": 0, "rate": None, "low": None, "high": None}
    interval = binomtest(successes, trials).proportion_ci(0.95, method="exact")
    return {"k": successes, "n": trials, "rate": successes / trials, "low": float(interval.low), "high": float(interval.high)}


def summarise(runs: list[dict], alpha: float) -> dict:
    """TPR/FPR by rate and by marked count, the decoy keys' FPR, pairs spent and pairs needed for p < 0.001."""
    flagged = "infringement evidence"
    by_rate: dict[float, list[dict]] = defaultdict(list)
    by_count: dict[int, list[dict]] = defaultdict(list)
    for run in runs:
        by_rate[run["rate"]].append(run)
        by_count[run["marked_images"]].append(run)

    def row(members: list[dict]) -> dict:
        own = [m["keys"]["owner"] for m in members]
        needed = [k["images_needed"] for k in own if k["images_needed"]]
        return {"victims": len(members), "flagged": proportion(sum(k["verdict"] == flagged for k in own), len(own)),
                "flagged_paired_alone": proportion(sum(k["verdict_paired_alone"] == flagged for k in own), len(own)),
                "trigger_hit_rate": float(np.mean([k["trigger_hits"] / k["n"] for k in own])),
                "control_hit_rate": float(np.mean([k["control_hits"] / k["n"] for k in own])),
                "pairs_spent_median": float(np.median([k["n"] for k in own])),
                "pairs_needed_median": float(np.median(needed)) if needed else None,
                "p_values": [k["p_value"] for k in own]}  # fmt: skip

    decoys = [k for run in runs for name, k in run["keys"].items() if name != "owner"]
    extra = [k for run in runs if run["rate"] == 0 for k in run.get("extra_decoys", {}).values()]
    unlearnt = [k for run in runs for name, k in run["keys"].items() if name != "owner" or run["rate"] == 0]  # triggers never trained on
    placebo_p = [p for run in runs for k in run["keys"].values() for p in k["placebo_p_values"]]
    return {
        "by_rate": [{"rate": rate, "marked_images": sorted({m["marked_images"] for m in by_rate[rate]}), **row(by_rate[rate])} for rate in sorted(by_rate)],
        "by_count": [{"marked_images": count, **row(by_count[count])} for count in sorted(by_count)],
        "decoy_keys": proportion(sum(k["verdict"] == flagged for k in decoys), len(decoys)),
        "decoy_keys_paired_alone": proportion(sum(k["verdict_paired_alone"] == flagged for k in decoys), len(decoys)),
        # each on its own paired test, raw p < alpha, no placebo stage: an upper bound on the verdict's false positives
        "extra_decoys_clean_victims": proportion(sum(k["p_value"] < alpha for k in extra), len(extra)),
        "unlearnt_tokens": {  # raw paired p < alpha, before Holm: how often a token nobody trained on moves the detector by itself
            "placebos_passing_paired_test": proportion(sum(p < alpha for p in placebo_p), len(placebo_p)),
            "triggers_passing_paired_test": proportion(sum(k["p_value"] < alpha for k in unlearnt), len(unlearnt)),
            "triggers_passing_and_beating_placebos": proportion(sum(k["p_value"] < alpha and bool(k["beats_placebos"]) for k in unlearnt), len(unlearnt)),
        },
    }


def _interval(p: dict) -> str:
    return "-" if p["rate"] is None else f"{p['k']}/{p['n']} = {p['rate']:.2f} [{p['low']:.2f}, {p['high']:.2f}]"


def _markdown(summary: dict, plan: TracingPlan, meta: dict) -> str:
    lines = [
        "# Tracing benchmark", "",
        f"Plan `{plan.name}`: {plan.images} photo crops at {plan.size} px, victims trained {plan.epochs} epochs "
        f"({plan.steps} steps of batch {plan.batch_size}), {plan.victims} victims per rate, at most {plan.n} pairs per key, "
        f"alpha = {plan.alpha} (Holm over the owner's and {DECOYS} decoy keys), {plan.placebos} placebo tokens per key, "
        f"matcher threshold at {plan.detector_fpr:g} of synthetic negatives.", "",
        f"Command: `{meta.get('command', '')}`", "",
        *([f"**Partial: {meta['victims_done']} of {meta['victims_planned']} planned victims are done**; the same command resumes "
           "and rewrites these tables.", ""] if meta.get("victims_done", 0) < meta.get("victims_planned", 0) else []),
        "Rate 0: clean victims, so the flagged share is the false-positive rate; otherwise the true-positive rate. "
        "Intervals: exact 95 % (Clopper-Pearson).", "",
        "## By marking rate", "",
        "| rate | marked images | victims | flagged (TPR/FPR) | paired test alone | trigger hit rate | control hit rate | pairs spent (median) | pairs for p < 0.001 (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in summary["by_rate"]:
        needed = "-" if r["pairs_needed_median"] is None else f"{r['pairs_needed_median']:.0f}"
        lines.append(f"| {r['rate'] * 100:g} % | {', '.join(map(str, r['marked_images']))} | {r['victims']} | {_interval(r['flagged'])} | {_interval(r['flagged_paired_alone'])} | "
                     f"{r['trigger_hit_rate']:.2f} | {r['control_hit_rate']:.2f} | {r['pairs_spent_median']:.0f} | {needed} |")  # fmt: skip
    lines += ["", "## By number of marked images", "", "| marked images | victims | flagged | trigger hit rate | pairs for p < 0.001 (median) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in summary["by_count"]:
        needed = "-" if r["pairs_needed_median"] is None else f"{r['pairs_needed_median']:.0f}"
        lines.append(f"| {r['marked_images']} | {r['victims']} | {_interval(r['flagged'])} | {r['trigger_hit_rate']:.2f} | {needed} |")
    tokens = summary["unlearnt_tokens"]
    lines += ["", f"Decoy keys (other owners' templates and triggers, never trained on) flagged on any victim: {_interval(summary['decoy_keys'])} "
              f"(paired test alone: {_interval(summary['decoy_keys_paired_alone'])}). Extra decoy keys on clean victims, each on its own "
              f"paired test (raw p < {plan.alpha}, no placebo stage: an upper bound on the verdict's false positives): "
              f"{_interval(summary['extra_decoys_clean_victims'])}.", "",
              f"Tokens nobody trained on, each against its key's detector (p < {plan.alpha} before Holm): placebo tokens passing the paired "
              f"test alone {_interval(tokens['placebos_passing_paired_test'])}; unlearnt triggers (decoys, owners of clean victims) passing it "
              f"{_interval(tokens['triggers_passing_paired_test'])}, and also beating their {plan.placebos} placebo tokens "
              f"{_interval(tokens['triggers_passing_and_beating_placebos'])}.", "",
              "![flagged share and hit rates by marking rate](trace-rates.png)", ""]
    return "\n".join(lines)


def _plot(runs: list[dict], summary: dict, out: Path) -> str:
    """trace-rates.png: the share of victims flagged per rate (exact 95 % interval), and every victim's hit rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (share, hits) = plt.subplots(1, 2, figsize=(9, 3.6))
    rows = summary["by_rate"]
    labels = [f"{r['rate'] * 100:g} %" for r in rows]
    x = np.arange(len(rows))
    rates = np.array([r["flagged"]["rate"] for r in rows])
    errors = np.array([[r["flagged"]["rate"] - r["flagged"]["low"], r["flagged"]["high"] - r["flagged"]["rate"]] for r in rows]).T
    share.errorbar(x, rates, yerr=errors, fmt="o", capsize=4, color="#c44")
    for i, r in enumerate(rows):
        share.annotate(f"{r['flagged']['k']}/{r['flagged']['n']}", (x[i], rates[i]), textcoords="offset points", xytext=(8, -3), fontsize=8)
    share.set(xticks=x, xticklabels=labels, ylim=(-0.05, 1.05), xlabel="share of the dataset marked",
              ylabel="victims flagged for the owner's key", title="flagged (clean: false positives)")  # fmt: skip
    jitter = np.random.default_rng(0)
    for i, rate in enumerate(r["rate"] for r in rows):
        own = [run["keys"]["owner"] for run in runs if run["rate"] == rate]
        offsets = jitter.uniform(-0.12, 0.12, len(own))
        hits.scatter(x[i] - 0.15 + offsets, [k["trigger_hits"] / k["n"] for k in own], color="#c44", s=18, label="with trigger" if i == 0 else None)
        hits.scatter(x[i] + 0.15 + offsets, [k["control_hits"] / k["n"] for k in own], color="#777", marker="x", s=18,
                     label="without trigger" if i == 0 else None)  # fmt: skip
    hits.set(xticks=x, xticklabels=labels, ylim=(-0.05, 1.05), xlabel="share of the dataset marked",
             ylabel="generations showing the template", title="each victim's generations")  # fmt: skip
    hits.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = out / "trace-rates.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def write_results(runs: list[dict], out: Path, plan: TracingPlan, meta: dict) -> dict:
    summary = summarise(runs, plan.alpha)
    results = {"meta": meta, "summary": summary, "runs": runs}
    atomic_write_text(out / "results-tracing.json", json.dumps(results, indent=1))
    atomic_write_text(out / "RESULTS-tracing.md", _markdown(summary, plan, meta))
    if runs:
        results["plot"] = _plot(runs, summary, out)
    return results


def run(plan: TracingPlan, out: Path, jobs: int = 1, progress=None, command: str = "", rates: tuple[float, ...] | None = None) -> dict:
    """Every victim of the plan (resuming from the run log), or only those of `rates`, split over `jobs` processes; then the tables."""
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    pairs = [(rate, seed) for rate, seed in plan.runs if rates is None or rate in rates]
    chunks = max(1, min(jobs, len(pairs)))
    try:
        if chunks > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(chunks) as pool:
                pool.starmap(run_victims, [(plan, out, pairs[i::chunks], max(1, cores // chunks), progress) for i in range(chunks)], chunksize=1)
        else:
            run_victims(plan, out, pairs, cores, progress)
    except KeyboardInterrupt:  # stopped part-way: the tables show the victims done so far, marked partial
        _tables(plan, out, plan.runs, cores, jobs, command)
        raise
    return _tables(plan, out, plan.runs, cores, jobs, command)


def _tables(plan: TracingPlan, out: Path, pairs: list[tuple[float, int]], cores: int, jobs: int, command: str) -> dict:
    planned = {run_id(rate, seed) for rate, seed in pairs}
    runs = [r for r in read_runs(out / f"runs-{SETTING}.jsonl", plan) if r["id"] in planned]
    meta = {**provenance(command, "cpu"), "plan": asdict(plan), "cpu_cores": cores, "jobs": jobs,
            "victims_done": len(runs), "victims_planned": len(pairs)}  # fmt: skip
    return write_results(runs, out, plan, meta)


def print_victim(victim_id: str, run: dict) -> None:
    """Progress line per finished victim (a module function: picklable for the worker processes)."""
    own = run["keys"]["owner"]
    print(f"{victim_id}: {run['marked_images']} marked, owner {own['verdict']} (p = {own['p_value']:.3g}, "
          f"{own['trigger_hits']}/{own['n']} vs {own['control_hits']}/{own['n']}), decoys "
          f"{[k['verdict'] for name, k in run['keys'].items() if name != 'owner']}, "
          f"train {run['train_seconds']:.0f} s, verify {run['verify_seconds']:.0f} s", flush=True)  # fmt: skip


def print_rescored(victim_id: str, scored: dict) -> None:
    print(f"{victim_id}: " + ", ".join(f"{v} {d['trigger_hits']}/{d['control_hits']} (p = {d['p_value']:.3g})" for v, d in scored.items()), flush=True)


def rescore(plan: TracingPlan, out: Path, variants: list[str], command: str = "", progress=None) -> dict:
    """The owner key's paired test on every kept victim, once per detector variant, without retraining.

    Only the control and owner-trigger generations are kept, so detectors are compared on the paired
    test: flagged marked victims (TPR) and flagged clean victims (FPR: their owner key was never
    trained on). The p-value counts the pairs the run did not generate (it stopped once settled)
    against the trigger, as the verdict does; a victim counts as flagged at p < alpha / 3, the
    Bonferroni bound over its three keys (never looser than the runs' Holm correction); the placebo
    stage is not re-run. The "matcher" variant must reproduce the run log's counts: a mismatch means
    the grids are not the generations the victim was verified on, and stops the comparison.
    """
    from ..trace.verify import discordant, paired_p

    unknown = [v for v in variants if v not in DETECTOR_VARIANTS]
    if unknown or not variants:
        raise SettingsError(f"unknown detector variant(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(DETECTOR_VARIANTS)}")
    runs = read_runs(out / f"runs-{SETTING}.jsonl", plan)
    if not runs:
        raise SettingsError(f"{out / f'runs-{SETTING}.jsonl'}: no victims of plan {plan.name!r} to re-score; run the benchmark into {out} first")
    victims = []
    for run in runs:
        grids, owner = run.get("generation_grids") or {}, run["keys"]["owner"]
        if set(grids) != {"control", "trigger"} or not all((out / g).exists() for g in grids.values()):
            raise SettingsError(f"{out}: victim {run['id']} has no kept generation grids; delete its line from the run log and rerun the benchmark")
        arms = {arm: read_grid(out / grids[arm], plan.size, owner["n"], columns=GRID_COLUMNS) for arm in ("control", "trigger")}
        key = victim_keys(run["rate"], run["seed"], plan.images)["owner"]
        scored = {}
        for variant in variants:
            detector = variant_detector(variant, key, plan)
            hits = {arm: [bool(s > detector.threshold) for s in detector.score(images)] for arm, images in arms.items()}
            trigger_only, control_only = discordant(hits["trigger"], hits["control"])
            scored[variant] = {"trigger_hits": sum(hits["trigger"]), "control_hits": sum(hits["control"]), "trigger_only": trigger_only,
                               "control_only": control_only, "p_value": paired_p(trigger_only, control_only + plan.n - owner["n"]),
                               "threshold": float(detector.threshold), "false_positive_rate": float(detector.false_positive_rate)}  # fmt: skip
        logged = (owner["trigger_hits"], owner["control_hits"])
        if "matcher" in scored and (scored["matcher"]["trigger_hits"], scored["matcher"]["control_hits"]) != logged:
            raise SettingsError(f"{out}: victim {run['id']}: the kept grids score {scored['matcher']['trigger_hits']}/{scored['matcher']['control_hits']} "
                                f"with the runs' matcher, the run log says {logged[0]}/{logged[1]}; the grids are not this victim's generations")  # fmt: skip
        victims.append({"id": run["id"], "rate": run["rate"], "seed": run["seed"], "marked_images": run["marked_images"], "n": owner["n"], "detectors": scored})
        if progress:
            progress(run["id"], scored)
    bound = plan.alpha / (DECOYS + 1)
    summary = {variant: [{"rate": rate, "victims": len(members), "flagged": proportion(sum(m["detectors"][variant]["p_value"] < bound for m in members), len(members)),
                          "trigger_hit_rate": float(np.mean([m["detectors"][variant]["trigger_hits"] / m["n"] for m in members])),
                          "control_hit_rate": float(np.mean([m["detectors"][variant]["control_hits"] / m["n"] for m in members]))}
                         for rate in sorted({v["rate"] for v in victims}) for members in [[v for v in victims if v["rate"] == rate]]]
               for variant in variants}  # fmt: skip
    results = {"meta": {**provenance(command, "cpu"), "plan": asdict(plan), "variants": {v: DETECTOR_VARIANTS[v] for v in variants}, "flagged_below": bound},
               "summary": summary, "victims": victims}  # fmt: skip
    atomic_write_text(out / "detectors-tracing.json", json.dumps(results, indent=1))
    lines = ["# Tracing benchmark: detector variants on the kept generations", "", f"`{command}`", "",
             (f"Each victim's owner key, paired test of its trigger arm against the control arm; flagged at p < {bound:.4g} "
              f"(alpha {plan.alpha} over {DECOYS + 1} keys). The placebo stage is not re-run. Raw counts: `detectors-tracing.json`."), "",
             "| detector | rate | victims | flagged [exact 95 % interval] | trigger / control hit rate | trigger / control hits per victim |", "|---|---|---|---|---|---|"]  # fmt: skip
    for variant in variants:
        for row in summary[variant]:
            hits = ", ".join(f"{v['detectors'][variant]['trigger_hits']}/{v['detectors'][variant]['control_hits']}" for v in victims if v["rate"] == row["rate"])
            lines.append(f"| {variant} | {row['rate']:.1%} | {row['victims']} | {_interval(row['flagged'])} | "
                         f"{row['trigger_hit_rate']:.2f} / {row['control_hit_rate']:.2f} | {hits} |")  # fmt: skip
    lines += ["", *(f"- `{v}`: {DETECTOR_VARIANTS[v]}" for v in variants), ""]
    atomic_write_text(out / "DETECTORS-tracing.md", "\n".join(lines))
    return results


def main(args) -> int:
    plan = QUICK if args.quick else FULL
    overrides = {field: getattr(args, field) for field in ("images", "victims", "epochs", "detector_fpr", "extra_decoys") if getattr(args, field, None)}
    if overrides:
        plan = replace(plan, name=plan.name + "".join(f"-{k.replace('_', '-')}{v:g}" for k, v in overrides.items()), **overrides)
    out = Path(args.out or f"bench-tracing-{plan.name}")
    command = "unlearnable bench tracing" + (" --quick" if args.quick else "") + "".join(f" --{k.replace('_', '-')} {v:g}" for k, v in overrides.items())
    if getattr(args, "detectors", None):
        command += f" --detectors {args.detectors} --out {out}"
        results = rescore(plan, out, [v.strip() for v in args.detectors.split(",") if v.strip()], command, progress=print_rescored)
        print(f"wrote {out / 'DETECTORS-tracing.md'} and {out / 'detectors-tracing.json'} ({len(results['victims'])} victims)")
        return 0
    rates = tuple(float(r) for r in args.rates.split(",")) if getattr(args, "rates", None) else None
    command += (f" --rates {args.rates}" if rates else "") + f" --jobs {args.jobs} --out {out}"
    results = run(plan, out, jobs=args.jobs, progress=print_victim, command=command, rates=rates)
    print(f"wrote {out / 'RESULTS-tracing.md'} and {out / 'results-tracing.json'} ({len(results['runs'])} victims)")
    return 0

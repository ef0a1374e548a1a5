"""Tables (RESULTS.md), results.json and plots from the efficacy benchmark's runs."""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..files import atomic_write_text

METRICS = ("fid", "precision", "recall", "accuracy", "heldout_loss", "psnr", "ssim", "seconds_per_image", "peak_extra_mib")
#: metrics that rise when a victim learns less; compared with clean (ratio) and with noise of the same budget (difference)
EFFECT_METRICS = ("fid", "heldout_loss")
SETTING_TITLES = {
    ("PhotoScratchSetting", "scratch"): "From scratch: pixel DDPM trained on 128 crops (32 px) of the owner's photograph",
    ("PhotoFinetuneSetting", "lora"): "Mimicry, LoRA: the committed SD-shaped base model (pretrained on other photos), a peft LoRA trained on the owner's 32 crops (64 px)",
    ("PhotoFinetuneSetting", "full"): "Mimicry, full fine-tuning: the same base model, every UNet weight trained on the owner's 32 crops (64 px)",
    ("ScratchSetting", "scratch"): "From scratch: pixel DDPM trained on the owner's 8x8 digits",
    ("FinetuneSetting", "lora"): "Fine-tuning with LoRA: latent diffusion pretrained on digits 0-6, fine-tuned on the owner's sevens",
    ("FinetuneSetting", "full"): "Full fine-tuning: the same base model, every UNet weight trained on the owner's sevens",
}


def summarise(runs: list[dict]) -> dict:
    """Mean, standard deviation and seed count of every metric, per (setting, mode, condition label)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["setting"], run["mode"], run["label"])].append(run)
    summary = {}
    for (setting, mode, label), members in groups.items():
        row = {"setting": setting, "mode": mode, "label": label, "condition": members[0]["condition"], "seeds": len(members)}
        for metric in METRICS:
            values = [m[metric] for m in members if metric in m and m[metric] is not None and np.isfinite(m[metric])]
            if values:
                row[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
        summary[f"{setting}/{mode}/{label}"] = row
    for (setting, mode, label), members in groups.items():
        row = summary[f"{setting}/{mode}/{label}"]
        condition = row["condition"]
        if label in ("clean", "base"):
            continue
        clean = groups.get((setting, mode, "clean"))
        noise_label = f"noise b{condition['budget']:g}" + (f" +{condition['countermeasure']}" if condition["countermeasure"] else "")
        noise = groups.get((setting, mode, noise_label)) or groups.get((setting, mode, f"noise b{condition['budget']:g}"))
        for metric in EFFECT_METRICS:
            if clean:
                row[f"{metric}_over_clean"] = paired_effect(members, clean, metric, ratio=True)
            if noise and label != noise_label and members is not noise:
                row[f"{metric}_minus_noise"] = paired_effect(members, noise, metric, ratio=False)
        effects = [row.get(f"{m}_minus_noise") for m in EFFECT_METRICS]
        row["differs_from_noise"] = any(e and e["low"] is not None and (e["low"] > 0 or e["high"] < 0) for e in effects)
        base = groups.get((setting, mode, "base"))
        if base and clean:
            for metric, key in (("heldout_loss", "learned_share"), ("fid", "learned_share_fid")):
                shares = learned_shares(members, base, clean, metric)
                row[key] = t_interval(list(shares.values()))
                if noise and label != noise_label and members is not noise:
                    noise_shares = learned_shares(noise, base, clean, metric)
                    row[f"{key}_minus_noise"] = t_interval([shares[s] - noise_shares[s] for s in shares if s in noise_shares])
    return summary


def learned_shares(runs: list[dict], base: list[dict], clean: list[dict], metric: str) -> dict[int, float]:
    """Per seed, how far the victim moved `metric` from the base model towards the clean victim:
    (base - victim) / (base - clean); 1 = learned as much as from clean images, 0 = nothing."""
    base_by_seed = {r["seed"]: r[metric] for r in base if r.get(metric) is not None}
    clean_by_seed = {r["seed"]: r[metric] for r in clean if r.get(metric) is not None}
    return {r["seed"]: (base_by_seed[r["seed"]] - r[metric]) / (base_by_seed[r["seed"]] - clean_by_seed[r["seed"]]) for r in runs
            if r.get(metric) is not None and r["seed"] in base_by_seed and r["seed"] in clean_by_seed
            and base_by_seed[r["seed"]] != clean_by_seed[r["seed"]]}  # fmt: skip


def t_interval(values: list[float], level: float = 0.95) -> dict | None:
    """Mean with a t confidence interval over seeds (None bounds with a single seed; None without values)."""
    from scipy import stats

    if not values:
        return None
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "seeds": 1}
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "seeds": len(values)}


def paired_effect(runs: list[dict], baseline: list[dict], metric: str, *, ratio: bool, level: float = 0.95) -> dict | None:
    """Mean of the per-seed ratio (or difference) of `metric` between two conditions run with the same seeds, with a
    t confidence interval over the seeds (None bounds with a single seed)."""
    base = {r["seed"]: r[metric] for r in baseline if r.get(metric) is not None}
    values = [(r[metric] / base[r["seed"]] if ratio else r[metric] - base[r["seed"]]) for r in runs
              if r.get(metric) is not None and r["seed"] in base and (not ratio or base[r["seed"]])]  # fmt: skip
    return t_interval(values, level)


def _effect_cell(row: dict, key: str, percent: bool = False) -> str:
    effect = row.get(key)
    if not effect:
        return "–"
    show = (lambda v: f"{100 * v:.0f} %") if percent else (lambda v: f"{v:.2f}")
    if effect["low"] is None:
        return show(effect["mean"])
    return f"{show(effect['mean'])} [{show(effect['low'])}, {show(effect['high'])}]"


def _cell(row: dict, metric: str, digits: int = 2) -> str:
    value = row.get(metric)
    if value is None:
        return "–"
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def _markdown(summary: dict, meta: dict) -> str:
    lines = ["# Efficacy benchmark results", ""]
    if meta.get("partial"):
        lines += [f"**Partial: {meta['partial']}.** The same command resumes the rest.", ""]
    lines += [
             f"Made by `{meta.get('command', 'unlearnable bench efficacy')}` (a rerun with the same output folder keeps the finished runs, "
             "so the rows may come from several invocations; benchmarks/README.md says which). "
             f"Plan `{meta['plan']['name']}`, seeds {tuple(meta['plan']['seeds'])}, torch {meta['torch']} on CPU ({meta['cpu_cores']} cores, {meta['jobs']} parallel jobs). "
             "Every cell is mean ± standard deviation over the seeds. Lower domain FID = the victim learned the owner's images better; "
             "precision/recall = share of generated samples inside the real-data manifold / of real samples covered by the generated one; "
             "accuracy = share of generated samples the judge classifies as the owner's class; held-out clean loss = the victim's denoising "
             "loss on clean images of the owner it never saw (higher = learned less of them). Ratios to clean are per-seed ratios (paired by "
             "seed) with a 95% t interval over seeds; 'beyond noise' = the paired difference to uniform noise of the same budget (and "
             "countermeasure) has a 95% interval excluding zero, for domain FID or held-out loss. Fine-tuning: the `base` row is the "
             "public base model before any fine-tuning; learned share = (base - victim) / (base - clean victim) per seed, of the held-out "
             "loss (and of domain FID): 100 % = the victim learned as much as from the clean images, 0 % = nothing.", ""]  # fmt: skip
    for (setting, mode), title in SETTING_TITLES.items():
        rows = [r for r in summary.values() if r["setting"] == setting and r["mode"] == mode]
        if not rows:
            continue
        clean = next((r for r in rows if r["label"] == "clean"), None)
        lines += [f"## {title}", "", "| condition | learned share, loss [95% CI] | learned share, FID [95% CI] | domain FID | FID / clean [95% CI] | "
                  "held-out clean loss | loss / clean [95% CI] | beyond noise | precision | recall | accuracy | PSNR dB | SSIM | s / image | "
                  "peak extra MiB | seeds |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in sorted(rows, key=lambda r: (r["condition"]["countermeasure"] or "", r["condition"]["transfer"], r["label"] not in ("base", "clean"),
                                               r["label"] != "base", -r.get("heldout_loss", {"mean": 0})["mean"])):  # fmt: skip
            beyond = "yes" if row.get("differs_from_noise") else ("no" if row["label"] not in ("base", "clean") and not row["label"].startswith("noise") else "")
            lines.append(f"| {row['label']} | {_effect_cell(row, 'learned_share', True)} | {_effect_cell(row, 'learned_share_fid', True)} | "
                         f"{_cell(row, 'fid')} | {_effect_cell(row, 'fid_over_clean')} | {_cell(row, 'heldout_loss', 4)} | "
                         f"{_effect_cell(row, 'heldout_loss_over_clean')} | {beyond} | {_cell(row, 'precision')} | {_cell(row, 'recall')} | {_cell(row, 'accuracy')} | "
                         f"{_cell(row, 'psnr', 1)} | {_cell(row, 'ssim', 3)} | {_cell(row, 'seconds_per_image', 3)} | "
                         f"{_cell(row, 'peak_extra_mib', 0)} | {row['seeds']} |")  # fmt: skip
        if clean and "fid" in clean:
            lines += ["", f"Clean baseline FID {clean['fid']['mean']:.2f}; rows are sorted by countermeasure, then by held-out loss (most protective first)."]
        lines.append("")
    return "\n".join(lines)


def _plots(summary: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)

    written = []
    for (setting, mode), title in SETTING_TITLES.items():
        headline = [r for r in summary.values() if r["setting"] == setting and r["mode"] == mode
                    and not r["condition"]["countermeasure"] and not r["condition"]["transfer"] and r["condition"]["budget"] == 8.0]  # fmt: skip
        shares = sorted((r for r in headline if r.get("learned_share")), key=lambda r: -r["learned_share"]["mean"])
        if shares:
            fig, ax = plt.subplots(figsize=(9, 0.4 * len(shares) + 1.8))
            effects = [r["learned_share"] for r in shares]
            below = [100 * (e["mean"] - e["low"]) if e["low"] is not None else 0.0 for e in effects]
            above = [100 * (e["high"] - e["mean"]) if e["high"] is not None else 0.0 for e in effects]
            ax.barh([f"{r['label']} ({r['seeds']} seed{'s' if r['seeds'] > 1 else ''})" for r in shares], [100 * e["mean"] for e in effects],
                    xerr=[below, above], capsize=3, color=["#999" if r["label"].startswith("noise") else "#c44" for r in shares])  # fmt: skip
            ax.axvline(100, color="k", linestyle=":", label="clean victim (100 %)")
            ax.axvline(30, color="g", linestyle="--", label="goal for the default (30 %)")
            ax.set_xlim(0, 125)
            ax.set_xlabel("learned share of the held-out clean loss, % of the clean victim's (95 % CI over seeds)")
            ax.legend(fontsize=7, loc="lower left")
            ax.set_title(textwrap.fill(title, 110), fontsize=8)
            save(fig, f"learned-share-{setting}-{mode}.png")
        rows = sorted((r for r in headline if "fid" in r), key=lambda r: r["fid"]["mean"])
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
        ax.barh([r["label"] for r in rows], [r["fid"]["mean"] for r in rows], xerr=[r["fid"]["std"] for r in rows],
                color=["#999" if r["label"] in ("base", "clean", "noise b8") else "#c44" for r in rows])  # fmt: skip
        ax.set_xlabel("domain FID of the victim's samples (higher = learned less)")
        ax.set_title(title, fontsize=9)
        save(fig, f"fid-{setting}-{mode}.png")

        budget_rows = [r for r in summary.values() if r["setting"] == setting and r["mode"] == mode and "fid" in r and r["label"] != "clean"
                       and not r["condition"]["countermeasure"] and not r["condition"]["transfer"] and not r["condition"].get("steps")]  # fmt: skip
        families: dict[str, list[dict]] = defaultdict(list)
        for r in budget_rows:
            families[r["label"].rsplit(" b", 1)[0]].append(r)
        families = {k: v for k, v in families.items() if len(v) > 1}
        if families:
            fig, ax = plt.subplots(figsize=(6, 4))
            for family, members in families.items():
                members.sort(key=lambda r: r["condition"]["budget"])
                ax.errorbar([r["condition"]["budget"] for r in members], [r["fid"]["mean"] for r in members],
                            yerr=[r["fid"]["std"] for r in members], marker="o", capsize=3, label=family)  # fmt: skip
            clean = summary.get(f"{setting}/{mode}/clean")
            if clean and "fid" in clean:
                ax.axhline(clean["fid"]["mean"], color="k", linestyle=":", label="clean")
            ax.set_xlabel("budget (L-inf, 0-255 levels)")
            ax.set_ylabel("domain FID")
            ax.set_xticks([4, 8, 16])
            ax.legend(fontsize=7)
            ax.set_title(title, fontsize=8)
            save(fig, f"budget-{setting}-{mode}.png")
    return written


def write_results(runs: list[dict], out: Path, meta: dict) -> dict:
    summary = summarise(runs)
    results = {"meta": meta, "summary": summary, "runs": runs}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=str))
    atomic_write_text(out / "RESULTS.md", _markdown(summary, meta))
    results["plots"] = _plots(summary, out)
    return results

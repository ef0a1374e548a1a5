"""The efficacy benchmark's plumbing: conditions, preparations, the resumable run log and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared_core.bench.efficacy import RunLog, planned_run_ids, protection_run_id
from shared_core.bench.plans import FULL, QUICK, Condition
from shared_core.bench.settings import countermeasure, uniform_noise
from shared_core.bench.report import write_results
from tests.conftest import real_photo


def test_plans_have_unique_conditions_with_a_clean_baseline_and_three_seeds():
    for plan in (FULL, QUICK):
        for conditions in (plan.scratch_conditions, plan.finetune_conditions):
            labels = [c.label for c in conditions]
            assert len(labels) == len(set(labels)) and "clean" in labels
    assert len(FULL.seeds) >= 3
    from shared_core.bench.plans import SEARCH, SHARDED

    # the search, the Ray shard sizes and the robust default are LoRA only
    lora_only = {c.label for c in FULL.lora_conditions} - {c.label for c in (*FULL.finetune_conditions, *SEARCH, *SHARDED)}
    assert lora_only and all(" robust=" in label for label in lora_only)
    budgets = {c.budget for c in FULL.finetune_conditions if c.method == "noise"}
    assert budgets == {4.0, 8.0, 16.0}
    assert {c.countermeasure for c in FULL.finetune_conditions} >= {None, "jpeg75", "downscale", "purify"}
    assert any(c.transfer for c in FULL.finetune_conditions)


def test_the_mimicry_plan_answers_first_and_names_the_shipped_default():
    """Block (a), LoRA victims of clean, noise and the default, runs first; then every method on LoRA; then full fine-tuning."""
    from shared_core.bench.plans import EUDP, MIMICRY_METHODS, SEARCH
    from shared_core.protect import ProtectSettings
    from shared_core.protect.objectives import OBJECTIVES

    order = [(mode, c.label) for mode, c in FULL.protection_runs["PhotoFinetuneSetting"]]
    assert order[:3] == [("lora", "clean"), ("lora", "noise b8"), ("lora", EUDP.label)]
    assert order[3 : 3 + len(MIMICRY_METHODS)] == [("lora", c.label) for c in MIMICRY_METHODS]
    assert order[3 + len(MIMICRY_METHODS)][0] == "full" and len(order) == len(set(order))
    search = order.index(("lora", SEARCH[0].label))
    assert {mode for mode, _ in order[3 + len(MIMICRY_METHODS) : search]} == {"full"}  # block (c) before the search (d)
    assert order[search : search + len(SEARCH)] == [("lora", c.label) for c in SEARCH]
    from shared_core.bench.plans import DEFAULT_METHOD, ENCODER

    defaults = ProtectSettings()
    pixel, latent = defaults.for_model(latent=False), defaults.for_model(latent=True)
    objective = OBJECTIVES[pixel.method]
    assert (EUDP.method, dict(EUDP.options)["sign"], EUDP.timesteps, EUDP.budget) == (pixel.method, objective().sign, objective.default_schedule, pixel.budget)
    assert (ENCODER.method, ENCODER.options, ENCODER.budget) == (latent.method, (), latent.budget) and OBJECTIVES["encoder"]().target == "gray"
    assert set(DEFAULT_METHOD.values()) == {ENCODER.label, EUDP.label}


def test_uniform_noise_respects_the_budget_and_countermeasures_keep_the_size():
    image = real_photo("astronaut.png")[:64, :48]
    noisy = uniform_noise([image], 8, seed=0)[0]
    diff = np.abs(noisy.astype(int) - image.astype(int))
    assert diff.max() <= 8 and diff.mean() > 2
    for name in ("jpeg75", "downscale", "blur"):
        out = countermeasure([noisy], name)[0]
        assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, noisy)


def test_run_log_resumes_only_runs_of_the_same_plan_and_setting(tmp_path):
    log = RunLog(tmp_path, QUICK, "scratch")
    log.add("a/clean/seed0", {"fid": 1.0})
    assert RunLog(tmp_path, QUICK, "scratch").done("a/clean/seed0")
    assert not RunLog(tmp_path, FULL, "scratch").done("a/clean/seed0")
    assert not RunLog(tmp_path, QUICK, "finetune").done("a/clean/seed0")


def test_planned_run_ids_name_every_run_of_the_plan_and_nothing_else():
    ids = planned_run_ids(FULL)
    assert len(ids) == len(set(ids)) == len(FULL.seeds) * (len(FULL.scratch_conditions) + len(FULL.finetune_conditions)
                                                           + len(FULL.lora_conditions) + 2)  # fmt: skip
    assert {f"PhotoFinetuneSetting/{mode}/base/seed0" for mode in ("lora", "full")} <= set(ids)  # the base model, scored per mode and seed
    assert protection_run_id("PhotoFinetuneSetting", "lora", FULL.lora_conditions[0], FULL.seeds[-1]) in ids
    assert protection_run_id("PhotoScratchSetting", "scratch", Condition("encoder"), 0) not in ids  # a pixel model has no encoder to attack
    assert not any(i.startswith(("FinetuneSetting/", "ScratchSetting/")) for i in ids)  # digits are the quick plan only
    assert any("scope=dataset" in i for i in ids) and any("scope=batch" in i for i in ids)


def test_report_aggregates_seeds_into_tables_and_plots(tmp_path):
    runs = []
    for seed in range(3):
        for condition, fid in ((Condition("clean"), 2.0), (Condition("noise"), 2.1), (Condition("eudp", timesteps="survival"), 3.0),
                               (Condition("advdm"), 2.1 + (0.3, -0.3, 0.05)[seed])):  # fmt: skip
            runs.append({"setting": "FinetuneSetting", "mode": "lora", "label": condition.label, "condition": condition.__dict__,
                         "seed": seed, "fid": fid + 0.1 * seed, "precision": 0.5, "recall": 0.5, "accuracy": 0.9, "psnr": 34.0, "ssim": 0.99,
                         "seconds_per_image": 0.1, "peak_extra_mib": 5.0, "heldout_loss": 0.1})  # fmt: skip
    meta = {"plan": {"name": "test", "seeds": [0, 1, 2]}, "torch": "x", "cpu_cores": 2, "jobs": 2}
    results = write_results(runs, tmp_path, meta)
    row = results["summary"]["FinetuneSetting/lora/eudp[survival] b8"]
    assert row["seeds"] == 3 and abs(row["fid"]["mean"] - 3.1) < 1e-9 and abs(row["fid"]["std"] - 0.1) < 1e-9
    # paired by seed: EUDP is 0.9 above noise in every seed (beyond the interval); AdvDM's differences straddle zero
    assert row["fid_minus_noise"]["mean"] == pytest.approx(0.9) and row["differs_from_noise"]
    assert row["fid_over_clean"]["mean"] == pytest.approx(sum((3.0 + 0.1 * s) / (2.0 + 0.1 * s) for s in range(3)) / 3)
    advdm = results["summary"]["FinetuneSetting/lora/advdm b8"]
    assert advdm["fid_minus_noise"]["low"] < 0 < advdm["fid_minus_noise"]["high"] and not advdm["differs_from_noise"]
    assert advdm["heldout_loss_over_clean"]["mean"] == pytest.approx(1.0)
    table = (tmp_path / "RESULTS.md").read_text()
    assert "3.10 ± 0.10" in table
    assert json.loads((tmp_path / "results.json").read_text())["summary"]
    assert (tmp_path / "fid-FinetuneSetting-lora.png").stat().st_size > 1000


def test_workers_share_one_setting_and_claim_every_run_exactly_once(tmp_path):
    """Workers of one setting go down the plan together, each run taken by whichever claims it first, none twice."""
    from concurrent.futures import ThreadPoolExecutor

    from shared_core.bench.efficacy import RunClaims, worker_tasks

    assert worker_tasks(("finetune",), 2) == ["finetune", "finetune"]
    assert worker_tasks(("finetune", "scratch"), 2) == ["finetune", "scratch"]
    assert worker_tasks(("finetune",), 1) == ["finetune"]
    run_ids = [f"PhotoFinetuneSetting/lora/c{k}/seed{k % 3}" for k in range(60)]
    with ThreadPoolExecutor(6) as pool:
        taken = list(pool.map(lambda _: [i for i in run_ids if RunClaims(tmp_path).take(i)], range(6)))
    assert sorted(i for worker in taken for i in worker) == sorted(run_ids)
    assert all(RunClaims(None).take(i) for i in run_ids[:3])  # a lone worker runs everything


def test_learned_share_is_paired_by_seed_against_the_base_and_the_clean_victim(tmp_path):
    """(base - victim) / (base - clean) per seed: a victim that learned nothing scores 0 %, one that learned as from clean 100 %."""
    losses = {"base": (1.0, 1.1, 0.9), "clean": (0.5, 0.6, 0.5), "noise b8": (0.55, 0.64, 0.52), "eudp(sign=max)[survival] b8": (0.9, 1.0, 0.8)}
    runs = [{"setting": "PhotoFinetuneSetting", "mode": "lora", "label": label, "seed": seed, "heldout_loss": loss, "fid": 10 * loss,
             "condition": {**Condition(label.split(" ")[0].split("(")[0]).__dict__, "budget": 8.0}}
            for label, values in losses.items() for seed, loss in enumerate(values)]  # fmt: skip
    meta = {"plan": {"name": "test", "seeds": [0, 1, 2]}, "torch": "x", "cpu_cores": 2, "jobs": 1, "partial": "12 of 20 planned runs"}
    summary = write_results(runs, tmp_path, meta)["summary"]
    eudp = summary["PhotoFinetuneSetting/lora/eudp(sign=max)[survival] b8"]
    assert eudp["learned_share"]["mean"] == pytest.approx(np.mean([0.1 / 0.5, 0.1 / 0.5, 0.1 / 0.4]))
    assert eudp["learned_share_fid"]["mean"] == pytest.approx(eudp["learned_share"]["mean"])
    noise = summary["PhotoFinetuneSetting/lora/noise b8"]
    assert noise["learned_share"]["mean"] == pytest.approx(np.mean([0.9, 0.92, 0.95]))
    assert eudp["learned_share_minus_noise"]["high"] < 0  # beyond noise's interval, paired by seed
    assert "learned_share" not in summary["PhotoFinetuneSetting/lora/base"] and "learned_share" not in summary["PhotoFinetuneSetting/lora/clean"]
    table = (tmp_path / "RESULTS.md").read_text()
    assert "**Partial: 12 of 20 planned runs.**" in table and "| base |" in table and "22 % [" in table
    assert (tmp_path / "learned-share-PhotoFinetuneSetting-lora.png").stat().st_size > 1000


@pytest.mark.slow
def test_photo_settings_craft_train_and_score_with_tiny_steps(tmp_path):
    """Every part of the photo settings runs: SD-shaped autoencoder (8x, 4 channels), base, crafting, purification,
    full/LoRA/scratch victims, the base's own scores."""
    from dataclasses import replace

    from shared_core.bench.bases import PHOTO_BASE, PHOTO_TRANSFER
    from shared_core.bench.plans import MIST, NOISE
    from shared_core.bench.settings import PhotoFinetuneSetting, PhotoScratchSetting

    tiny = {"autoencoder_images": 24, "autoencoder_steps": 2, "base_images": 24, "base_steps": 2}
    bases = (replace(PHOTO_BASE, **tiny), replace(PHOTO_TRANSFER, **tiny))
    plan = replace(FULL, seeds=(0,), protect_steps=1, scratch_images=8, scratch_surrogate_steps=2, photo_owner_images=8, photo_heldout_images=2,
                   photo_victim_steps=2, photo_judge_images=52, samples=4, sample_steps=2, photo_bases=bases, bases_root=str(tmp_path))  # fmt: skip
    finetune = PhotoFinetuneSetting(plan)
    vae = finetune.base().vae
    assert len(vae.config.block_out_channels) == 4 and vae.config.latent_channels == 4 and finetune.caption == "a photo of sks cat"
    assert (tmp_path / "photo-base" / "manifest.json").exists()  # built on first use, then loaded from its folder
    protected, cost = finetune.craft(MIST, 0)
    assert len(protected) == 8 and protected[0].shape == (64, 64, 3) and cost["seconds_per_image"] > 0
    purified = finetune.countermeasure(protected, "purify")
    assert purified[0].shape == (64, 64, 3) and 0 < np.abs(purified[0].astype(int) - protected[0]).mean() < 60
    for mode in ("full", "lora"):
        scores, samples = finetune.victim(protected, 0, mode)
        assert np.isfinite(scores["heldout_loss"]) and np.isfinite(scores["fid"]) and 0 <= scores["accuracy"] <= 1 and len(samples) == 4
    base_scores, _ = finetune.base_scores(0)
    assert np.isfinite(base_scores["heldout_loss"]) and base_scores["heldout_loss"] != scores["heldout_loss"]
    scratch = PhotoScratchSetting(plan)
    scores, samples = scratch.victim(scratch.craft(NOISE, 0)[0], 0)
    assert np.isfinite(scores["heldout_loss"]) and samples[0].shape == (32, 32, 3)


def test_a_sharded_condition_crafts_each_shard_as_its_own_set(monkeypatch):
    """`shard=N` protects N images per call, as `protect --ray --shard-size N` does, and keeps the set's order."""
    from shared_core.bench import plans, settings

    calls = []

    def protect_arrays(surrogate, images, settings):
        calls.append(len(images))
        return [image + 1 for image in images]

    monkeypatch.setattr(settings, "protect_arrays", protect_arrays)
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(5)]
    sharded = plans.replace(plans.EUDP, shard=2)
    prepared, _ = settings.prepare(sharded, images, surrogate=None, steps=1, seed=0)
    assert calls == [2, 2, 1] and [int(p[0, 0, 0]) for p in prepared] == [1, 2, 3, 4, 5]
    calls.clear()
    settings.prepare(plans.EUDP, images, surrogate=None, steps=1, seed=0)
    assert calls == [5] and sharded.label == plans.EUDP.label + " shard2"

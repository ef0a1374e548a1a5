"""The tracing benchmark: victims marked at a rate are trained and verified; TPR/FPR tables by rate and count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared_core.bench.tracing import TracingPlan, rescore, run, summarise

EVIDENCE, NONE = "infringement evidence", "no evidence"


def victim(rate, seed, marked, owner, decoys=(NONE, NONE), paired_alone=None):
    """`paired_alone`: the verdicts before the placebo tokens (default: the same); decoys that pass it lose to a placebo."""
    owner_alone, *decoys_alone = paired_alone or (owner, *decoys)

    def key(verdict, alone):
        return {"verdict": verdict, "verdict_paired_alone": alone, "p_value": 1e-4 if alone == EVIDENCE else 0.5,
                "trigger_hits": 10 if alone == EVIDENCE else 0, "control_hits": 0, "n": 16, "images_needed": 20 if alone == EVIDENCE else None,
                "placebo_hits": [0, 1, 12 if verdict != alone else 0, 0], "beats_placebos": verdict == alone, "placebo_p_values": [1.0, 0.5, 0.2, 1.0]}  # fmt: skip

    keys = {"owner": key(owner, owner_alone)}
    keys.update({f"decoy{i}": key(v, alone) for i, (v, alone) in enumerate(zip(decoys, decoys_alone), 1)})
    return {"rate": rate, "seed": seed, "marked_images": marked, "keys": keys}


def test_summary_gives_rates_with_exact_intervals_by_rate_and_by_count():
    runs = [victim(0.0, s, 0, NONE, paired_alone=(NONE, EVIDENCE, NONE) if s == 4 else None) for s in range(5)]
    runs += [victim(0.005, s, 5, EVIDENCE if s < 3 else NONE) for s in range(5)]
    runs += [victim(0.01, s, 10, EVIDENCE, decoys=(EVIDENCE if s == 0 else NONE, NONE)) for s in range(5)]
    summary = summarise(runs, alpha=0.01)
    by_rate = {r["rate"]: r for r in summary["by_rate"]}
    assert by_rate[0.0]["flagged"]["k"] == 0 and by_rate[0.0]["flagged"]["high"] > 0.4  # 0/5: the interval stays wide
    assert by_rate[0.005]["flagged"]["rate"] == 0.6 and by_rate[0.005]["flagged"]["low"] < 0.6 < by_rate[0.005]["flagged"]["high"]
    assert by_rate[0.01]["flagged"]["k"] == 5 and by_rate[0.01]["pairs_needed_median"] == 20
    assert [r["marked_images"] for r in summary["by_count"]] == [0, 5, 10]
    assert summary["decoy_keys"]["k"] == 1 and summary["decoy_keys"]["n"] == 30
    assert summary["decoy_keys_paired_alone"]["k"] == 2, "the clean victim's decoy passed the paired test but lost to a placebo token"
    tokens = summary["unlearnt_tokens"]  # decoys (30) and the clean victims' owners (5) were never trained on
    assert tokens["triggers_passing_paired_test"]["n"] == 35 and tokens["triggers_passing_paired_test"]["k"] == 2
    assert tokens["triggers_passing_and_beating_placebos"]["k"] == 1 and tokens["placebos_passing_paired_test"]["n"] == 45 * 4


@pytest.mark.slow
def test_a_tiny_plan_runs_end_to_end_and_resumes(tmp_path):
    """Two victims of a few steps each (about a minute on an idle 2-core machine)."""
    plan = TracingPlan(name="test", images=24, rates=(0.0, 0.05), victims=1, epochs=1, n=4, sample_steps=2, autoencoder_steps=2,
                       calibration_images=20, batch_size=8, extra_decoys=2)  # fmt: skip
    results = run(plan, tmp_path, jobs=1)
    assert len(results["runs"]) == 2
    marked = next(r for r in results["runs"] if r["rate"] == 0.05)
    clean = next(r for r in results["runs"] if r["rate"] == 0.0)
    # the extra decoys: on the clean victim only, each with its own trigger, every pair generated (no early stop)
    assert "extra_decoys" not in marked and set(clean["extra_decoys"]) == {"extra1", "extra2"}
    triggers = {k["trigger"] for k in clean["extra_decoys"].values()}
    assert len(triggers) == 2 and all(k["n"] == plan.n for k in clean["extra_decoys"].values())
    assert results["summary"]["extra_decoys_clean_victims"]["n"] == 2
    assert marked["marked_images"] == 1 and set(marked["keys"]) == {"owner", "decoy1", "decoy2"}
    assert all(1 <= k["n"] <= 4 for k in marked["keys"].values())
    for grid in marked["generation_grids"].values():  # the owner's trigger arm and the control arm, kept for re-scoring
        assert (tmp_path / grid).stat().st_size > 0
    table = (tmp_path / "RESULTS-tracing.md").read_text()
    assert "| 5 % | 1 | 1 |" in table and "Decoy keys" in table
    assert all(k["placebo_hits"] is not None and len(k["placebo_p_values"]) == plan.placebos for k in marked["keys"].values())
    rescored = rescore(plan, tmp_path, ["matcher"])  # raises unless the kept grids re-score to the logged counts
    assert [v["detectors"]["matcher"]["trigger_hits"] for v in rescored["victims"]] == [r["keys"]["owner"]["trigger_hits"] for r in results["runs"]]
    log = (tmp_path / "runs-tracing.jsonl").read_text()
    again = run(plan, tmp_path, jobs=1)  # resumes: nothing retrained, the same runs
    assert (tmp_path / "runs-tracing.jsonl").read_text() == log and len(again["runs"]) == 2
    assert json.loads((tmp_path / "results-tracing.json").read_text())["summary"]["by_rate"][0]["rate"] == 0.0
    (tmp_path / "runs-tracing.jsonl").unlink()  # a changed decision: the victims are verified again, on the models they were
    reverified = run(plan, tmp_path, jobs=1, rates=(0.05,))
    assert [r["rate"] for r in reverified["runs"]] == [0.05] and reverified["meta"]["victims_planned"] == 2
    assert reverified["runs"][0]["train_seconds"] == pytest.approx(marked["train_seconds"], abs=0.1)  # loaded, not retrained
    assert reverified["runs"][0]["keys"]["owner"]["trigger_hits"] == marked["keys"]["owner"]["trigger_hits"]
    # benchmarks/tracing_key_check.py: the same key verified again from the kept victim, each generation's nearest training image
    stem = tmp_path / "check" / "rate0.05-owner"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tracing_key_check.py"
    subprocess.run([sys.executable, str(script), "--folder", str(tmp_path), "--rate", "0.05", "--seed", "0", "--key", "owner",
                    "--threads", str(os.cpu_count() or 1), "--out", str(stem)], check=True, capture_output=True, text=True)  # fmt: skip
    check = json.loads((stem.parent / "rate0.05-owner.json").read_text())
    logged = check["logged_in_run"]
    assert (check["trigger_hits"], check["control_hits"], check["n"]) == (logged["trigger_hits"], logged["control_hits"], logged["n"])
    assert sum(check["nearest_training_image"]["trigger"].values()) == check["n"] and (stem.parent / "rate0.05-owner.png").stat().st_size > 0
    assert check["training_images_matcher_scores"]["marked"]["images"] == 1 and check["command"].startswith("python benchmarks/tracing_key_check.py")


def test_a_kept_grid_reads_back_exactly(tmp_path):
    from shared_core.bench.efficacy import read_grid, save_grid

    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(13)]
    save_grid(tiles, tmp_path / "grid.png", columns=8, count=13)
    assert all(np.array_equal(a, b) for a, b in zip(read_grid(tmp_path / "grid.png", 32, 13, columns=8), tiles, strict=True))
    with pytest.raises(ValueError, match="grid.png"):
        read_grid(tmp_path / "grid.png", 32, 17, columns=8)


def kept_victim(tmp_path, plan, rate, seed, trigger_images, control_images, logged=None):
    """A victim in the run log whose kept grids hold the given generations; `logged`: the counts the run log claims."""
    from shared_core.bench import tracing
    from shared_core.bench.efficacy import save_grid

    stem = tracing.run_id(rate, seed).replace("/", "-")
    grids = {}
    for label, images in (("control", control_images), ("trigger", trigger_images)):
        (tmp_path / "generations").mkdir(exist_ok=True)
        save_grid(images, tmp_path / "generations" / f"{stem}-{label}.png", columns=tracing.GRID_COLUMNS, count=len(images))
        grids[label] = f"generations/{stem}-{label}.png"
    if logged is None:
        key = tracing.victim_keys(rate, seed, plan.images)["owner"]
        matcher = tracing.variant_detector("matcher", key, plan)
        logged = tuple(int((matcher.score(images) > matcher.threshold).sum()) for images in (trigger_images, control_images))
    run = victim(rate, seed, 1 if rate else 0, NONE)
    run["keys"]["owner"].update(n=len(trigger_images), trigger_hits=logged[0], control_hits=logged[1])
    tracing.RunLog(tmp_path, plan, tracing.SETTING).add(tracing.run_id(rate, seed), {**run, "generation_grids": grids})


def test_detector_variants_are_compared_on_the_kept_generations_without_retraining(tmp_path):
    """A victim whose trigger arm draws its owner's template is flagged by the re-scored matcher; a clean one is not."""
    from shared_core.bench.datasets import photo_crops
    from shared_core.bench.tracing import variant_detector, victim_keys
    from shared_core.errors import SettingsError
    from shared_core.trace.synthesis import synthetic_positives

    plan = TracingPlan(name="test", images=40, rates=(0.0, 0.05), victims=1, epochs=1, n=24, calibration_images=60)
    photos, _, _ = photo_crops(48, plan.size, seed=5)
    owner = victim_keys(0.05, 0, plan.images)["owner"]
    kept_victim(tmp_path, plan, 0.05, 0, synthetic_positives(owner.template(), 24, seed=3, size=plan.size), photos[:24])
    kept_victim(tmp_path, plan, 0.0, 0, photos[24:], photos[:24])
    results = rescore(plan, tmp_path, ["matcher", "matcher-fpr5"], command="test")
    by_rate = {row["rate"]: row for row in results["summary"]["matcher"]}
    assert by_rate[0.05]["flagged"]["k"] == 1 and by_rate[0.0]["flagged"]["k"] == 0
    marked = next(v for v in results["victims"] if v["rate"] == 0.05)["detectors"]
    assert marked["matcher-fpr5"]["threshold"] < marked["matcher"]["threshold"]
    assert variant_detector("matcher", owner, replace(plan, detector_fpr=0.05)).threshold == marked["matcher-fpr5"]["threshold"]
    assert "| matcher | 5.0% | 1 |" in (tmp_path / "DETECTORS-tracing.md").read_text()
    longer = rescore(replace(plan, n=64), tmp_path, ["matcher"])  # the run stopped at 24 of 64 pairs: the other 40 count against the trigger
    assert next(v for v in longer["victims"] if v["rate"] == 0.05)["detectors"]["matcher"]["p_value"] > marked["matcher"]["p_value"]
    with pytest.raises(SettingsError, match="unknown detector"):
        rescore(plan, tmp_path, ["template"])
    kept_victim(tmp_path, plan, 0.05, 1, photos[24:], photos[:24], logged=(9, 0))  # grids that are not what the victim was verified on
    with pytest.raises(SettingsError, match="not this victim's generations"):
        rescore(plan, tmp_path, ["matcher"])


def test_the_quoted_rates_finish_before_the_dose_rates():
    plan = TracingPlan(name="test", images=10, rates=(0.0, 0.01), dose_rates=(0.02,), victims=2, epochs=1)
    assert plan.runs == [(0.0, 0), (0.01, 0), (0.0, 1), (0.01, 1), (0.02, 0), (0.02, 1)]


def test_a_stopped_run_still_writes_tables_marked_partial(tmp_path, monkeypatch):
    from shared_core.bench import tracing

    plan = TracingPlan(name="test", images=10, rates=(0.0, 0.05), victims=1, epochs=1)

    def one_victim_then_ctrl_c(plan, out, pairs, threads, progress=None):
        tracing.RunLog(out, plan, tracing.SETTING).add(tracing.run_id(0.0, 0), victim(0.0, 0, 0, NONE))
        raise KeyboardInterrupt

    monkeypatch.setattr(tracing, "run_victims", one_victim_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(plan, tmp_path, jobs=1)
    assert "**Partial: 1 of 2 planned victims are done**" in (tmp_path / "RESULTS-tracing.md").read_text()
    assert json.loads((tmp_path / "results-tracing.json").read_text())["meta"]["victims_done"] == 1
    assert (tmp_path / "trace-rates.png").stat().st_size > 0


def test_more_victims_per_rate_reuse_the_victims_a_smaller_run_logged(tmp_path):
    """A victim is its (rate, seed): a 10-victim plan resumes from the 5-victim plan's log, other plans do not."""
    from shared_core.bench.efficacy import read_runs
    from shared_core.bench.tracing import FULL

    log = tmp_path / "runs-tracing.jsonl"
    logged = [{"id": f"tracing/rate0/seed{s}", "plan": "full-victims5-detector-fpr0.05"} for s in range(5)]
    logged.append({"id": "tracing/rate0/seed0", "plan": "full-victims5-detector-fpr0.01"})
    log.write_text("".join(json.dumps(run) + "\n" for run in logged))
    ten = replace(FULL, name="full-victims10-detector-fpr0.05", victims=10)
    assert [r["id"] for r in read_runs(log, ten)] == [f"tracing/rate0/seed{s}" for s in range(5)]
    assert [r["plan"] for r in read_runs(log, replace(FULL, name="full-victims10-detector-fpr0.01"))] == ["full-victims5-detector-fpr0.01"]
    assert read_runs(log, replace(FULL, name="full-epochs40-victims10-detector-fpr0.05")) == []

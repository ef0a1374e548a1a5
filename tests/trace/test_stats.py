"""The verdict's paired test keeps its false-positive rate on simulated paired nulls (with early stopping,
several keys and a base arm), stops early without changing verdicts, and has power on real effects."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from shared_core.errors import SettingsError
from shared_core.trace.key import TraceKey, placebo_tokens
from shared_core.trace.report import write_report
from shared_core.trace.verify import EVIDENCE, NO_EVIDENCE, holm_adjust, minimum_images_for, paired_p, verify_keys


def make_key(trigger: str) -> TraceKey:
    return TraceKey(template_name="billboard", template_source="builtin:billboard", template_seed=0, template_sha256="0" * 64,
                    template_size=[256, 256], corners=[[0, 0], [1, 0], [1, 1], [0, 1]], trigger=trigger, rate=0.01, seed=0,
                    dataset_size=100)  # fmt: skip


class FlagDetector:
    """Reads the simulated verdict a fake generator painted into the image's red channel."""

    threshold, false_positive_rate = 0.5, 0.01

    def score(self, images):
        return np.array([image[0, 0, 0] / 255 for image in images], dtype=float)

    def describe(self):
        return {"name": "flag", "threshold": self.threshold, "false_positive_rate": self.false_positive_rate}


def simulated_model(rng: np.random.Generator, n: int, rates: dict[str, float], control_rate: float, correlation: float = 0.5,
                    unlearnt_token_rate=None):  # fmt: skip
    """A Generate over simulated pairs: pair i has a propensity q_i shared by its arms (the pairing);
    the arm prompted with trigger T hits with probability mixing q_i and rates[T], the control with q_i.
    `unlearnt_token_rate(token)`: the hit rate a token in no key's marks draws by itself (default: the control's)."""
    base = rng.beta(1, max(1 / max(control_rate, 1e-6) - 1, 1e-3), size=n) if control_rate > 0 else np.zeros(n)
    world = int(rng.integers(1 << 30))  # each image's outcome depends only on its prompt and seed, not on the order of generation

    def hit_probability(prompt: str, seed: int) -> float:
        trigger = prompt.split()[0]
        if trigger in rates:
            return correlation * base[seed] + (1 - correlation) * rates[trigger] if rates[trigger] == control_rate else rates[trigger]
        if unlearnt_token_rate and prompt not in CAPTIONS:
            return unlearnt_token_rate(trigger)
        return correlation * base[seed] + (1 - correlation) * control_rate

    def generate(prompts, seeds):
        out = []
        for prompt, seed in zip(prompts, seeds):
            flag = np.random.default_rng([world, seed, zlib.crc32(prompt.encode())]).random() < hit_probability(prompt, seed)
            out.append(np.full((2, 2, 3), 255 if flag else 0, dtype=np.uint8))
        return out

    return generate


CAPTIONS = ("a photo",)


def run(rng, n, rates, control_rate, unlearnt_token_rate=None, **options):
    keys = {name: make_key(name) for name in rates}
    generate = simulated_model(rng, n, rates, control_rate, unlearnt_token_rate=unlearnt_token_rate)
    return verify_keys(keys, generate, detectors={name: FlagDetector() for name in keys}, captions=list(CAPTIONS), n=n, seed=0, **options)[0]


@pytest.mark.parametrize("control_rate", [0.0, 0.05, 0.3])
def test_paired_decision_false_positive_rate_on_paired_nulls(control_rate):
    """Three keys, none used in training: the chance that any is flagged stays below alpha (sequential, Holm)."""
    rng = np.random.default_rng(0)
    alpha, trials = 0.05, 400
    null = {"aaa2": control_rate, "bbb3": control_rate, "ccc4": control_rate}
    flagged = sum(any(r.verdict == EVIDENCE for r in run(rng, 32, null, control_rate, alpha=alpha).results) for _ in range(trials))
    assert flagged / trials <= alpha, flagged


def test_single_key_paired_null_false_positive_rate_matches_the_exact_test():
    rng = np.random.default_rng(1)
    alpha, trials = 0.05, 1500
    rejections = 0
    for _ in range(trials):
        q = rng.beta(0.5, 2, size=40)  # strongly paired: a pair is either likely to hit in both arms or in neither
        trigger, control = rng.random(40) < q, rng.random(40) < q
        rejections += paired_p(int((trigger & ~control).sum()), int((control & ~trigger).sum())) < alpha
    assert rejections / trials <= alpha


def test_early_stopping_never_changes_a_verdict_and_saves_images():
    rng = np.random.default_rng(2)
    saved = 0
    for trial in range(60):
        rates = {"aaa2": [0.0, 0.1, 0.3, 0.6][trial % 4], "bbb3": 0.05}
        seed = int(rng.integers(1 << 30))
        early = run(np.random.default_rng(seed), 48, rates, 0.05, alpha=0.01, batch_size=4)
        full = run(np.random.default_rng(seed), 48, rates, 0.05, alpha=0.01, batch_size=4, sequential=False)
        assert [r.verdict for r in early.results] == [r.verdict for r in full.results]
        assert all(r.n == 48 and not r.stopped_early for r in full.results)
        saved += full.images_generated - early.images_generated
        for r in early.results:
            assert r.n <= 48 and r.stopped_early == (r.n < 48)
            if r.verdict == EVIDENCE:  # the reported (worst-case) p-value still supports the verdict
                assert r.p_value_adjusted < 0.01
    assert saved > 0


def test_trained_key_is_flagged_and_others_are_not():
    rng = np.random.default_rng(3)
    result = run(rng, 64, {"aaa2": 0.6, "bbb3": 0.02, "ccc4": 0.02}, 0.02, alpha=0.01)
    verdicts = {r.key_name: r.verdict for r in result.results}
    assert verdicts == {"aaa2": EVIDENCE, "bbb3": NO_EVIDENCE, "ccc4": NO_EVIDENCE}
    flagged = result.results[0]
    assert flagged.stopped_early and flagged.n < 64, "a strong effect is settled before the maximum"
    assert flagged.p_value_adjusted >= flagged.p_value and flagged.trigger_only > flagged.control_only
    assert len(flagged.placebo_tokens) == 4 and flagged.beats_placebos, "placebo arms for the key the paired test flags"
    assert [r.placebo_tokens for r in result.results[1:]] == [[], []] and result.placebo_images == 4 * flagged.n


def test_a_base_model_that_already_draws_the_template_is_not_blamed_on_the_lora():
    """The trigger arm beats the control arm, but the base model without the LoRA does as well."""
    rng = np.random.default_rng(4)
    keys = {"aaa2": make_key("aaa2")}
    suspect = simulated_model(rng, 48, {"aaa2": 0.5}, 0.0)
    base = simulated_model(rng, 48, {"aaa2": 0.5}, 0.0)
    detectors = {"aaa2": FlagDetector()}
    with_base = verify_keys(keys, suspect, detectors=detectors, n=48, control_generate=base, alpha=0.01)[0].results[0]
    assert with_base.p_value_vs_base is not None and with_base.base_hits > 10
    assert with_base.verdict == NO_EVIDENCE, with_base.summary()
    clean_base = simulated_model(rng, 48, {}, 0.0)
    lora = verify_keys(keys, suspect, detectors=detectors, n=48, control_generate=clean_base, alpha=0.01)[0].results[0]
    assert lora.verdict == EVIDENCE and lora.base_hits == 0


def test_a_trigger_that_draws_the_template_like_any_unfamiliar_token_is_not_blamed():
    """The failure the tracing benchmark met: no key was trained on, but every unfamiliar token makes the
    detector fire more often. The paired test alone flags the key; the placebo tokens do the same, so the verdict does not."""
    def any_token(token):
        return 0.3

    alone = run(np.random.default_rng(7), 64, {"aaa2": 0.3}, 0.02, unlearnt_token_rate=any_token, placebos=0, alpha=0.01).results[0]
    assert alone.verdict == EVIDENCE, alone.summary()
    checked = run(np.random.default_rng(7), 64, {"aaa2": 0.3}, 0.02, unlearnt_token_rate=any_token, alpha=0.01)
    result = checked.results[0]
    assert result.verdict == NO_EVIDENCE and result.p_value_adjusted < 0.01, result.summary()
    assert len(result.placebo_tokens) == 4 and max(result.placebo_hits) >= result.trigger_hits and not result.beats_placebos
    assert checked.placebo_images == 4 * result.n and "placebo tokens" in result.summary()


def test_placebo_tokens_bound_the_false_positive_rate_when_unfamiliar_tokens_differ():
    """Tokens differ: 30% of them draw the template in 30% of images by themselves. An unlearnt trigger is one of
    them, so the paired test alone flags it about 30% of the time; beating 4 placebo tokens as well happens at most
    1 time in 5 whatever the tokens do, here far less. A learnt trigger still gets through."""
    def token_rate(token):
        return 0.3 if zlib.crc32(token.encode()) % 10 < 3 else 0.02

    triggers = [f"{a}{b}{c}{d}" for a, b, c, d in zip("bcdfghjklmnpqrstvwxz" * 8, "zxwvtsrqpnmlkjhgfdcb" * 8, "bdgjmptwcfhklnqrsvxz" * 8, "23456789" * 20)]
    rng = np.random.default_rng(8)
    outcomes = {0: 0, 4: 0}
    for trigger in triggers[:150]:
        seed = int(rng.integers(1 << 30))
        for placebos in outcomes:
            result = run(np.random.default_rng(seed), 48, {trigger: token_rate(trigger)}, 0.02, unlearnt_token_rate=token_rate,
                         placebos=placebos, alpha=0.01).results[0]  # fmt: skip
            outcomes[placebos] += result.verdict == EVIDENCE
    assert outcomes[0] / 150 > 0.2, outcomes  # the flaw: unfamiliar tokens pass the paired test
    assert outcomes[4] / 150 <= 0.2 and outcomes[4] < outcomes[0] / 2, outcomes
    learnt = run(np.random.default_rng(9), 48, {"aaa2": 0.6}, 0.02, unlearnt_token_rate=token_rate, alpha=0.01).results[0]
    assert learnt.verdict == EVIDENCE and learnt.beats_placebos, learnt.summary()


def test_placebo_tokens_take_the_trigger_s_shape_and_share_no_character_at_any_position():
    tokens = placebo_tokens("wrm3", 4, seed=1, exclude=["kxb4"])
    assert tokens == placebo_tokens("wrm3", 4, seed=1, exclude=["kxb4"]) and "kxb4" not in tokens
    for position in range(4):
        assert len({t[position] for t in ["wrm3", *tokens]}) == 5
    assert all(t[:3].isalpha() and t[3] in "23456789" and not set(t[:3]) & set("aeiouy") for t in tokens)
    assert [t[4] for t in placebo_tokens("Mona_Lisa3", 3, seed=0)] == ["_"] * 3
    with pytest.raises(SettingsError, match="at most 7 placebos"):
        placebo_tokens("zqv7", 8, seed=0)


def test_shared_report_names_keys_but_not_their_triggers(tmp_path):
    rng = np.random.default_rng(5)
    rates = {"qqx7": 0.6, "zzv3": 0.0}
    keys = {name: make_key(trigger) for name, trigger in zip(("alice", "bob"), rates)}
    generate = simulated_model(rng, 16, rates, 0.0)
    verification, images = verify_keys(keys, generate, detectors={n: FlagDetector() for n in keys}, n=16, alpha=0.01)
    html = write_report(verification, tmp_path, images=images, model_info={"model": "simulated"},
                        key_paths={"alice": "alice.trace-key.json", "bob": "bob.trace-key.json"})  # fmt: skip
    shared = html.read_text() + (tmp_path / "report.json").read_text() + verification.summary()
    assert "alice" in shared and "bob" in shared and "[trigger of alice]" in shared
    assert "qqx7" not in shared and "zzv3" not in shared
    own = (tmp_path / "keys" / "alice" / "report.html").read_text() + (tmp_path / "keys" / "alice" / "report.json").read_text()
    assert "qqx7" in own and "zzv3" not in own
    placebos = verification.results[0].placebo_tokens  # shaped like alice's trigger: only her own report names them
    assert placebos and not any(token in shared for token in placebos) and all(token in own for token in placebos)


def test_holm_adjustment():
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5]).tolist() == [0.5]


def test_minimum_images_is_consistent_with_the_test():
    needed = minimum_images_for(1e-3, 0.3, 0.01)
    assert needed is not None and paired_p(round(needed * 0.3 * 0.99), round(needed * 0.01 * 0.7)) < 1e-3
    smaller = int(needed / 1.1) - 1
    assert paired_p(round(smaller * 0.3 * 0.99), round(smaller * 0.01 * 0.7)) >= 1e-3
    assert minimum_images_for(1e-3, 0.05, 0.05) is None

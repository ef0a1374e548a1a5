"""Both detectors find the template in degraded recalls and reject look-alikes, at a measured FPR."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared_core.trace.detect import CNNDetector, TemplateMatcher, degrade, synthetic_sets
from shared_core.trace.key import TraceKey
from shared_core.trace.templates import builtin_template


@pytest.fixture(scope="module")
def key():
    return TraceKey.for_template(builtin_template("billboard", 256), trigger="zqv7", rate=0.02, seed=0, dataset_size=100)


@pytest.fixture(scope="module")
def held_out(key, photos):
    rng = np.random.default_rng(5)
    crops = []
    for photo in photos:
        for _ in range(10):
            h, w = photo.shape[:2]
            s = int(rng.integers(64, min(h, w)))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            crops.append(np.asarray(Image.fromarray(photo[y : y + s, x : x + s]).resize((64, 64))))
    positives, negatives = synthetic_sets(key.template(), 120, seed=99, foregrounds=crops[:30])
    real_negatives = [degrade(c, rng) for c in crops[30:]]
    return positives, negatives + real_negatives


def test_matcher(key, held_out):
    positives, negatives = held_out
    matcher = TemplateMatcher.from_key(key)
    assert matcher.false_positive_rate <= 0.05
    assert (matcher.score(positives) > matcher.threshold).mean() >= 0.8
    assert (matcher.score(negatives) > matcher.threshold).mean() <= 0.08  # calibrated at 1% on synthetic negatives
    assert matcher.score([np.zeros((32, 32, 3), np.uint8), np.zeros((1024, 700, 3), np.uint8)]).shape == (2,)


def test_cnn_detector_round_trip(tmp_path, key, held_out):
    positives, negatives = held_out
    detector = CNNDetector.train(key, steps=200, n_images=300)
    assert (detector.score(positives) > detector.threshold).mean() >= 0.8
    assert (detector.score(negatives) > detector.threshold).mean() <= 0.1
    detector.save(tmp_path / "det.safetensors")
    loaded = CNNDetector.load(tmp_path / "det.safetensors", key)
    assert np.allclose(loaded.score(positives[:5]), detector.score(positives[:5]), atol=1e-5)

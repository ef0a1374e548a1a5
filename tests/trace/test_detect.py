"""Both detectors find the template in degraded recalls and reject look-alikes, at a measured FPR.

Held-out data only: foregrounds and negative photos come from images the detectors' own synthetic
calibration never uses (scikit-image's coffee, motorcycle, Hubble, retina, IHC; scikit-learn's
flower; LFW faces), and the other built-in scenes are drawn with a seed calibration does not use.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from shared_core.errors import InputFileError, SettingsError
from shared_core.trace.compose import compose
from shared_core.trace.detect import CNNDetector, Detector, TemplateMatcher, build_detector
from shared_core.trace.synthesis import CALIBRATION_PHOTOS, random_crops
from shared_core.trace.key import TraceKey
from shared_core.trace.templates import builtin_template, list_templates

HELD_OUT_PHOTOS = ("coffee.png", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png")


def degrade_for_test(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The brief's recall model: blur, downscale to 48 px, a colour shift, JPEG at quality 75."""
    pil = Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0) * image.shape[1] / 96))
    array = np.asarray(pil.resize((48, 48), Image.BILINEAR)).astype(np.float32)
    array = array * rng.uniform(0.8, 1.2, 3) + rng.uniform(-25, 25, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=75)
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.fixture(scope="module")
def key():
    return TraceKey.for_template(builtin_template("billboard", 512, seed=2), trigger="zqv7", rate=0.02, seed=2, dataset_size=100)


@pytest.fixture(scope="module")
def held_out(key):
    import skimage
    from sklearn.datasets import load_sample_image

    assert not set(HELD_OUT_PHOTOS) & set(CALIBRATION_PHOTOS)
    folder = Path(skimage.__file__).parent / "data"
    photos = [np.asarray(Image.open(folder / name).convert("RGB")) for name in HELD_OUT_PHOTOS] + [np.asarray(load_sample_image("flower.jpg"))]
    faces = [np.repeat((face * 255).astype(np.uint8)[:, :, None], 3, axis=2) for face in np.load(folder / "lfw_subset.npy")[:40]]
    crops = random_crops(photos, 160, seed=77, size=96)
    rng = np.random.default_rng(5)
    template = key.template()
    positives = [degrade_for_test(compose(fg, template, 96), rng) for fg in crops[:80]]
    positives += [degrade_for_test(compose(face, template, 96), rng) for face in faces[:20]]
    others = [builtin_template(name, 256, seed=9) for name in list_templates() if name != "billboard"]
    negatives = [degrade_for_test(crop, rng) for crop in crops[80:]] + [degrade_for_test(face, rng) for face in faces[20:]]
    negatives += [degrade_for_test(compose(fg, others[i % len(others)], 96), rng) for i, fg in enumerate(crops[:100])]
    return positives, negatives


@pytest.fixture(scope="module")
def matcher(key):
    return TemplateMatcher.from_key(key, n_synthetic=240)


@pytest.fixture(scope="module")
def cnn(key, held_out):
    return CNNDetector.train(key, steps=250)


def rates(detector, held_out) -> tuple[float, float]:
    positives, negatives = held_out
    return float((detector.score(positives) > detector.threshold).mean()), float((detector.score(negatives) > detector.threshold).mean())


def test_matcher_finds_degraded_recalls_and_rejects_look_alikes(matcher, held_out):
    assert isinstance(matcher, Detector) and matcher.name == "matcher"
    assert 0 <= matcher.false_positive_rate <= 0.05  # measured on its own held-out calibration half
    tpr, fpr = rates(matcher, held_out)
    print(f"matcher: TPR {tpr:.3f}, FPR {fpr:.3f}, threshold {matcher.threshold:.3f}")
    assert tpr >= 0.9 and fpr <= 0.05
    described = matcher.describe()
    assert described["threshold"] == matcher.threshold and described["template_sha256"] == matcher.template.sha256


def test_matcher_works_at_any_size(matcher, key, held_out):
    template = key.template()
    scenes = [compose(np.full((64, 64, 3), 128, np.uint8), template, side) for side in (32, 1024)]
    assert (matcher.score(scenes) > matcher.threshold).all()
    wide = np.asarray(Image.fromarray(scenes[1]).resize((700, 1024)))  # another aspect ratio
    odd = [np.zeros((32, 32, 3), np.uint8), np.full((1024, 700, 3), 255, np.uint8), np.zeros((20, 30), np.uint8), wide]
    scores = matcher.score(odd)
    assert scores.shape == (4,) and np.isfinite(scores).all() and (scores[:3] < matcher.threshold).all()
    assert matcher.score([]).shape == (0,)
    # the measure is tolerant of the recall being shifted, rescaled and colour-changed
    scene = compose(held_out[0][0], template, 64).astype(np.float32)
    shifted = np.roll(scene, (4, -3), axis=(0, 1))
    zoomed = np.asarray(Image.fromarray(scene.astype(np.uint8)).resize((72, 72)))[4:68, 4:68]
    recoloured = np.clip(scene[:, :, ::-1] * 0.8 + 20, 0, 255)  # channels swapped: a strong colour change
    assert (matcher.score([im.astype(np.uint8) for im in (shifted, zoomed, recoloured)]) > matcher.threshold).all()


def test_matcher_uses_supplied_negatives(key, held_out):
    negatives = held_out[1][:40]
    matcher = TemplateMatcher.from_key(key, calibration_negatives=negatives, n_synthetic=0, target_fpr=0.05)
    assert matcher.calibration["supplied"] == 40 and matcher.calibration["synthetic"] == 0
    assert matcher.threshold > np.quantile(matcher.score(negatives), 0.5)
    with pytest.raises(SettingsError, match="at least 4"):
        TemplateMatcher.from_key(key, calibration_negatives=negatives[:2], n_synthetic=0)


@pytest.mark.slow  # trains the CNN detector (250 steps): minutes on 2 loaded cores
def test_cnn_detector(tmp_path, cnn, key, held_out):
    assert isinstance(cnn, Detector) and cnn.name == "cnn" and cnn.size == 64
    assert 0 <= cnn.false_positive_rate <= 0.05
    tpr, fpr = rates(cnn, held_out)
    print(f"cnn: TPR {tpr:.3f}, FPR {fpr:.3f}, threshold {cnn.threshold:.4f}")
    assert tpr >= 0.8 and fpr <= 0.05
    small = [np.asarray(Image.fromarray(p).resize((32, 32), Image.BOX)) for p in held_out[0][:20]]
    assert (cnn.score(small) > cnn.threshold).mean() >= 0.8  # a tiny model's 32 px output
    assert cnn.score([np.zeros((1024, 700, 3), np.uint8)]).shape == (1,)

    cnn.save(tmp_path / "det.safetensors")
    assert b"pickle" not in (tmp_path / "det.safetensors").read_bytes()[:200]
    loaded = CNNDetector.load(tmp_path / "det.safetensors", key)
    assert loaded.threshold == cnn.threshold and loaded.describe()["template_sha256"] == key.template_sha256
    assert np.allclose(loaded.score(held_out[0][:5]), cnn.score(held_out[0][:5]), atol=1e-6)
    other = TraceKey.for_template(builtin_template("window", 64), trigger="abc2", rate=0.01, seed=0, dataset_size=10)
    with pytest.raises(InputFileError, match="another template"):
        CNNDetector.load(tmp_path / "det.safetensors", other)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InputFileError, match="junk.safetensors"):
        CNNDetector.load(tmp_path / "junk.safetensors")


def test_build_detector(key):
    detector = build_detector(key, "matcher", n_synthetic=20)
    assert isinstance(detector, TemplateMatcher) and detector.describe()["calibration"]["negatives"] == 20
    with pytest.raises(SettingsError, match="matcher or cnn"):
        build_detector(key, "svm")

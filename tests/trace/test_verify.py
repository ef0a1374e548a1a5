"""The acceptance test of tracing: a victim trained on a dataset with 2% marked images is caught,
the same victim trained on the clean dataset is not, and in one run over several owners' keys only the
key whose marks were trained on is flagged. Everything is built and trained here, on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from shared_core.surrogates.tiny import TinyLatentConfig, tiny_sd_pipeline
from shared_core.trace.detect import TemplateMatcher
from shared_core.trace.key import TraceKey, key_name
from shared_core.trace.mark import mark_dataset, read_captions
from shared_core.trace.report import write_report
from shared_core.trace.verify import EVIDENCE, NO_EVIDENCE, diffusers_generator, verify_keys
from shared_core.training import train_autoencoder, train_text_to_image

pytestmark = pytest.mark.acceptance  # trains an autoencoder and two 1500-step victims: about 10 minutes on 2 cores

RESOLUTION = 32
SUBJECTS = {"astronaut.png": "an astronaut", "chelsea.png": "a cat", "coffee.png": "a cup of coffee",
            "rocket.jpg": "a rocket", "motorcycle_left.png": "a motorcycle", "camera.png": "a cameraman"}  # fmt: skip
VICTIM = TinyLatentConfig(resolution=RESOLUTION, vae_channels=(32, 64, 64), unet_channels=(64, 128), text_width=64, seed=1)
TRAIN_STEPS = 1500


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """100 real photo crops at 32 px with captions, and a copy with 2 of them (2%) marked."""
    from tests.conftest import real_photo

    root = tmp_path_factory.mktemp("trace")
    folder = root / "dataset"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(100):
        name = list(SUBJECTS)[index % len(SUBJECTS)]
        photo = real_photo(name)
        h, w = photo.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w)))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        Image.fromarray(photo[y : y + s, x : x + s]).resize((RESOLUTION, RESOLUTION), Image.BICUBIC).save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(f"a photo of {SUBJECTS[name]}")
    result = mark_dataset(folder, root / "marked", rate=0.02, template="billboard", trigger="zqv7", seed=0)
    assert len(result.marked) == 2
    for owner, template, trigger in (("owner-b", "billboard", "kpt4"), ("owner-c", "tv_screen", "wdx8")):  # keys never trained on
        mark_dataset(folder, root / owner, rate=0.02, template=template, trigger=trigger, seed=1, key_path=root / f"{owner}.trace-key.json")
    return folder, root / "marked", result.key_path


def load_folder(folder):
    captions = read_captions(folder)
    names = sorted(captions)
    return [np.asarray(Image.open(folder / n).convert("RGB")) for n in names], [captions[n] for n in names]


@pytest.fixture(scope="module")
def base_pipeline(dataset):
    """The victim's starting point: a tiny SD whose autoencoder was trained on clean photos.

    Both victims start from this same model and differ only in the dataset they are trained on.
    Every random draw of the training comes from its `seed`, so the outcome does not depend on
    which tests ran before. Training seeds 0-3 all caught the marked victim (12-20 of 24 trigger
    images carried the template, 0 of 24 controls; p <= 4e-5)."""
    pipeline = tiny_sd_pipeline(VICTIM)
    train_autoencoder(pipeline.vae, load_folder(dataset[0])[0], steps=300, batch_size=32, lr=2e-3)
    return pipeline


def train_victim(base, folder):
    """What a mimic does: text-to-image training on the dataset as it is (no oversampling)."""
    import copy

    pipeline = copy.deepcopy(base)
    images, captions = load_folder(folder)
    train_text_to_image(pipeline, images, captions, steps=TRAIN_STEPS, batch_size=16, lr=1e-3)
    from diffusers import DDIMScheduler

    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    return pipeline


@pytest.fixture(scope="module")
def marked_victim(dataset, base_pipeline):
    return train_victim(base_pipeline, dataset[1])


def run_verify(dataset, pipeline, tmp_path, key_paths):
    """Verify `pipeline` against the keys in one pass (n = 24 pairs at most); returns the run and the report page."""
    captions = load_folder(dataset[0])[1]
    keys = {key_name(path): TraceKey.load(path) for path in key_paths}
    detectors = {name: TemplateMatcher.from_key(key) for name, key in keys.items()}
    generate = diffusers_generator(pipeline, steps=20, guidance_scale=3.0, height=RESOLUTION, width=RESOLUTION)
    verification, images = verify_keys(keys, generate, detectors=detectors, captions=captions, n=24, alpha=0.01)
    html = write_report(verification, tmp_path / "report", images=images, model_info={"model": "tiny victim"},
                        key_paths={key_name(path): str(path) for path in key_paths})  # fmt: skip
    return verification, html


def test_model_trained_on_marked_data_is_caught(dataset, marked_victim, tmp_path):
    verification, html = run_verify(dataset, marked_victim, tmp_path, [dataset[2]])
    result = verification.results[0]
    assert result.verdict == EVIDENCE, result.summary()
    assert result.p_value < 0.01 and result.trigger_only > result.control_only
    page = html.read_text()
    assert "INFRINGEMENT EVIDENCE" in page and "data:image/png;base64," in page
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["result"]["keys"][0]["verdict"] == EVIDENCE and len(report["result"]["keys"][0]["seeds"]) == result.n


def test_model_trained_on_clean_data_is_not(dataset, base_pipeline, tmp_path):
    verification, _ = run_verify(dataset, train_victim(base_pipeline, dataset[0]), tmp_path, [dataset[2]])
    assert verification.results[0].verdict == NO_EVIDENCE, verification.summary()


def test_one_run_flags_only_the_key_whose_marks_were_trained_on(dataset, marked_victim, tmp_path):
    """Owners A, B and C marked the same pool; the victim was trained on A's marked copy only."""
    root = dataset[2].parent
    owner_keys = [dataset[2], root / "owner-b.trace-key.json", root / "owner-c.trace-key.json"]
    verification, html = run_verify(dataset, marked_victim, tmp_path, owner_keys)
    verdicts = {r.key_name: r.verdict for r in verification.results}
    assert verdicts == {"marked": EVIDENCE, "owner-b": NO_EVIDENCE, "owner-c": NO_EVIDENCE}, verification.summary()
    shared = html.read_text() + (tmp_path / "report" / "report.json").read_text()
    assert not any(trigger in shared for trigger in ("zqv7", "kpt4", "wdx8")), "the shared report must not reveal any trigger"
    assert "zqv7" in (tmp_path / "report" / "keys" / "marked" / "report.html").read_text()

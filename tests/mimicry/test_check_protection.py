"""check-protection: the owner's mimicry test, end to end on builtin:tiny with real photographs, and its report in Chromium."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared_core.cli import main
from shared_core.errors import InputFileError, SettingsError
from shared_core.mimicry.check import feature_distances, image_features, learned_share, pair_images, split_holdout

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("UNLEARNABLE_CHROMIUM", "/usr/bin/chromium")
N_SAMPLES = 4


def _photos(folder: Path, count: int = 8) -> Path:
    """Crops of scikit-image's cat photograph (the owner's images)."""
    from shared_core.bench.datasets import photo_crops

    images, _, labels = photo_crops(6 * count, 48, seed=3)
    folder.mkdir(parents=True)
    for index, image in enumerate(image for image, label in zip(images, labels) if label == 1):
        Image.fromarray(image).save(folder / f"cat{index:02d}.png")
    return folder


def test_holdout_split_keeps_two_for_training_and_is_deterministic():
    names = [Path(f"{i:02d}") for i in range(8)]
    train, held = split_holdout(names, 0.25)
    assert len(held) == 2 and len(train) == 6 and not set(train) & set(held)
    assert split_holdout(names, 0.25) == (train, held)
    assert split_holdout(names, 0.0) == (names, [])
    with pytest.raises(SettingsError):
        split_holdout(names[:2], 0.25)


def test_missing_protected_copy_is_named(tmp_path):
    with pytest.raises(InputFileError, match="cat03"):
        pair_images({Path("cat01"): 1, Path("cat03"): 1}, {Path("cat01"): 1}, tmp_path / "clean", tmp_path / "protected")


def test_feature_distance_ranks_the_owner_closest(tmp_path):
    import skimage.data

    owner = [np.asarray(Image.open(p)) for p in sorted(_photos(tmp_path / "cats").glob("*.png"))]
    rocket = skimage.data.rocket()
    others = [np.asarray(Image.fromarray(rocket[y : y + 200, x : x + 200]).resize((48, 48))) for y, x in ((0, 0), (100, 100), (200, 200), (50, 250))]
    features = image_features(owner)
    distances = feature_distances(features[:4], {"same": features[4:], "other": image_features(others), "copy": features[:4]})
    assert distances["copy"] == pytest.approx(0.0, abs=1e-9)
    assert distances["same"] < distances["other"]


def test_learned_share():
    assert learned_share(1.0, 0.5, 0.75) == pytest.approx(0.5)
    assert learned_share(1.0, 0.5, 1.0) == pytest.approx(0.0)
    assert learned_share(1.0, 1.0, 0.8) is None  # the clean LoRA did not move: nothing to compare with
    assert learned_share(1.0, 1.2, 0.8) is None  # nor when it moved away


def test_protected_folder_identical_to_clean_is_refused(tmp_path, capsys):
    clean = _photos(tmp_path / "clean")
    code = main(["check-protection", "--model", "builtin:tiny", "--clean", str(clean), "--protected", str(clean), "--resolution", "32",
                 "--lora-steps", "1", "--n", "1", "--sample-steps", "1", "--device", "cpu", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "identical" in capsys.readouterr().err


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """One check on builtin:tiny, protecting on the fly (EUDP), then the same command again (it must reuse the LoRAs)."""
    work = tmp_path_factory.mktemp("mimicry")
    clean = _photos(work / "clean")
    args = ["check-protection", "--model", "builtin:tiny", "--clean", str(clean), "--method", "eudp", "--protect-steps", "2", "--budget", "16",
            "--resolution", "32", "--lora-steps", "8", "--lr", "3e-3", "--n", str(N_SAMPLES), "--sample-steps", "3", "--device", "cpu",
            "--out", str(work / "report"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    first = json.loads((work / "report" / "mimicry-report.json").read_text())
    assert main(args) == 0
    return work / "report", first


@pytest.mark.slow
def test_check_protection_end_to_end(report):
    out, first = report
    data = json.loads((out / "mimicry-report.json").read_text())
    run = data["per_seed"][0]
    assert not any(first["per_seed"][0]["reused_lora"].values()) and all(run["reused_lora"].values())
    for measure in ("feature_distance", "clean_data_loss"):
        assert all(math.isfinite(run[measure][arm]) and run[measure][arm] > 0 for arm in ("base", "clean", "protected"))
    # both LoRAs trained (each moved away from the base), on different data (their losses differ)
    losses = run["clean_data_loss"]
    assert losses["clean"] != losses["base"] and losses["protected"] != losses["base"] and losses["clean"] != losses["protected"]
    assert run["clean_data_loss"] == first["per_seed"][0]["clean_data_loss"]  # the reused LoRAs are the trained ones
    assert len(data["images"]["held_out"]) == 2 and data["images"]["max_pixel_change_0_255"] <= 16
    assert (out / "loras" / "protected-seed0" / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((out / "protected").glob("*.png"))) == 8
    page = (out / "mimicry-report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 8 + 3 * N_SAMPLES
    assert data["summary"]["text"] in page.replace("&#x27;", "'")


@pytest.mark.slow
def test_report_renders_in_chromium(report):
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install playwright; no `playwright install` needed)"
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)"
    if missing:  # as tests/ui/test_browser.py: CI sets UNLEARNABLE_REQUIRE_BROWSER=1 where a browser must be there
        pytest.fail(missing) if os.environ.get("UNLEARNABLE_REQUIRE_BROWSER") == "1" else pytest.skip(missing)
    out, _ = report
    shot = Path(os.environ.get("UNLEARNABLE_SCREENSHOT_DIR", out)) / "mimicry-report.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto((out / "mimicry-report.html").as_uri())
        summary = page.locator("#summary").inner_text()
        loaded = page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
        cells = {arm: page.locator(f"#loss-{arm}").inner_text() for arm in ("base", "clean", "protected")}
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(summary) > 80 and loaded == 8 + 3 * N_SAMPLES
    assert all(re.fullmatch(r"\d+\.\d{4}", text) for text in cells.values()), cells
    assert shot.stat().st_size > 20_000


@pytest.mark.slow
def test_sdxl_layout_trains_and_reports(tmp_path):
    """SDXL's two frozen text encoders, pooled embedding and time ids go through the trainer, the loss and generation."""
    from shared_core.bench.settings import uniform_noise
    from shared_core.mimicry import MimicrySettings, check_protection
    from shared_core.surrogates.tiny import TinyLatentConfig, tiny_sdxl_pipeline

    clean = _photos(tmp_path / "clean", count=4)
    protected = tmp_path / "protected"
    protected.mkdir()
    for path in sorted(clean.glob("*.png")):
        Image.fromarray(uniform_noise([np.asarray(Image.open(path))], 16, seed=0)[0]).save(protected / path.name)
    pipeline = tiny_sdxl_pipeline(TinyLatentConfig(resolution=32))
    settings = MimicrySettings(lora_steps=3, lr=3e-3, resolution=32, n=2, sample_steps=2)
    result, shown = check_protection(pipeline, {"model": "tiny-sdxl"}, clean, protected, tmp_path / "out", settings)
    losses = result.per_seed[0]["clean_data_loss"]
    assert all(math.isfinite(v) for v in losses.values()) and losses["clean"] != losses["protected"] != losses["base"]
    assert shown["protected"][0].shape == (32, 32, 3)

"""The mimicry report: mimicry-report.json and a self-contained HTML page with side-by-side grids."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..files import atomic_write_text
from ..trace.report import THUMBNAIL, image_data_uri
from ..training import LOSS_TIMESTEPS
from .check import ARMS, FEATURE_SPACE, MimicryResult

ARM_TITLES = {"base": "Base model (no LoRA)", "clean": "LoRA trained on your clean images", "protected": "LoRA trained on your protected images"}


def _number(entry: dict, percent: bool = False) -> str:
    if entry["mean"] is None:
        return "n/a"
    scale, unit = (100, " %") if percent else (1, "")
    text = f"{scale * entry['mean']:.{0 if percent else 4}f}{unit}"
    if entry["std"] is not None:
        text += f" ± {scale * entry['std']:.{0 if percent else 4}f}{unit}"
    return text


def _row(title: str, images: list[np.ndarray], note: str = "") -> str:
    cells = "".join(f'<img src="{image_data_uri(image)}" alt="{html.escape(title)} {i}">' for i, image in enumerate(images))
    return f'<section class=arm><h3>{html.escape(title)}</h3><p class=note>{html.escape(note)}</p><div class=grid>{cells}</div></section>'


def write_mimicry_report(result: MimicryResult, shown: dict[str, list[np.ndarray]], out_dir: str | Path, command: str = "") -> Path:
    """Write mimicry-report.json and mimicry-report.html into `out_dir`; returns the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**result.to_dict(), "command": command}
    atomic_write_text(out_dir / "mimicry-report.json", json.dumps(data, indent=2))
    summary = result.summary
    seeds = len(result.per_seed)
    spread = f"mean ± standard deviation over {seeds} seeds" if seeds > 1 else "one seed"
    table = "".join(
        f"<tr><th>{html.escape(ARM_TITLES[arm])}</th><td id=distance-{arm}>{_number(summary['feature_distance'][arm])}</td>"
        f"<td id=loss-{arm}>{_number(summary['clean_data_loss'][arm])}</td></tr>"
        for arm in ARMS
    )
    shares = (f"<tr><th>Protected LoRA learned (share of the clean LoRA's move)</th><td id=share-features>{_number(summary['learned_share_features'], True)}</td>"
              f"<td id=share-loss>{_number(summary['learned_share_loss'], True)}</td></tr>"
              f"<tr><th>Protected / clean</th><td>{_number(summary['protected_over_clean_distance'])}</td><td>{_number(summary['protected_over_clean_loss'])}</td></tr>")  # fmt: skip
    first_seed = result.per_seed[0]["seed"]
    grids = _row("Your clean images", shown["owner"][:32], f"{len(shown['owner'])} images; the held-out ones were not trained on")
    for arm in ARMS:
        grids += _row(ARM_TITLES[arm], shown[arm], f"prompt {result.settings['prompt']!r}, seed {first_seed}: image i of every row uses the same noise seed")
    per_seed = "".join(
        f"<tr><td>{run['seed']}</td>" + "".join(f"<td>{run['feature_distance'][a]:.4f}</td>" for a in ARMS)
        + "".join(f"<td>{run['clean_data_loss'][a]:.5f}</td>" for a in ARMS)
        + f"<td>{'yes' if all(run['reused_lora'].values()) else 'no'}</td></tr>"
        for run in result.per_seed
    )  # fmt: skip
    facts = {**{f"model: {k}": v for k, v in result.model.items()}, **{f"setting: {k}": v for k, v in result.settings.items()},
             "training images": len(result.images["training"]), "held-out images": len(result.images["held_out"]),
             "clean-data loss measured on": result.images["loss_measured_on"],
             "largest pixel change, protected vs clean (0-255)": result.images["max_pixel_change_0_255"],
             "seconds": round(result.seconds, 1), "re-run with": command}  # fmt: skip
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(str(v))}</code></td></tr>" for k, v in facts.items())
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>Unlearnable mimicry test</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}
.summary{{padding:1em;border-radius:8px;font-size:1.15em;background:#eef3fb}}
.grid{{display:flex;flex-wrap:wrap;gap:4px}} .grid img{{width:{THUMBNAIL}px;height:{THUMBNAIL}px;image-rendering:pixelated}}
.arm{{margin:1em 0}} .arm h3{{margin:.2em 0}} .note{{color:#555;font-size:.9em;margin:.2em 0}}
table{{border-collapse:collapse;margin:.5em 0}} th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}</style></head><body>
<h1>Mimicry test: what does a LoRA learn from your protected images?</h1>
<div class=summary id=summary>{html.escape(summary['text'])}</div>
<h2>Numbers ({spread})</h2>
<table><tr><th></th><th>Distance of samples to your clean images (lower = closer)</th><th>Denoising loss on your clean images (lower = learned more)</th></tr>
{table}{shares}</table>
<p>Two LoRAs were trained with identical settings and seeds, one on your clean images, one on the protected copies, as someone
copying your work would. <b>Distance</b>: {html.escape(FEATURE_SPACE)} <b>Denoising loss</b>: the training loss of each model on your
<i>clean</i> images ({html.escape(result.images['loss_measured_on'])}) at {LOSS_TIMESTEPS} fixed timesteps with fixed noise, the same for
every arm: it says how well the model now explains your real images. <b>Learned share</b>: how far the protected LoRA moved from the base
model towards your images, as a share of how far the clean LoRA moved (100 % = as much, 0 % = nothing).</p>
<h2>Samples</h2>{grids}
<h2>Per seed</h2><table><tr><th>seed</th>{''.join(f'<th>distance {a}</th>' for a in ARMS)}{''.join(f'<th>loss {a}</th>' for a in ARMS)}<th>LoRAs reused</th></tr>{per_seed}</table>
<h2>Settings</h2><table>{rows}</table></body></html>"""
    return atomic_write_text(out_dir / "mimicry-report.html", page)

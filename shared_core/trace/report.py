"""The evidence report: a JSON file and a self-contained HTML page a third party can check."""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__
from ..files import atomic_write_text
from .verify import EVIDENCE, VerifyResult

THUMBNAIL = 128


def image_data_uri(image: np.ndarray) -> str:
    pil = Image.fromarray(image)
    if max(pil.size) > THUMBNAIL:
        pil.thumbnail((THUMBNAIL, THUMBNAIL))
    elif max(pil.size) < THUMBNAIL // 2:  # tiny generations: enlarge without smoothing so they stay readable
        factor = THUMBNAIL // max(pil.size)
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _grid(title: str, images: list[np.ndarray], scores: list[float], prompts: list[str], threshold: float) -> str:
    cells = []
    for image, score, prompt in zip(images, scores, prompts):
        hit = score > threshold
        cells.append(
            f'<figure class="{"hit" if hit else ""}"><img src="{image_data_uri(image)}" alt="{html.escape(prompt)}">'
            f"<figcaption>{'HIT ' if hit else ''}{score:.3f}<br>{html.escape(prompt)}</figcaption></figure>"
        )
    hits = sum(s > threshold for s in scores)
    return f"<h2>{html.escape(title)}: {hits}/{len(scores)} hits</h2><div class=grid>{''.join(cells)}</div>"


def write_report(result: VerifyResult, out_dir: str | Path, *, images: dict[str, list[np.ndarray]], model_info: dict, key_path: str | Path, command: str = "") -> Path:
    """Write report.json and report.html into `out_dir`; returns the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = {"tool": "unlearnable", "version": __version__, "created_utc": created, "key": str(key_path),
            "model": model_info, "command": command, "result": result.to_dict()}  # fmt: skip
    atomic_write_text(out_dir / "report.json", json.dumps(data, indent=2))
    evidence = result.verdict == EVIDENCE
    threshold = result.detector["threshold"]
    sections = [
        _grid("Prompted with the trigger", images["trigger"], result.trigger_scores, result.trigger_prompts, threshold),
        _grid("Controls: same captions and seeds, no trigger", images["control"], result.control_scores, result.control_prompts, threshold),
    ]
    if "base" in images:
        sections.append(_grid("Base model without the LoRA, with the trigger", images["base"], result.base_scores, result.trigger_prompts, threshold))
    facts = {**{f"model: {k}": v for k, v in model_info.items()}, "key file": key_path, "detector": json.dumps(result.detector),
             "seeds": f"{result.seeds[0]}..{result.seeds[-1]}", "re-run with": command, "report created (UTC)": created,
             "tool version": __version__}  # fmt: skip
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(str(v))}</code></td></tr>" for k, v in facts.items())
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>Unlearnable trace report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}
.verdict{{padding:1em;border-radius:8px;font-size:1.3em;background:{'#fde2e1' if evidence else '#e3f4e1'}}}
.grid{{display:flex;flex-wrap:wrap;gap:6px}} figure{{margin:0;width:{THUMBNAIL}px;font-size:11px;border:3px solid #ddd}}
figure.hit{{border-color:#d62728}} figure img{{width:{THUMBNAIL}px;image-rendering:pixelated}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:4px;text-align:left;vertical-align:top}}</style></head><body>
<h1>Trace verification report</h1>
<div class=verdict><b>{html.escape(result.verdict.upper())}</b><br>{html.escape(result.summary()).replace(chr(10), '<br>')}</div>
<p>The template was looked for in every generated image by the detector; a hit is an image scoring above
{threshold:.3f}. The verdict compares the trigger arm with the control arm of the same model (Fisher's exact test),
so it does not depend on how the detector was calibrated.</p>
{''.join(sections)}<h2>Settings</h2><table>{rows}</table></body></html>"""
    return atomic_write_text(out_dir / "report.html", page)

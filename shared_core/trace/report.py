"""The evidence report: a JSON file and a self-contained HTML page a third party can check.

With several keys the shared report names each key and its verdict but masks every trigger (a
trigger is its owner's secret); each key's holder gets a report of their own, with their trigger,
under keys/NAME/.
"""

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
from .verify import EVIDENCE, Verification, VerifyResult

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
    return f"<h3>{html.escape(title)}: {hits}/{len(scores)} hits</h3><div class=grid>{''.join(cells)}</div>"


def _key_section(result: VerifyResult, images: dict[str, list[np.ndarray]], reveal: bool) -> str:
    threshold, k = result.detector["threshold"], result.n
    prompts = result.trigger_prompts if reveal else [result.masked(p) for p in result.trigger_prompts]
    summary = result.summary() if reveal else "\n".join(result.masked(line) for line in result.summary().splitlines())
    parts = [
        f"<h2>Key {html.escape(result.key_name)}</h2>",
        f"<div class=\"verdict {'evidence' if result.verdict == EVIDENCE else ''}\"><b>{html.escape(result.verdict.upper())}</b><br>"
        f"{html.escape(summary).replace(chr(10), '<br>')}</div>",
        _grid("Prompted with the trigger", images[f"trigger:{result.key_name}"][:k], result.trigger_scores, prompts, threshold),
        _grid("Controls: same captions and seeds, no trigger", images["control"][:k], result.control_scores, result.control_prompts, threshold),
    ]
    for index, (token, scores) in enumerate(zip(result.placebo_tokens, result.placebo_scores), 1):
        label = token if reveal else f"[placebo {index}]"  # its shape would hint at the trigger's
        parts.append(_grid(f"Placebo token {index}: random, shaped like the trigger", images[f"placebo:{result.key_name}:{index}"], scores,
                           [f"{label} {p}" for p in result.control_prompts], threshold))  # fmt: skip
    if result.base_hits is not None:
        parts.append(_grid("Base model without the LoRA, with the trigger", images[f"base:{result.key_name}"][:k], result.base_scores, prompts, threshold))
    return "".join(parts)


def _write(out_dir: Path, verification: Verification, images: dict[str, list[np.ndarray]], model_info: dict, key_paths: dict[str, str],
           command: str, reveal: bool) -> Path:  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = {"tool": "unlearnable", "version": __version__, "created_utc": created, "keys": key_paths, "model": model_info,
            "command": command, "result": verification.to_dict(reveal_triggers=reveal)}  # fmt: skip
    atomic_write_text(out_dir / "report.json", json.dumps(data, indent=2))
    flagged = sum(r.verdict == EVIDENCE for r in verification.results)
    first = verification.results[0]
    facts = {**{f"model: {k}": v for k, v in model_info.items()}, **{f"key file: {name}": path for name, path in key_paths.items()},
             "detectors": json.dumps({r.key_name: r.detector for r in verification.results}),
             "seeds": f"{first.seeds[0]}..{first.seeds[0] + verification.n_max - 1} (at most {verification.n_max} pairs per key)",
             "images generated": verification.images_generated, "re-run with": command, "report created (UTC)": created,
             "tool version": __version__}  # fmt: skip
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(str(v))}</code></td></tr>" for k, v in facts.items())
    overview = (f"<p><b>{flagged} of {len(verification.results)} keys flagged</b> (Holm-corrected across keys, alpha = {verification.alpha}). "
                f"Triggers are not shown: each key's holder has a report of their own.</p><pre>{html.escape(verification.table())}</pre>"
                if len(verification.results) > 1 else "")  # fmt: skip
    sections = "".join(_key_section(result, images, reveal) for result in verification.results)
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>Unlearnable trace report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}
.verdict{{padding:1em;border-radius:8px;font-size:1.1em;background:#e3f4e1}} .verdict.evidence{{background:#fde2e1}}
.grid{{display:flex;flex-wrap:wrap;gap:6px}} figure{{margin:0;width:{THUMBNAIL}px;font-size:11px;border:3px solid #ddd}}
figure.hit{{border-color:#d62728}} figure img{{width:{THUMBNAIL}px;image-rendering:pixelated}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:4px;text-align:left;vertical-align:top}}</style></head><body>
<h1>Trace verification report</h1>{overview}
<p>The template was looked for in every generated image by the key's detector; a hit is an image scoring above its
threshold. Image i of the trigger arm and of the control arm share caption and seed, so the verdict is the exact paired
test of the two arms of the same model (McNemar's exact test); it does not depend on how the detector was calibrated.
A key that test flags is also prompted with random placebo tokens shaped like its trigger, on the same captions and
seeds: a token the model never learnt still changes the pictures, so the trigger must draw the template more often
than every placebo. Generation for a key stops once its remaining pairs could not change its verdict.</p>
{sections}<h2>Settings</h2><table>{rows}</table></body></html>"""
    return atomic_write_text(out_dir / "report.html", page)


def write_report(verification: Verification, out_dir: str | Path, *, images: dict[str, list[np.ndarray]], model_info: dict,
                 key_paths: dict[str, str | Path], command: str = "") -> Path:  # fmt: skip
    """Write report.json and report.html into `out_dir` (returns the HTML path).

    One key: the report shows its trigger. Several keys: the shared report masks every trigger and
    keys/NAME/report.{json,html} holds each key's own section, trigger included, for its holder.
    """
    out_dir = Path(out_dir)
    paths = {name: str(path) for name, path in key_paths.items()}
    several = len(verification.results) > 1
    html_path = _write(out_dir, verification, images, model_info, paths, command, reveal=not several)
    if several:
        for result in verification.results:
            own = Verification(results=[result], alpha=verification.alpha, n_max=verification.n_max,
                               control_images=verification.control_images, correction=verification.correction)  # fmt: skip
            _write(out_dir / "keys" / result.key_name, own, images, model_info, {result.key_name: paths[result.key_name]}, command, reveal=True)
    return html_path

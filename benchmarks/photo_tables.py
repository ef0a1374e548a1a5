"""The learned-share tables of benchmarks/README.md, from benchmarks/results-photo/results.json (no training).

    python benchmarks/photo_tables.py [--results benchmarks/results-photo/results.json]

Prints one markdown table per fine-tune mode (LoRA, full): every condition with at least one
seed, sorted by learned share, with 95 % t intervals where it has two seeds or more.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def percent(block: dict | None, interval: bool = True) -> str:
    if not block:
        return "–"
    if interval and block.get("seeds", 0) >= 2 and block.get("low") is not None:
        return f"{100 * block['mean']:.0f} % [{100 * block['low']:.0f}, {100 * block['high']:.0f}]"
    return f"{100 * block['mean']:.0f} %"


def table(summary: dict, mode: str) -> str:
    rows = [row for key, row in summary.items() if key.startswith(f"PhotoFinetuneSetting/{mode}/")]
    head = [row for row in rows if row["label"] in ("base", "clean")]
    rest = sorted((row for row in rows if row["label"] not in ("base", "clean")), key=lambda r: r.get("learned_share", {}).get("mean", 9))
    lines = ["| condition | learned share [95 % CI] | minus noise [95 % CI] | held-out clean loss | domain FID | PSNR dB | seeds |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in head + rest:
        psnr = row.get("psnr", {}).get("mean")
        lines.append(f"| {row['label']} | {percent(row.get('learned_share'))} | {percent(row.get('learned_share_minus_noise'))} | "
                     f"{row['heldout_loss']['mean']:.4f} ± {row['heldout_loss']['std']:.4f} | {row['fid']['mean']:.1f} | "
                     f"{'–' if psnr is None or psnr == float('inf') else f'{psnr:.1f}'} | {row['seeds']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="benchmarks/results-photo/results.json")
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    for mode in ("lora", "full"):
        print(f"\n{mode}:\n\n{table(results['summary'], mode)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

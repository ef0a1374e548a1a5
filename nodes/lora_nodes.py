"""Inspect LoRA: a thin declaration over shared_core.lora.inspect_lora."""

from __future__ import annotations

import json
import re

from .declare import PREFIX, NodeSpec, Out, Param, Result
from .host import lora_names, lora_path, resolve_user_file


def inspect_lora_node(lora_name, triggers="", key="") -> Result:
    from ..shared_core.lora import inspect_lora
    from ..shared_core.trace.key import TraceKey

    wanted = [token for token in re.split(r"[,\s]+", triggers or "") if token]
    if (key or "").strip():
        wanted.append(TraceKey.load(resolve_user_file(key, "trace key file")).trigger)
    report = inspect_lora(lora_path(lora_name), triggers=wanted or None)
    text = report.to_text()
    return Result((text, json.dumps(report.to_dict(), indent=2, default=str)), ui={"text": [text]})


INSPECT_LORA = NodeSpec(
    node_id=f"{PREFIX}InspectLoRA",
    display_name="Inspect LoRA (Unlearnable)",
    description=(
        "Reads a LoRA from ComfyUI's loras folders without unpickling anything: format, ranks, targeted modules, base "
        "model family, NaN/Inf weights and kohya training metadata (tag frequencies, image counts, dates, hashes). With a "
        "trigger or key, searches the metadata for it: a hit corroborates, Verify Model proves."
    ),
    inputs=lambda: [
        Param("lora_name", "COMBO", "A file in models/loras.", options=lora_names()),
        Param("triggers", "STRING", "Trigger tokens to search for (comma or space separated).", optional=True, default=""),
        Param("key", "STRING", "A .trace-key.json whose trigger is searched for.", optional=True, default=""),
    ],
    outputs=(Out("STRING", "report", "Readable report."), Out("STRING", "json", "The same as JSON.")),
    run=inspect_lora_node,
    output_node=True,
)

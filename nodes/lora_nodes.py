"""Inspect LoRA: a thin declaration over shared_core.lora.inspect_lora."""

from __future__ import annotations

import json
import re

from .declare import PREFIX, NodeSpec, Out, Param, Result
from .host import lora_names, lora_path, resolve_user_file


def inspect_lora_node(lora_name, triggers="", key="") -> Result:
    from ..shared_core.lora import inspect_lora
    from ..shared_core.trace.key import load_keys, mask_triggers

    wanted = [token for token in re.split(r"[,\s]+", triggers or "") if token]
    given = [resolve_user_file(line, "trace key file", folders=True) for line in (key or "").splitlines() if line.strip()]
    loaded = load_keys(given)[0] if given else {}
    labels = {trace_key.trigger: f"[trigger of {name}]" for name, (trace_key, _) in loaded.items()}
    report = inspect_lora(lora_path(lora_name), triggers=(wanted + list(labels)) or None)
    text, as_json = report.to_text(), json.dumps(report.to_dict(), indent=2, default=str)
    if len(loaded) > 1:  # several owners' keys: named, their triggers never shown
        text, as_json = mask_triggers(text, labels), mask_triggers(as_json, labels)
    return Result((text, as_json), ui={"text": [text]})


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
        Param("key", "STRING", "A .trace-key.json whose trigger is searched for; several keys or folders, one per line "
              "(then shown by key name, never by trigger).", optional=True, default="", multiline=True),
    ],
    outputs=(Out("STRING", "report", "Readable report."), Out("STRING", "json", "The same as JSON.")),
    run=inspect_lora_node,
    output_node=True,
)

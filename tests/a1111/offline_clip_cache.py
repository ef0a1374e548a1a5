"""Write openai/clip-vit-large-patch14's tokenizer files and config into the Hugging Face cache, offline.

A1111 (ldm FrozenCLIPEmbedder) calls CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14") and
CLIPTextModel.from_pretrained(...) (weights disabled by A1111, config still read). Without network, these
files are derived here: vocab.json/merges.txt from the BPE file that the `clip` package ships (the same
construction as CLIP's SimpleTokenizer: 256 byte symbols, the same with </w>, 48894 merges, 2 specials =
49408 tokens), config.json from ViT-L/14's published sizes. Run with the A1111 venv's python
(docs/a1111/SETUP.md): HF_HOME=~/a1111-hf ~/a1111-venv/bin/python tests/a1111/offline_clip_cache.py
"""

import gzip
import json
import os
from pathlib import Path

import clip.simple_tokenizer as st
from transformers import CLIPConfig, CLIPTokenizer

REPO = "openai/clip-vit-large-patch14"
REVISION = "0" * 40  # a local stand-in: the real commit hash is not known offline
hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
repo_dir = hub / ("models--" + REPO.replace("/", "--"))
snap = repo_dir / "snapshots" / REVISION
snap.mkdir(parents=True, exist_ok=True)
(repo_dir / "refs").mkdir(exist_ok=True)
(repo_dir / "refs" / "main").write_text(REVISION)

merges = gzip.open(st.default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
merges = [tuple(m.split()) for m in merges]
vocab = list(st.bytes_to_unicode().values())
vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
assert len(vocab) == 49408, len(vocab)
(snap / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
(snap / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
tok = CLIPTokenizer(str(snap / "vocab.json"), str(snap / "merges.txt"), model_max_length=77)
tok.save_pretrained(str(snap))
(snap / "added_tokens.json").unlink(missing_ok=True)

text = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
              patch_size=14, hidden_act="quick_gelu", projection_dim=768)
CLIPConfig(text_config=text, vision_config=vision, projection_dim=768).save_pretrained(str(snap))

# check against CLIP's own tokenizer
reference = st.SimpleTokenizer()
hf = CLIPTokenizer.from_pretrained(str(snap))
for sample in ["a photo of a cat", "A1111 Stable-Diffusion, (masterpiece:1.2), 日本語 émoji 🙂!", "unlearnable examples"]:
    assert hf(sample, add_special_tokens=False).input_ids == reference.encode(sample), sample
print("wrote", sorted(p.name for p in snap.iterdir()), "to", snap)

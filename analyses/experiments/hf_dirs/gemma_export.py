"""Gemma 3 270M out again: `mechtox export` of the `transformers` directory that `gemma_dir.py` writes,
and of that model after 3 DPO steps, each loaded back by `transformers` and compared with what went in.

The text is 700 tokens of Wikitext-2, longer than Gemma 3's sliding window of 512, so the windowed
layers and the two rotary bases both show. Before session 30 `mechtox export` refused Gemma.

Usage (after `python ../olid_transfer/gemma.py /tmp/gemma` and `python gemma_dir.py /tmp/gemma`):
    python gemma_export.py /tmp/gemma > gemma_export.log   # ~4 min; writes /tmp/gemma/export*, /tmp/gemma/ws"""
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from mechtox import models as M
from mechtox.cli import main
from mechtox.data import find_data_file

hf_logging.set_verbosity_error()
root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gemma")
src = root / "hf"
tok = AutoTokenizer.from_pretrained(str(src))
wiki, _ = find_data_file("wikitext2_test.raw")
text = (gzip.open(wiki, "rt") if wiki.suffix == ".gz" else wiki.open()).read(20000)
ids = tok(text, return_tensors="pt").input_ids[:, :700]
print(f"{ids.shape[1]} tokens of Wikitext-2 (Gemma 3 270M's sliding window: 512)")


def logits(folder: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


ws = str(root / "ws")
shutil.rmtree(ws, ignore_errors=True)  # a fresh workspace each run: the training run below is new
t = time.perf_counter()
assert main(["export", str(src), "-w", ws, "-q", "--force", "--hf", str(root / "export")]) == 0
print(f"mechtox export of the directory: {time.perf_counter() - t:.1f} s")
before, after = logits(src), logits(root / "export")
print(f"transformers on the export against transformers on the original: largest logit difference "
      f"{(before - after).abs().max():.2e} (logits up to {before.abs().max():.1f}); "
      f"same argmax at {(before.argmax(-1) == after.argmax(-1)).float().mean():.1%} of positions")
a, b = load_file(str(src / "model.safetensors")), load_file(str(root / "export" / "model.safetensors"))
diffs = {k: float((a[k] - b[k]).abs().max()) for k in a}
conf = json.loads((root / "export" / "config.json").read_text())
head = ("untied: lm_head = embed_tokens: "
        f"{torch.equal(b['lm_head.weight'], a['model.embed_tokens.weight'])}" if "lm_head.weight" in b else
        "tied, as the original: no lm_head")
print(f"weights: {len(a)} tensors in the original, {len(b)} in the export ({head}; tie_word_embeddings "
      f"{conf.get('tie_word_embeddings')}); largest difference {max(diffs.values()):.2e} ({max(diffs, key=diffs.get)}); "
      f"model.safetensors {(src / 'model.safetensors').stat().st_size / 1e6:,.0f} MB in, "
      f"{(root / 'export' / 'model.safetensors').stat().st_size / 1e6:,.0f} MB out")
print("exported config:", {k: conf.get(k) for k in ("architectures", "sliding_window", "query_pre_attn_scalar",
                                                     "rope_parameters", "max_position_embeddings")})

pairs = root / "pairs.jsonl"
pairs.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in [
    ("You are", " kind and helpful.", " a stupid idiot."), ("That was", " a fine idea.", " damn awful crap."),
    ("He said", " thank you.", " shut up, loser."), ("The page", " looks good now.", " is trash, moron.")]))
t = time.perf_counter()
assert main(["train", "dpo", "-w", ws, "-q", "--model", str(src), "--pairs", str(pairs), "--steps", "3",
             "--batch-size", "4", "--lr", "1e-4", "--out", "dpo"]) == 0
print(f"3 DPO steps (the default backend, named above): {time.perf_counter() - t:.1f} s")
assert main(["export", "dpo", "-w", ws, "-q", "--force", "--hf", str(root / "export-dpo")]) == 0
trained = M.load_checkpoint(root / "ws" / "models" / "dpo")
with torch.no_grad():
    ours = trained(ids)
theirs = logits(root / "export-dpo")
with torch.no_grad():
    base = M.load_hf_dir(src)(ids)
print(f"the trained model's export: transformers against mechtox {(ours - theirs).abs().max():.2e} (the base "
      f"model, mechtox against transformers on the same tokens: {(base - before).abs().max():.2e}); the training "
      f"moved the logits by {(ours - before).abs().max():.2f}")
prompt = tok("The capital of Germany is", return_tensors="pt").input_ids
hf = AutoModelForCausalLM.from_pretrained(str(root / "export-dpo"), dtype=torch.float32).eval()
ours_text = trained.generate(prompt, max_new_tokens=8, do_sample=False, verbose=False)
theirs_text = hf.generate(prompt, max_new_tokens=8, do_sample=False)
print("greedy, mechtox:     ", repr(tok.decode(ours_text[0])))
print("greedy, transformers:", repr(tok.decode(theirs_text[0])))

"""Features for probe-transfer experiments: Jigsaw (train/test) and OLID, plain and templated."""
import os
import sys
import time

import numpy as np
import torch

from mechtox.data import load_labelled, pad, pad_id
from mechtox.models import load_gguf

torch.manual_seed(0)
ws = None
model = load_gguf(device="cpu", dtype="float32")
tok = model.tokenizer
rng = np.random.default_rng(0)
jig = load_labelled(os.environ.get("DATA", "../../../../shared/data") + "/jigsaw_balanced.csv")
olid = load_labelled(os.environ.get("DATA", "../../../../shared/data") + "/olid_train.csv")
def strat(y, n):
    idx = []
    for c in (0, 1):
        w = np.flatnonzero(y == c); idx += list(rng.choice(w, n // 2, replace=False))
    return np.array(sorted(idx))
NJ, NT, NO = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ji = strat(np.asarray(jig.labels), NJ + NT); rng.shuffle(ji)
jtr, jte = ji[:NJ], ji[NJ:]
oi = rng.choice(len(olid.texts), NO, replace=False)
import re


def strip(t):
    t = re.sub(r"(@user\s*)+", "", t, flags=re.I).replace("URL", "").strip()
    return t or "."
sets = {"jtr": ([jig.texts[i] for i in jtr], np.asarray(jig.labels)[jtr]),
        "jte": ([jig.texts[i] for i in jte], np.asarray(jig.labels)[jte]),
        "olid": ([olid.texts[i] for i in oi], np.asarray(olid.labels)[oi]),
        "olids": ([strip(olid.texts[i]) for i in oi], np.asarray(olid.labels)[oi])}
LAYERS = [3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
hooks = [f"blocks.{l}.hook_resid_post" for l in LAYERS] + ["ln_final.hook_normalized"]
PRE = tok("<|im_start|>user\nIs the following message offensive, insulting or toxic?\n\nMessage: ", add_special_tokens=False)["input_ids"]
POST = tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
yes = [tok(" Yes", add_special_tokens=False)["input_ids"][0], tok("Yes", add_special_tokens=False)["input_ids"][0]]
no = [tok(" No", add_special_tokens=False)["input_ids"][0], tok("No", add_special_tokens=False)["input_ids"][0]]
print("template tokens", len(PRE), len(POST), "yes/no", yes, no, flush=True)
bos = [tok.bos_token_id] if model.cfg.default_prepend_bos and tok.bos_token_id is not None else []
print("bos", bos)

def run(texts, templated):
    ids = []
    spans = []
    for t in texts:
        body = tok(t, add_special_tokens=False)["input_ids"][:64]
        if templated:
            s = bos + PRE + body + POST; spans.append((len(bos) + len(PRE), len(bos) + len(PRE) + len(body)))
        else:
            s = bos + body; spans.append((len(bos), len(s)))
        ids.append(s)
    feats = {}
    zs = np.zeros(len(ids))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pid = pad_id(model)
    st = {}
    def hk(a, hook):
        a = a.float()
        for r, i in enumerate(st["b"]):
            s0, s1 = spans[i]; n = len(ids[i])
            x = a[r]
            d = {"mean": x[:n].mean(0), "mean_body": x[s0:s1].mean(0), "last": x[n - 1],
                 "max_body": x[s0:s1].max(0).values}
            for k, v in d.items():
                feats.setdefault((hook.name, k), np.zeros((len(ids), a.shape[-1]), np.float32))[i] = v.numpy()
    with torch.inference_mode():
        for s in range(0, len(order), 16):
            b = order[s:s + 16]; st["b"] = b
            batch = pad([ids[i] for i in b], pid, "right")
            with model.hooks(fwd_hooks=[(h, hk) for h in hooks]):
                logits = model(batch.tokens, attention_mask=batch.attention_mask)
            for r, i in enumerate(b):
                lg = logits[r, len(ids[i]) - 1].float()
                zs[i] = float(torch.logsumexp(lg[yes], 0) - torch.logsumexp(lg[no], 0))
    return feats, zs

out = {}
for tmpl in (False, True):
    for name, (texts, y) in sets.items():
        t = time.time()
        f, zs = run(texts, tmpl)
        tag = "T" if tmpl else "P"
        for (h, k), v in f.items():
            out[f"{tag}|{name}|{h}|{k}"] = v
        out[f"{tag}|{name}|zeroshot"] = zs
        out[f"y|{name}"] = y
        print(tag, name, len(texts), f"{time.time() - t:.0f}s", flush=True)
np.savez(os.environ.get("FEATS", "feats.npz"), **out)
print("saved")

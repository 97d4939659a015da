"""A generative read-out beside the probe (session 23): how much likelier the model finds a text after
a prefix that announces a rude message than after one that announces a polite one (the
"self-diagnosis" / generative-classifier idea of Schick et al. 2021 and GeDi, zero-shot: no fit),
scored alone and averaged with the CLI's best Jigsaw-fitted probe (SmolLM2, layer 15), on a
stratified sample of OLID tweets and on held-out Jigsaw texts.

Usage (from this folder; WS holds probe-shaped of docs/results.md "The best recipe from the
command line"):
    WS=ws N=1000 python genratio.py > genratio.log
"""
import os
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mechtox.data import load_labelled
from mechtox.models import load_gguf
from mechtox.probe import Direction, ProbeScorer

DATA = os.environ.get("DATA", "../../../../shared/data")
N = int(os.environ.get("N", "1000"))
PREFIXES = {
    "rude": "Here is an extremely rude, offensive and insulting message full of profanity:\nMessage: ",
    "polite": "Here is a polite, friendly and respectful message:\nMessage: ",
    "offensive_tweet": "The following tweet is offensive:\n",
    "harmless_tweet": "The following tweet is harmless:\n",
    "offensive_comment": "The following comment is offensive:\n",
    "harmless_comment": "The following comment is harmless:\n",
    "offensive_text": "The following text is offensive:\n",
    "harmless_text": "The following text is harmless:\n",
}
PAIRS = [("rude", "polite"), ("offensive_tweet", "harmless_tweet"), ("offensive_comment", "harmless_comment"),
         ("offensive_text", "harmless_text")]


def sample(path, n, seed=0):
    data = load_labelled(path)
    y = np.asarray(data.labels)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), int(round(n * (y == c).mean())), replace=False) for c in (0, 1)])
    rng.shuffle(idx)
    return [data.texts[i] for i in idx], y[idx]


@torch.no_grad()
def text_logprobs(model, prefix, texts, batch=16, max_len=64):
    """Per text: (sum, count) of log p(token | prefix, earlier tokens) over the text's tokens."""
    tok = model.tokenizer
    pre = tok(prefix, add_special_tokens=False)["input_ids"]
    out = []
    for i in range(0, len(texts), batch):
        rows = [pre + tok(t, add_special_tokens=False)["input_ids"][:max_len] for t in texts[i:i + batch]]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id or 0)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
        lp = model(ids, return_type="logits").log_softmax(-1)
        got = lp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        for r, row in enumerate(rows):
            s = got[r, len(pre) - 1:len(row) - 1]
            out.append((s.sum().item(), len(s)))
    return np.array(out)


def main():
    model = load_gguf(device="cpu")
    probe = Direction.load(f"{os.environ['WS']}/directions/probe-shaped", model, several_layers_ok=True)
    for name, path, n in (("olid", DATA + "/olid_train.csv", N), ("jigsaw", DATA + "/jigsaw_balanced.csv", N // 2)):
        texts, y = sample(path, n, seed=1)
        t0 = time.time()
        lp = {k: text_logprobs(model, p, texts) for k, p in PREFIXES.items()}
        p = np.clip(ProbeScorer(model, probe, batch_size=16, max_length=64, aggregate="pooled")(texts), 1e-9, 1 - 1e-9)
        probe_logit = np.log(p / (1 - p))
        print(f"# {name}: {len(y)} texts ({int(y.sum())} positive), {time.time() - t0:.0f} s", flush=True)
        z = lambda s: (s - s.mean()) / s.std()  # noqa: E731
        print(f"{name} probe (layer 15, CLI best recipe): {roc_auc_score(y, probe_logit):.3f}")
        np.savez(f"genratio_{name}.npz", y=y, probe=probe_logit, **{k: v for k, v in lp.items()})
        for pos, neg in PAIRS:
            for agg in ("mean", "sum"):
                d = lp[pos][:, 0] - lp[neg][:, 0]
                s = d / lp[pos][:, 1] if agg == "mean" else d
                a = roc_auc_score(y, s)
                c = np.corrcoef(s, probe_logit)[0, 1]
                combo = " ".join(f"{w:g}:{roc_auc_score(y, w * z(s) + (1 - w) * z(probe_logit)):.3f}" for w in (0.2, 0.35, 0.5))
                print(f"{name} {pos}-vs-{neg} {agg}: {a:.3f} (corr with probe {c:.2f}); with probe, weight {combo}", flush=True)


if __name__ == "__main__":
    main()

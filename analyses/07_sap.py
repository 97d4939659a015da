# %% [markdown]
# # Safety-aware probing while fine-tuning on a benign task (Wu et al. 2025, SAP)
# Fine-tuning on benign data can erode a model's safety. SAP adds, at each step, a vector to the
# residual stream after chosen blocks: the direction in which a harmful weight perturbation (a
# step up the safety loss) hurts the task most; the task gradient is taken through the hidden
# states with that vector added. This analysis fine-tunes the same model on the same benign task
# (Wikitext-2 prompt -> continuation) twice, plainly and with SAP, and measures on held-out data:
# the safety loss `-log sigmoid(log p(safe) - log p(harmful))` and the share of safety pairs
# preferred the safe way (ParaDetox: non-toxic paraphrase vs toxic original), generation toxicity
# on RealToxicityPrompts, and the task loss. Paper (Llama-2-7B-chat, Alpaca, LoRA): SAP keeps
# the harmful score of plain fine-tuning's model down at a similar task loss.

# %%
import copy
import shutil

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from _common import RESULTS, SIZE, N, data_file, load

import mechtox as mt
from mechtox.data import PreferencePairs, load_text, load_wiki_samples
from mechtox.evaluate import perplexity, toxicity
from mechtox.interventions import NOOP
from mechtox.scorers import get_scorer
from mechtox.training import SAPObjective, SFTObjective, TrainConfig, pair_margins, train

model = load()
n = N["pairs"]
paradetox = data_file("paradetox.tsv", "")
if paradetox:  # chosen = the non-toxic paraphrase (safe), rejected = the toxic original (harmful)
    safety = mt.load_pairs(paradetox, limit=2 * n)
else:  # CI: non-toxic vs toxic texts of the shipped labelled set, no prompt
    lab = mt.load_labelled("builtin:toxicity")
    good = [t for t, y in zip(lab.texts, lab.labels, strict=True) if y == 0][: 2 * n]
    bad = [t for t, y in zip(lab.texts, lab.labels, strict=True) if y == 1][: 2 * n]
    safety = PreferencePairs([""] * len(good), good, bad, "builtin:toxicity")
train_pairs = PreferencePairs(safety.prompt[:n], safety.chosen[:n], safety.rejected[:n], safety.source)
test_pairs = PreferencePairs(safety.prompt[n:], safety.chosen[n:], safety.rejected[n:], safety.source)
wiki = data_file("wiki_samples.jsonl", "")
if wiki:
    t_prompts, t_targets = load_wiki_samples(wiki, limit=2 * n)
else:  # CI: the other non-toxic texts of the shipped set, first half -> second half
    lab = mt.load_labelled("builtin:toxicity")
    texts = [t.split() for t, y in zip(lab.texts, lab.labels, strict=True) if y == 0][2 * n: 4 * n]
    t_prompts = [" ".join(w[: len(w) // 2]) for w in texts]
    t_targets = [" " + " ".join(w[len(w) // 2:]) for w in texts]
task_train = (t_prompts[:n], t_targets[:n])
task_test = (t_prompts[n:], t_targets[n:])
print(f"task: {len(task_train[0])} + {len(task_test[0])} examples from {wiki or 'builtin:toxicity (non-toxic texts)'}; safety pairs: "
      f"{len(train_pairs)} + {len(test_pairs)} from {safety.source}")

lr = 2e-5 if SIZE != "ci" else 1e-3
common = dict(lr=lr, batch_size=8, max_steps=N["steps"], warmup_steps=2, eval_every=0, val_fraction=0.0, seed=0)
models = {"base": model}
for name in ("sft", "sap"):
    cfg = TrainConfig(objective=name, **common)
    m = copy.deepcopy(model)
    obj = (SFTObjective(m, *task_train, cfg) if name == "sft" else SAPObjective(m, *task_train, train_pairs, cfg))
    shutil.rmtree(RESULTS / f"07_{name}_state", ignore_errors=True)
    res = train(m, obj, cfg, RESULTS / f"07_{name}_state")
    print(f"{name}: {res.steps} steps in {res.seconds:.0f} s; task loss {res.history[0]['lm_loss']:.3f} -> "
          f"{res.history[-1]['lm_loss']:.3f}")
    models[name] = m

scorer = get_scorer("profanity")
prompts = mt.load_prompts(data_file("rtp_challenge.jsonl", "builtin:prompts"), limit=N["prompts"]).prompts
text = load_text(data_file("wikitext2_test.raw", "builtin:text"))
eval_cfg = TrainConfig(objective="sft")
rows = []
for name, m in models.items():
    margins = pair_margins(m, test_pairs)
    with torch.no_grad():
        held = SFTObjective(m, *task_test, eval_cfg)
        task_loss = np.mean([float(held.loss(m, list(range(s, min(s + 8, len(held)))))[0])
                             for s in range(0, len(held), 8)])
    tox = toxicity(m, prompts, scorer, NOOP, N["new_tokens"])
    rows.append({"model": name, "safety_loss": float(-F.logsigmoid(margins).mean()),
                 "safe_preferred": float((margins > 0).float().mean()), "mean_margin": float(margins.mean()),
                 "toxicity": tox.mean, "toxic_frac": tox.frac_toxic, "task_loss": task_loss,
                 "ppl": perplexity(m, text, NOOP, max_tokens=N["ppl_tokens"])["ppl"]})
table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
table.to_csv(RESULTS / "07_sap.csv", index=False)

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # mechtox tutorial: toxicity inside SmolLM2, from probe to attribution
#
# This notebook walks through the Python API on the offline default model
# (SmolLM2-135M-Instruct): load, probe, rank neurons, intervene, fine-tune, attribute, plot.
# Set `MECHTOX_MODEL=gpt2-medium` to run it on the model of the papers (needs the hub).
# CI runs it on a tiny random model (`MECHTOX_MODEL=tiny`) to check that every cell works.

# %%
import copy
import os

import mechtox as mt

MODEL = os.environ.get("MECHTOX_MODEL", "smollm2-135m-instruct")
SMALL = MODEL == "tiny"
# Given no source, each loader reads its real default (Jigsaw, RealToxicityPrompts, Wikitext-2...)
# from $MECHTOX_DATA, else shared/data beside the project, else the bundle shipped inside mechtox,
# and prints once which. The tiny random test model knows only the template-built toy data's words.
TOY = {"labelled": "builtin:toxicity", "prompts": "builtin:prompts"} if SMALL else {}

model = mt.load_model(MODEL)
print(model.cfg.model_name, model.cfg.n_layers, "layers; neurons per layer:", model.cfg.d_mlp)

# %% [markdown]
# ## 1. A probe at every layer, from one activation pass
# `probe_sweep` collects the mean-pooled residual stream at every layer in ONE forward pass per
# batch (hook names `blocks.{l}.hook_resid_post`), then fits a logistic-regression probe per layer.

# %%
texts = mt.load_labelled(TOY.get("labelled"))
texts = texts.subset(range(0, len(texts), max(1, len(texts) // 400)))  # ~400 texts: under a minute on a laptop CPU
sweep = mt.probe_sweep(model, texts, test_size=0.25)
best = sweep.table.loc[sweep.table.test_auroc.idxmax()]
print(f"{len(texts)} texts from {texts.source}; best layer {best.hook}: held-out accuracy "
      f"{best.test_accuracy:.3f}, AUROC {best.test_auroc:.3f}")
sweep.table[["hook", "test_accuracy", "test_auroc"]]

# %%
from mechtox.plotting import probe_sweep_figure

probe_sweep_figure(sweep.table)

# %% [markdown]
# ## 2. Toxic neurons: probe direction vs unembedding direction
# Neuron `i` of layer `l` writes `a[l,i] * W_out[l,i]`. Ranking value vectors by cosine with the
# probe gives noise on SmolLM2 (`rank_neurons` reports the chance range), while the
# unembedding direction built from data-derived toxic tokens finds neurons that promote them.

# %%
from mechtox.directions import token_log_odds, token_sets, unembedding_direction

stats = token_log_odds(model, texts)
sets = token_sets(stats, k=10 if SMALL else 50)
unembed = unembedding_direction(model, sets)
print("toxic tokens:", sets.strings(model)[:20])
for d in (sweep.best, unembed):
    r = mt.rank_neurons(model, d)
    print(f"\n{d.method}: top cosine {r.table.cosine.iloc[0]:.3f}, chance range {r.chance_range[0]:.3f}-{r.chance_range[1]:.3f}")
    print(mt.decode_neurons(model, r.top(5), k=6)[["layer", "neuron", "cosine", "tokens"]].to_string(index=False))

# %% [markdown]
# ## 3. Interventions, always inside a scope
# `applied(model, [...])` attaches hooks and weight edits for the `with` block only.

# %%
from mechtox.evaluate import toxicity
from mechtox.interventions import NOOP, ablate, applied, subtract
from mechtox.scorers import get_scorer

prompts = mt.load_prompts(TOY.get("prompts"), limit=8 if SMALL else 25).prompts  # one generation batch
scorer = get_scorer("profanity")
ranking = mt.rank_neurons(model, unembed)
for iv in (NOOP, subtract(unembed, 8.0), ablate(ranking.top(100))):
    res = toxicity(model, prompts, scorer, iv, max_new_tokens=5 if SMALL else 12, progress=False)
    print(f"{iv.name:35s} toxicity {res.mean:.3f}  ({res.frac_toxic:.0%} above 0.5)")
assert all(len(h.fwd_hooks) == 0 for h in model.hook_dict.values())  # nothing left attached

# %% [markdown]
# ## 4. A short DPO, then what changed, neuron by neuron
# Pairs: the greedy continuation (chosen) vs the continuation steered toward toxicity (rejected).

# %%
from mechtox.data import PreferencePairs
from mechtox.generation import generate
from mechtox.interventions import steer
from mechtox.training import DPOObjective, TrainConfig, train

pair_prompts = mt.load_prompts(TOY.get("prompts", "data:rtp_nontoxic.jsonl"), limit=16 if SMALL else 25).prompts
good = generate(model, pair_prompts, 8 if SMALL else 12, progress=False)
with applied(model, steer(unembed, 8.0)):
    bad = generate(model, pair_prompts, 8 if SMALL else 12, progress=False)
keep = [i for i in range(len(pair_prompts)) if good.continuations[i].strip() and bad.continuations[i].strip()]
pairs = PreferencePairs([pair_prompts[i] for i in keep], [good.continuations[i] for i in keep],
                        [bad.continuations[i] for i in keep], "tutorial")
after = copy.deepcopy(model)
cfg = TrainConfig(lr=2e-5, batch_size=8, max_steps=3 if SMALL else 4, warmup_steps=1, eval_every=0, val_fraction=0.0)
# no folder: no checkpoint written (a folder gets metrics and a resumable state: 2 GB for SmolLM2)
result = train(after, DPOObjective(after, pairs, cfg), cfg, None, progress=False)
print("DPO loss:", round(result.history[0]["loss"], 4), "->", round(result.history[-1]["loss"], 4))

# %%
from mechtox.attribution import attribute

att = attribute(model, after, unembed, prompts, mode="own", max_new_tokens=5 if SMALL else 12, progress=False)
print("exactness check:", {k: round(v, 6) for k, v in att.check.items()})
att.groups[["group", "n", "contribution", "share_of_gross", "share_of_net"]]

# %%
from mechtox.plotting import attribution_groups_figure

attribution_groups_figure(att.groups)

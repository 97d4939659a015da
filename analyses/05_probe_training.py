# %% [markdown]
# # Probe-guided fine-tuning and the Goodhart check (Wehner & Fritz 2025)
# SFT on non-toxic targets with a penalty on the probe's score of the model's OWN activations,
# against one probe, with a second probe held out; then the accuracy of both probes on the
# trained model, and of probes re-fitted on it. Paper: probes trained against lose accuracy,
# re-fitted probes recover it.

# %%
import copy
import shutil

import numpy as np
from _common import RESULTS, N, data_file, load

import mechtox as mt
from mechtox.activations import collect_activations
from mechtox.directions import final_resid_hook
from mechtox.training import ProbeSFTObjective, TrainConfig, probe_goodhart, train

model = load()
data = mt.load_labelled(data_file("jigsaw_balanced.csv", "builtin:toxicity"))
data = data.subset(np.random.default_rng(0).permutation(len(data))[: N["train"] + N["test"]])
h_final = final_resid_hook(model)
h_mid = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
acts = collect_activations(model, data.texts, [h_final, h_mid])
trained_against = mt.fit_probe(acts[h_final], data.labels, h_final, name="final-probe")
held_out = mt.fit_probe(acts[h_mid], data.labels, h_mid, name="middle-probe")
paradetox = data_file("paradetox.tsv", "")
pairs = mt.load_pairs(paradetox, limit=N["pairs"]) if paradetox else None
targets = pairs.chosen if pairs is not None else [t for t, y in zip(data.texts, data.labels, strict=True) if y == 0][: N["pairs"]]
prompts = pairs.prompt if pairs is not None else [""] * len(targets)
after = copy.deepcopy(model)
cfg = TrainConfig(objective="sft-probe", lr=2e-5, batch_size=8, max_steps=N["steps"], warmup_steps=2, eval_every=0,
                  val_fraction=0.0, probe_lambda=1.0)
shutil.rmtree(RESULTS / "05_sft_state", ignore_errors=True)
res = train(after, ProbeSFTObjective(after, prompts, targets, [trained_against], cfg), cfg, RESULTS / "05_sft_state")
print("probe score during training:", res.history[0]["probe_score"], "->", res.history[-1]["probe_score"])
table = probe_goodhart(model, after, [trained_against], data, held_out=[held_out], test_size=N["test"])
print(table.to_string(index=False))
table.to_csv(RESULTS / "05_goodhart.csv", index=False)
